"""nflows 0.14 ↔ rawflow.

nflows' ``Transform.forward`` is data → latent and returns ``log|det ∂z/∂x|``, like rawflow;
``inverse`` returns the inverse's log-det. Mapped layers (``from_peer`` / ``to_peer``):

============================================  =====================================================
nflows                                        rawflow
============================================  =====================================================
``AffineCouplingTransform(mask, net_fn)``     ``AffineCoupling(D, partition=Partition(mask <= 0),
                                              scale=OffsetSigmoidScale(2, 1e-3), conditioner=net)``;
                                              nflows' net output is ``[shift, unconstrained scale]``,
                                              rawflow's ``[h_s, t]``: the last layer's two row
                                              blocks are swapped
``AdditiveCouplingTransform(mask, net_fn)``   ``AdditiveCoupling`` (same net, rows unchanged)
net = ``ResidualNet`` (no context/BN/dropout) :class:`~rawflow.interop.nets.ResidualMLP`
net = :class:`ContextFree` ``Sequential``     :class:`rawflow.nets.mlp.MLP`
``LULinear(D, eps)``                          ``Chain([FactoredLULinear(D), ActNorm(D)])``: P = I,
                                              sign = +1, ``log_scale = log(softplus(u) + eps)``;
                                              nflows' bias is the ActNorm's ``bias`` with its
                                              ``log_scale`` pinned at 0 (``z = LUx + b``)
``OneByOneConvolution(C)`` (images)           ``Chain([Permutation(perm), FactoredLULinear, ActNorm])``
                                              (nflows permutes *before* the LU map)
``ActNorm(C)`` (vectors and images)           ``ActNorm``: nflows ``z = e·x + shift``, rawflow
                                              ``z = (x + bias)·e``, so ``bias = shift·exp(−log_scale)``
``Permutation`` / ``Random-``/``Reverse-``    ``Permutation(perm)`` (both ``z[:, i] = x[:, perm[i]]``)
``CompositeTransform`` (import only)          ``Chain`` (same order)
============================================  =====================================================

Importing an nflows ``ActNorm`` that has not seen data (``initialized`` False) imports its current
parameters; nflows itself would overwrite them on its next training-mode forward call.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from nflows.nn.nets import ResidualNet
from nflows.transforms import (
    ActNorm as NfActNorm,
    AdditiveCouplingTransform,
    AffineCouplingTransform,
    CompositeTransform,
    LULinear as NfLULinear,
    OneByOneConvolution,
    Permutation as NfPermutation,
)

from ..bijectors.actnorm import ActNorm
from ..bijectors.chain import Chain
from ..bijectors.coupling import AdditiveCoupling, AdditiveTransform, AffineCoupling, AffineTransform, Coupling
from ..nets.mlp import MLP
from ..bijectors.partition import Partition
from ..bijectors.permutation import Permutation
from .lu import FactoredLULinear
from .maps import OffsetSigmoidScale
from .nets import ResidualMLP
from ._torch import (
    DTYPE,
    Binding,
    ContextFree,
    read_mlp,
    set_parameters,
    to_numpy,
    write_mlp,
)

PEER = "nflows"
NFLOWS_SCALE = OffsetSigmoidScale(offset=2.0, eps=1e-3)

_ACTIVATIONS = {F.relu: "relu", torch.relu: "relu", torch.tanh: "tanh", F.tanh: "tanh", F.leaky_relu: "leaky_relu"}
_FUNCTIONS = {"relu": F.relu, "tanh": torch.tanh, "leaky_relu": F.leaky_relu}


def _calls(module):
    return {
        "forward": lambda x: module(x),
        "inverse": lambda z: module.inverse(z),
    }


# ---------------------------------------------------------------------- conditioners
def read_net(net, *, rows=None):
    """``(rawflow network, bind)`` for an nflows coupling's ``transform_net``."""
    if isinstance(net, ResidualNet):
        return _read_residual(net, rows)
    if isinstance(net, torch.nn.Sequential):
        return read_mlp(list(net), rows=rows, what="nflows transform_net")
    raise ValueError(
        f"nflows transform_net {type(net).__name__} is not mapped: use nflows.nn.nets.ResidualNet (no context, "
        "batch norm or dropout) or rawflow.interop.nflows.ContextFree(Linear, activation, ..., Linear)"
    )


def _read_residual(net: ResidualNet, rows):
    if net.context_features is not None:
        raise ValueError("nflows ResidualNet with context features is not mapped")
    acts = {blk.activation for blk in net.blocks}
    if len(acts) > 1 or any(a not in _ACTIVATIONS for a in acts):
        raise ValueError(f"nflows ResidualNet activation {acts} is not mapped (relu, tanh, leaky_relu)")
    if any(blk.use_batch_norm or (blk.dropout.p != 0 and blk.training) for blk in net.blocks):
        raise ValueError("nflows ResidualNet with batch norm or active dropout is not mapped")
    name = _ACTIVATIONS[acts.pop()] if net.blocks else "relu"
    final = net.final_layer
    out = final.weight.shape[0] if rows is None else len(rows)
    res = ResidualMLP(net.initial_layer.weight.shape[1], out, net.hidden_features, len(net.blocks), activation=name)
    idx = None if rows is None else torch.as_tensor(np.asarray(rows), dtype=torch.long)

    def bind():
        p = {"in": {"w": net.initial_layer.weight, "b": net.initial_layer.bias}}
        if len(net.blocks):
            p["blocks"] = {
                str(k): {str(j): {"w": blk.linear_layers[j].weight, "b": blk.linear_layers[j].bias} for j in range(2)}
                for k, blk in enumerate(net.blocks)
            }
        w, b = final.weight, final.bias
        if idx is not None:
            w, b = w[idx], b[idx]
        p["out"] = {"w": w, "b": b}
        return p

    return res, bind


def write_net(net, params, *, rows=None, out_features=None):
    """The nflows ``transform_net`` (float64) for a rawflow conditioner and its parameters."""
    if isinstance(net, MLP):
        return ContextFree(*write_mlp(net, params, rows=rows, out_features=out_features))
    if isinstance(net, ResidualMLP):
        out = net.out_features if out_features is None else out_features
        act = net.activation.name
        if act == "leaky_relu" and net.activation.slope != 0.01:
            raise ValueError("nflows ResidualNet's leaky_relu has slope 0.01 only")
        res = ResidualNet(net.in_features, out, net.hidden, num_blocks=net.blocks, activation=_FUNCTIONS[act]).to(DTYPE)
        rows_ = np.arange(net.out_features) if rows is None else np.asarray(rows)
        w = np.zeros((out, net.hidden))
        b = np.zeros(out)
        w[rows_], b[rows_] = params["out"]["w"], params["out"]["b"]
        values = {"initial_layer.weight": params["in"]["w"], "initial_layer.bias": params["in"]["b"],
                  "final_layer.weight": w, "final_layer.bias": b}
        for k in range(net.blocks):
            for j in range(2):
                values[f"blocks.{k}.linear_layers.{j}.weight"] = params["blocks"][str(k)][str(j)]["w"]
                values[f"blocks.{k}.linear_layers.{j}.bias"] = params["blocks"][str(k)][str(j)]["b"]
        return set_parameters(res, values)
    raise ValueError(f"conditioner {type(net).__name__} has no nflows counterpart (use MLP or ResidualMLP)")


# ---------------------------------------------------------------------- couplings
def _affine_rows(nb: int) -> np.ndarray:
    """rawflow ``[h_s, t]`` from nflows ``[shift, scale]``: rawflow row k is nflows row rows[k]."""
    return np.concatenate([np.arange(nb, 2 * nb), np.arange(nb)])


def import_coupling(module) -> Binding:
    if module.unconditional_transform is not None:
        raise ValueError("nflows couplings with an unconditional_transform are not mapped")
    d = module.features
    identity = np.zeros(d, dtype=bool)
    identity[to_numpy(module.identity_features).astype(int)] = True
    partition = Partition(identity)
    nb = partition.size_b
    if isinstance(module, AdditiveCouplingTransform):
        net, bind = read_net(module.transform_net)
        layer = AdditiveCoupling(d, partition=partition, conditioner=net)
        name = "AdditiveCouplingTransform"
    elif isinstance(module, AffineCouplingTransform):
        net, bind = read_net(module.transform_net, rows=_affine_rows(nb))
        layer = AffineCoupling(d, partition=partition, scale=NFLOWS_SCALE, conditioner=net)
        name = "AffineCouplingTransform"
    else:
        raise ValueError(f"nflows coupling {type(module).__name__} is not mapped")
    net_name = type(module.transform_net).__name__
    return Binding(PEER, f"{name}[{net_name}]", module, layer, lambda: {"net": bind()}, _calls(module),
                   notes=_COUPLING_NOTES if name.startswith("Affine") else ())


_COUPLING_NOTES = (
    "scale map s = sigmoid(h + 2) + 1e-3 (OffsetSigmoidScale); rawflow's default is exp(h)",
    "net output layout [shift, scale] (nflows) vs [h_s, t] (rawflow): row blocks swapped",
)


def export_coupling(layer: Coupling, params: dict):
    """nflows coupling (float64) equal to a rawflow ``AffineCoupling`` with ``OffsetSigmoidScale(2, 1e-3)``
    or an ``AdditiveCoupling``, vector event shape."""
    if len(layer.event_shape) != 1:
        raise ValueError("nflows couplings are mapped for vectors (N, D) only")
    mask = (~layer.partition.mask).astype(np.int64)
    nb = layer.partition.size_b
    if isinstance(layer.transform, AdditiveTransform):
        net = write_net(layer.net, params["net"])
        cls = AdditiveCouplingTransform
    else:
        scale = layer.transform.scale
        if type(layer.transform) is not AffineTransform or not (
            isinstance(scale, OffsetSigmoidScale) and scale.offset == 2.0 and scale.eps == 1e-3
        ):
            raise ValueError(
                f"nflows' affine coupling has the fixed scale map sigmoid(h + 2) + 1e-3 and scales before "
                f"shifting; {layer.transform!r} with scale {scale!r} has no nflows counterpart"
            )
        net = write_net(layer.net, params["net"], rows=_affine_rows(nb))
        cls = AffineCouplingTransform
    return cls(torch.as_tensor(mask), lambda i, o: net).to(DTYPE)


# ---------------------------------------------------------------------- linear maps
def _lu_bind(module: NfLULinear):
    d = module.features
    lo = torch.as_tensor(np.stack(module.lower_indices), dtype=torch.long)
    up = torch.as_tensor(np.stack(module.upper_indices), dtype=torch.long)

    def bind():
        lower = module.lower_entries.new_zeros(d, d).index_put((lo[0], lo[1]), module.lower_entries)
        upper = module.upper_entries.new_zeros(d, d).index_put((up[0], up[1]), module.upper_entries)
        return {
            "lower": lower,
            "upper": upper,
            "log_scale": torch.log(F.softplus(module.unconstrained_upper_diag) + module.eps),
        }

    return bind


def import_lu(module: NfLULinear) -> Binding:
    d = module.features
    layer = Chain([FactoredLULinear(d), ActNorm(d)])
    lu = _lu_bind(module)
    zero = torch.zeros(d, dtype=DTYPE)
    return Binding(PEER, "LULinear", module, layer,
                   lambda: {"0": lu(), "1": {"bias": module.bias, "log_scale": zero}}, _calls(module),
                   notes=("W = L·U with diag U = softplus(u) + eps (rawflow: sign·exp(log_scale)); "
                          "the bias maps to an ActNorm with log_scale pinned at 0",))


def _lu_values(lu_params: dict, d: int, eps: float) -> dict:
    log_s = np.asarray(lu_params["log_scale"], dtype=np.float64)
    target = np.exp(log_s) - eps
    if np.any(target <= 0):
        raise ValueError(f"nflows' LU diagonal is softplus(u) + {eps} > {eps}; exp(log_scale) = {np.exp(log_s)}")
    li, ui = np.tril_indices(d, -1), np.triu_indices(d, 1)
    return {
        "lower_entries": np.asarray(lu_params["lower"])[li],
        "upper_entries": np.asarray(lu_params["upper"])[ui],
        # softplus⁻¹(v) = log(expm1(v)) = v + log(−expm1(−v)) (the latter does not overflow for large v)
        "unconstrained_upper_diag": target + np.log(-np.expm1(-target)),
    }


def _check_lu_chain(layer, image: bool):
    parts = layer.layers if isinstance(layer, Chain) else [layer]
    perm = None
    if image:
        if not (isinstance(parts[0], Permutation)):
            raise ValueError("nflows OneByOneConvolution = Chain([Permutation, FactoredLULinear, ActNorm])")
        perm, parts = parts[0], parts[1:]
    if not (len(parts) == 2 and isinstance(parts[0], FactoredLULinear) and isinstance(parts[1], ActNorm)):
        raise ValueError("nflows LULinear = Chain([FactoredLULinear(P = I, sign = +1), ActNorm(log_scale = 0)])")
    lu = parts[0]
    if not (np.array_equal(lu.perm, np.arange(lu.features)) and np.all(lu.sign == 1)):
        raise ValueError("nflows' LU factors have no permutation and a positive diagonal (perm = I, sign = +1)")
    return perm


def export_lu(layer: Chain, params: dict, eps: float = 1e-3):
    _check_lu_chain(layer, image=False)
    if np.any(np.asarray(params["1"]["log_scale"]) != 0):
        raise ValueError("the ActNorm carrying nflows' bias must have log_scale = 0")
    d = layer.layers[0].features
    module = NfLULinear(d, eps=eps).to(DTYPE)
    values = _lu_values(params["0"], d, eps)
    values["bias"] = params["1"]["bias"]
    return set_parameters(module, values)


def import_conv1x1(module: OneByOneConvolution) -> Binding:
    c = module.features
    perm = to_numpy(module.permutation._permutation).astype(np.intp)
    layer = Chain([Permutation(c, perm=perm, spatial=2), FactoredLULinear(c, spatial=2), ActNorm(c, spatial=2)])
    lu = _lu_bind(module)
    zero = torch.zeros(c, dtype=DTYPE)
    return Binding(PEER, "OneByOneConvolution", module, layer,
                   lambda: {"0": {}, "1": lu(), "2": {"bias": module.bias, "log_scale": zero}}, _calls(module),
                   notes=("z = L·U·x[perm] + b per pixel: the permutation comes first (rawflow LULinear: "
                          "W = P·L·U, permutation last)",))


def export_conv1x1(layer: Chain, params: dict, eps: float = 1e-3):
    perm = _check_lu_chain(layer, image=True)
    c = perm.features
    module = OneByOneConvolution(c).to(DTYPE)
    module.eps = eps
    values = _lu_values(params["1"], c, eps)
    values["bias"] = params["2"]["bias"]
    values["permutation._permutation"] = perm.perm
    return set_parameters(module, values)


# ---------------------------------------------------------------------- ActNorm, permutations
def import_actnorm(module: NfActNorm, image: bool = False) -> Binding:
    c = module.log_scale.shape[0]
    layer = ActNorm(c, spatial=2 if image else 0)
    notes = ["nflows z = exp(log_scale)·x + shift; rawflow z = (x + bias)·exp(log_scale): "
             "bias = shift·exp(−log_scale)"]
    if not bool(module.initialized):
        notes.append("module not initialized: nflows would overwrite these parameters on its next forward call")
    return Binding(PEER, f"ActNorm[{'image' if image else 'vector'}]", module, layer,
                   lambda: {"bias": module.shift * torch.exp(-module.log_scale), "log_scale": module.log_scale},
                   _calls(module), notes=tuple(notes))


def export_actnorm(layer: ActNorm, params: dict):
    module = NfActNorm(layer.features).to(DTYPE)
    ls = np.asarray(params["log_scale"], dtype=np.float64)
    set_parameters(module, {"log_scale": ls, "shift": np.asarray(params["bias"]) * np.exp(ls),
                            "initialized": np.array(True)})
    return module


def import_permutation(module: NfPermutation) -> Binding:
    if module._dim != 1:
        raise ValueError("nflows permutations along dim != 1 are not mapped")
    perm = to_numpy(module._permutation).astype(np.intp)
    layer = Permutation(len(perm), perm=perm)
    return Binding(PEER, type(module).__name__, module, layer, lambda: {}, _calls(module))


def export_permutation(layer: Permutation, params: dict = None):
    return NfPermutation(torch.as_tensor(np.asarray(layer.perm), dtype=torch.long))


def import_composite(module: CompositeTransform, **kwargs) -> Binding:
    subs = [bind(t, **kwargs) for t in module._transforms]
    return Binding(PEER, "CompositeTransform[" + ", ".join(s.name for s in subs) + "]", module,
                   Chain([s.layer for s in subs]), lambda: {str(i): s.bind() for i, s in enumerate(subs)},
                   _calls(module))


# ---------------------------------------------------------------------- dispatch
def bind(module, **kwargs) -> Binding:
    """The :class:`~rawflow.interop._torch.Binding` of an nflows transform (a ``CompositeTransform``,
    e.g. a ``Flow``'s ``_transform``, becomes a ``Chain``; ``image=True`` for image ``ActNorm``)."""
    if isinstance(module, CompositeTransform):
        return import_composite(module, **kwargs)
    if isinstance(module, (AffineCouplingTransform, AdditiveCouplingTransform)):
        return import_coupling(module)
    if isinstance(module, OneByOneConvolution):
        return import_conv1x1(module)
    if isinstance(module, NfLULinear):
        return import_lu(module)
    if isinstance(module, NfActNorm):
        return import_actnorm(module, **kwargs)
    if isinstance(module, NfPermutation):
        return import_permutation(module)
    raise ValueError(f"nflows {type(module).__name__} is not mapped to rawflow")


def from_peer(module, **kwargs):
    """``(rawflow layer, params)`` reproducing an nflows transform (see the module doc for the map)."""
    b = bind(module, **kwargs)
    return b.layer, b.params()


def to_peer(layer, params: dict):
    """The nflows transform (float64) equal to a rawflow layer of one of the mapped forms."""
    if isinstance(layer, Coupling):
        return export_coupling(layer, params)
    if isinstance(layer, ActNorm):
        return export_actnorm(layer, params)
    if isinstance(layer, Permutation):
        return export_permutation(layer, params)
    if isinstance(layer, Chain) and isinstance(layer.layers[0], Permutation):
        return export_conv1x1(layer, params)
    if isinstance(layer, Chain):
        return export_lu(layer, params)
    raise ValueError(f"rawflow {type(layer).__name__} has no nflows counterpart here")


# ---------------------------------------------------------------------- verification cases
def _coupling_module(kind, d, net, gen):
    mask = torch.zeros(d, dtype=torch.long)
    mask[torch.randperm(d, generator=gen)[: d // 2]] = 1
    cls = AffineCouplingTransform if kind == "affine" else AdditiveCouplingTransform

    def make(i, o):
        if net == "resnet":
            return ResidualNet(i, o, hidden_features=6, num_blocks=2)
        return ContextFree(torch.nn.Linear(i, 7), torch.nn.ReLU(), torch.nn.Linear(7, 5), torch.nn.ReLU(),
                           torch.nn.Linear(5, o))

    return cls(mask, make).to(DTYPE)


def _coupling_native(kind, d, net, rng):
    from .compare import random_params

    partition = Partition(rng.permutation(np.arange(d) < d - d // 2))
    out = (2 if kind == "affine" else 1) * partition.size_b
    cond = ResidualMLP(partition.size_a, out, 6, 2) if net == "resnet" else MLP(partition.size_a, out, (7, 5))
    if kind == "affine":
        layer = AffineCoupling(d, partition=partition, scale=NFLOWS_SCALE, conditioner=cond)
    else:
        layer = AdditiveCoupling(d, partition=partition, conditioner=cond)
    return layer, random_params(layer.init(rng, np.zeros((1, d))), rng)


def _lu_native(d, rng, image=False):
    from .compare import random_params

    sp = 2 if image else 0
    parts = [FactoredLULinear(d, spatial=sp), ActNorm(d, spatial=sp)]
    if image:
        parts.insert(0, Permutation(d, seed=int(rng.integers(2**31)), spatial=sp))
    layer = Chain(parts)
    x = np.zeros((2, d, 1, 1)) if image else np.zeros((2, d))
    k = "2" if image else "1"
    params = random_params(layer.init(rng, x + rng.normal(size=x.shape)), rng)
    lu = params["1" if image else "0"]
    # Only the strictly triangular parts are read (and exported); zero the rest so they round-trip.
    lu["lower"], lu["upper"] = np.tril(lu["lower"], -1), np.triu(lu["upper"], 1)
    params[k]["log_scale"] = np.zeros(d)
    return layer, params


def _actnorm_native(d, rng, image=False):
    from .compare import random_params

    layer = ActNorm(d, spatial=2 if image else 0)
    return layer, random_params(layer.init(rng, rng.normal(size=(4, d, 2, 2) if image else (4, d))), rng)


def cases(seed: int = 0) -> list:
    """Zero-argument callables comparing every mapped layer, imported and exported."""
    from .compare import case_pair

    n, d, c, hw = 3, 5, 4, 3
    vec, img = (n, d), (n, c, hw, hw)
    out = []
    for kind in ("affine", "additive"):
        for net in ("mlp", "resnet"):
            out += case_pair(bind, to_peer, lambda g, k=kind, nt=net: _coupling_module(k, d, nt, g),
                             lambda r, k=kind, nt=net: _coupling_native(k, d, nt, r), vec, seed, _prepare,
                             label=f"{kind}-{net}")
    out += case_pair(bind, to_peer, lambda g: NfLULinear(d, identity_init=False).to(DTYPE),
                     lambda r: _lu_native(d, r), vec, seed, _prepare, label="lu")
    out += case_pair(bind, to_peer, lambda g: _seeded(g, lambda: OneByOneConvolution(c)).to(DTYPE),
                     lambda r: _lu_native(c, r, image=True), img, seed, _prepare, label="conv1x1")
    out += case_pair(bind, to_peer, lambda g: NfActNorm(d).to(DTYPE), lambda r: _actnorm_native(d, r),
                     vec, seed, _prepare, label="actnorm")
    out += case_pair(lambda m: bind(m, image=True), to_peer, lambda g: NfActNorm(c).to(DTYPE),
                     lambda r: _actnorm_native(c, r, image=True), img, seed, _prepare, label="actnorm-image")
    out += case_pair(bind, to_peer, lambda g: NfPermutation(torch.randperm(d, generator=g)),
                     lambda r: (Permutation(d, seed=int(r.integers(2**31))), {}), vec, seed, _prepare,
                     label="permutation")
    return out


def _seeded(gen, make):
    """Run a constructor that draws from torch's global RNG under a seed taken from ``gen``."""
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
        return make()


def _prepare(module):
    """Put a module into the state the comparison needs (ActNorm initialised: no data-dependent reset)."""
    for m in module.modules():
        if isinstance(m, NfActNorm):
            m.initialized.fill_(True)
