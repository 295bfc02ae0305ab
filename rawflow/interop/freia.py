"""FrEIA 0.2 ↔ rawflow.

FrEIA's ``module([x])`` runs data → latent and returns ``((z,), log|det ∂z/∂x|)``;
``module([z], rev=True)`` runs the inverse and returns *its* log-det (``−`` the forward's), like
rawflow. FrEIA's coupling blocks are two-sided: the first half ``x₁`` (``split_len1`` channels) is
transformed from ``x₂``, then ``x₂`` from the new ``y₁``. In rawflow that is a chain of two couplings.

=================================  =====================================================================
FrEIA                              rawflow
=================================  =====================================================================
``NICECouplingBlock``              ``Chain([AdditiveCoupling(copy x₂, net F), AdditiveCoupling(copy x₁,
                                   net G)])`` (``ChannelCoupling(..., "additive")`` for images)
``RNVPCouplingBlock``              ``Chain([AffineCoupling(copy x₂, Parallel([s₂, t₂])),
                                   AffineCoupling(copy x₁, Parallel([s₁, t₁]))])`` with
                                   ``ClampScale(clamp, activation)``: ``log s = clamp·f(h)``,
                                   ``f = 0.636·atan`` (``"ATAN"``), ``tanh`` or ``2(σ − ½)``
``GLOWCouplingBlock``              as RNVP with one subnet per side whose output ``[s, t]`` is
                                   rawflow's ``[h_s, t]`` layout unchanged
``AffineCouplingOneSided``         one ``AffineCoupling(copy x₁)`` with ``ClampScale``
``ActNorm``                        ``ActNorm``: FrEIA ``z = x·exp(scale) + bias``, so rawflow
                                   ``bias = bias_F·exp(−scale)``, ``log_scale = scale``
``PermuteRandom``                  ``Permutation(perm)`` (``z = x[:, perm]``)
``SequenceINN`` (import only)      ``Chain`` (same order)
=================================  =====================================================================

Subnets: ``nn.Sequential`` of ``Linear``/activations (vectors, :class:`rawflow.nets.mlp.MLP`) or
``Conv2d``/activations (images, :class:`~rawflow.interop.nets.SequentialCNN`). The clamp activation
is recognised from the block's ``f_clamp`` by evaluating it (FrEIA keeps only the function).
``split_len=0.5`` is ``round(0.5·C)``, Python's round-half-to-even: 5 channels split 2 + 3, 7
channels 4 + 3.

Not mapped: conditions (``dims_c``), custom clamp activations, ``GINCouplingBlock``,
``AllInOneBlock``, ``ConditionalAffineTransform``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import FrEIA.modules as Fm
from FrEIA.framework import SequenceINN

from ..bijectors.actnorm import ActNorm
from ..bijectors.chain import Chain
from ..bijectors.coupling import AdditiveTransform, AffineTransform, Coupling
from ..bijectors.image_coupling import ChannelCoupling
from ..nets.mlp import MLP
from ..bijectors.partition import Partition
from ..bijectors.permutation import Permutation
from .maps import ClampScale
from .nets import Parallel, SequentialCNN
from ._torch import DTYPE, Binding, read_cnn, read_mlp, set_parameters, to_numpy, write_cnn, write_mlp

PEER = "freia"


def _calls(module):
    def forward(x):
        (z,), jac = module([x])
        return z, jac

    def inverse(z):
        (x,), jac = module([z], rev=True)
        return x, jac

    return {"forward": forward, "inverse": inverse}


def _probe_clamp(module) -> str:
    """FrEIA keeps ``f_clamp`` only as a function: find which of its named activations it is."""
    u = torch.tensor([-3.0, -0.4, 0.25, 1.5, 7.0], dtype=DTYPE)
    v = module.f_clamp(u)
    candidates = {"ATAN": 0.636 * torch.atan(u), "TANH": torch.tanh(u), "SIGMOID": 2.0 * (torch.sigmoid(u) - 0.5)}
    for name, ref in candidates.items():
        if isinstance(v, torch.Tensor) and torch.equal(v, ref):
            return name
    raise ValueError("FrEIA clamp_activation is a custom function: only 'ATAN', 'TANH', 'SIGMOID' are mapped")


def read_net(net, *, rows=None):
    if isinstance(net, nn.Sequential) and any(isinstance(m, nn.Conv2d) for m in net):
        return read_cnn(list(net), rows=rows, what="FrEIA subnet")
    if isinstance(net, nn.Sequential):
        return read_mlp(list(net), rows=rows, what="FrEIA subnet")
    raise ValueError(f"FrEIA subnet {type(net).__name__} is not mapped: use nn.Sequential of Linear/Conv2d and "
                     "activations")


def write_net(net, params):
    if isinstance(net, MLP):
        return nn.Sequential(*write_mlp(net, params))
    if isinstance(net, SequentialCNN):
        return nn.Sequential(*write_cnn(net, params))
    raise ValueError(f"conditioner {type(net).__name__} has no FrEIA subnet counterpart (MLP, SequentialCNN)")


def _check_block(module):
    if module.conditional:
        raise ValueError("FrEIA blocks with conditions are not mapped")


def _coupling(features, image, transform, partition, net):
    if image:
        return ChannelCoupling(features, transform, partition=partition, conditioner=net)
    return Coupling(features, transform, partition=partition, conditioner=net)


def import_block(module) -> Binding:
    _check_block(module)
    c, n1 = module.channels, module.split_len1
    image = module.ndims > 1
    first = np.arange(c) < n1  # copied by the second coupling; the first coupling copies ~first
    if isinstance(module, Fm.NICECouplingBlock):
        f_net, f_bind = read_net(module.F)
        g_net, g_bind = read_net(module.G)
        layers = [_coupling(c, image, AdditiveTransform(), Partition(~first), f_net),
                  _coupling(c, image, AdditiveTransform(), Partition(first), g_net)]
        bind = lambda: {"0": {"net": f_bind()}, "1": {"net": g_bind()}}  # noqa: E731
        notes = ()
    else:
        scale = ClampScale(module.clamp, _probe_clamp(module))
        if isinstance(module, Fm.RNVPCouplingBlock):
            parts = [read_net(m) for m in (module.subnet_s2, module.subnet_t2, module.subnet_s1, module.subnet_t1)]
            nets = [Parallel([parts[0][0], parts[1][0]]), Parallel([parts[2][0], parts[3][0]])]
            bind = lambda: {"0": {"net": {"0": parts[0][1](), "1": parts[1][1]()}},  # noqa: E731
                            "1": {"net": {"0": parts[2][1](), "1": parts[3][1]()}}}
        elif isinstance(module, Fm.GLOWCouplingBlock):
            n2, b2 = read_net(module.subnet2)
            n1_, b1 = read_net(module.subnet1)
            nets = [n2, n1_]
            bind = lambda: {"0": {"net": b2()}, "1": {"net": b1()}}  # noqa: E731
        else:
            raise ValueError(f"FrEIA {type(module).__name__} is not mapped")
        layers = [_coupling(c, image, AffineTransform(scale), Partition(~first), nets[0]),
                  _coupling(c, image, AffineTransform(scale), Partition(first), nets[1])]
        notes = (f"scale map log s = {module.clamp}·f(h), f = {scale.activation} (ClampScale): f acts on h, "
                 "not h/clamp (rawflow 'bounded' is c·tanh(h/c))",)
    layer = Chain(layers)
    kind = ("image" if image else "vector") + ("" if isinstance(module, Fm.NICECouplingBlock)
                                               else f", {_probe_clamp(module)}")
    return Binding(PEER, f"{type(module).__name__}[{kind}]", module, layer, bind, _calls(module),
                   notes=notes + ("two-sided block: Chain of two couplings, x₁ transformed first",))


def import_one_sided(module: Fm.AffineCouplingOneSided) -> Binding:
    _check_block(module)
    c, n1 = module.channels, module.split_len1
    image = module.ndims > 1
    scale = ClampScale(module.clamp, _probe_clamp(module))
    net, bind = read_net(module.subnet)
    layer = _coupling(c, image, AffineTransform(scale), Partition(np.arange(c) < n1), net)
    return Binding(PEER, f"AffineCouplingOneSided[{'image' if image else 'vector'}]", module, layer,
                   lambda: {"net": bind()}, _calls(module),
                   notes=(f"scale map log s = {module.clamp}·f(h), f = {scale.activation} (ClampScale)",))


def _image_dims(layer, hw):
    if len(layer.event_shape) == 1:
        return [tuple(layer.event_shape)]
    if hw is None:
        raise ValueError("FrEIA image blocks need dims_in = (C, H, W): pass hw=(H, W)")
    return [(layer.event_shape[0],) + tuple(hw)]


def export_block(layer: Chain, params: dict, hw=None):
    a, b = layer.layers
    if not (isinstance(a, Coupling) and isinstance(b, Coupling)):
        raise ValueError("a FrEIA two-sided block is Chain([coupling copying x₂, coupling copying x₁])")
    c = a.partition.features
    n1 = int(b.partition.size_a)
    first = np.arange(c) < n1
    if not (np.array_equal(a.partition.mask, ~first) and np.array_equal(b.partition.mask, first)):
        raise ValueError("FrEIA's two-sided block: first coupling copies the last C − n₁ channels, the second "
                         "the first n₁")
    dims = _image_dims(a, hw)
    if isinstance(a.transform, AdditiveTransform) and isinstance(b.transform, AdditiveTransform):
        nets = iter([write_net(a.net, params["0"]["net"]), write_net(b.net, params["1"]["net"])])
        return Fm.NICECouplingBlock(dims, subnet_constructor=lambda i, o: next(nets), split_len=n1).to(DTYPE)
    sa, sb = getattr(a.transform, "scale", None), getattr(b.transform, "scale", None)
    if not (type(a.transform) is AffineTransform and isinstance(sa, ClampScale) and type(b.transform) is AffineTransform
            and isinstance(sb, ClampScale) and (sa.clamp, sa.activation) == (sb.clamp, sb.activation)):
        raise ValueError("FrEIA affine blocks use AffineTransform with one ClampScale on both sides")
    kw = dict(clamp=sa.clamp, clamp_activation=sa.activation, split_len=n1)
    if isinstance(a.net, Parallel):
        pa, pb = params["0"]["net"], params["1"]["net"]
        nets = iter([write_net(b.net.nets[0], pb["0"]), write_net(b.net.nets[1], pb["1"]),
                     write_net(a.net.nets[0], pa["0"]), write_net(a.net.nets[1], pa["1"])])
        return Fm.RNVPCouplingBlock(dims, subnet_constructor=lambda i, o: next(nets), **kw).to(DTYPE)
    nets = iter([write_net(b.net, params["1"]["net"]), write_net(a.net, params["0"]["net"])])
    return Fm.GLOWCouplingBlock(dims, subnet_constructor=lambda i, o: next(nets), **kw).to(DTYPE)


def export_one_sided(layer: Coupling, params: dict, hw=None):
    c, n1 = layer.partition.features, layer.partition.size_a
    sc = getattr(layer.transform, "scale", None)
    if not (np.array_equal(layer.partition.mask, np.arange(c) < n1) and type(layer.transform) is AffineTransform
            and isinstance(sc, ClampScale)):
        raise ValueError("FrEIA AffineCouplingOneSided = AffineTransform(ClampScale) copying the first n₁ channels")
    net = write_net(layer.net, params["net"])
    return Fm.AffineCouplingOneSided(_image_dims(layer, hw), subnet_constructor=lambda i, o: net, clamp=sc.clamp,
                                     clamp_activation=sc.activation, split_len=int(n1)).to(DTYPE)


def import_actnorm(module: Fm.ActNorm) -> Binding:
    dims = tuple(module.dims_in)
    c = dims[0]
    layer = ActNorm(c, spatial=len(dims) - 1)
    notes = ["FrEIA z = x·exp(scale) + bias; rawflow z = (x + bias)·exp(log_scale): bias = bias_F·exp(−scale)"]
    if module.init_on_next_batch:
        notes.append("not initialised: FrEIA would overwrite these parameters from its next batch")
    return Binding(PEER, f"ActNorm[{'image' if len(dims) > 1 else 'vector'}]", module, layer,
                   lambda: {"bias": (module.bias * torch.exp(-module.scale)).reshape(c),
                            "log_scale": module.scale.reshape(c)}, _calls(module), notes=tuple(notes))


def export_actnorm(layer: ActNorm, params: dict, hw=None):
    c = layer.features
    dims = (c,) if layer.spatial == 0 else (c,) + tuple(hw or (1,) * layer.spatial)
    module = Fm.ActNorm([dims]).to(DTYPE)
    shape = (1, c) + (1,) * (len(dims) - 1)
    ls = np.asarray(params["log_scale"], dtype=np.float64)
    set_parameters(module, {"scale": ls.reshape(shape), "bias": (np.asarray(params["bias"]) * np.exp(ls)).reshape(shape)})
    module.init_on_next_batch = False
    return module


def import_permute(module: Fm.PermuteRandom) -> Binding:
    perm = to_numpy(module.perm).astype(np.intp)
    spatial = len(module.dims_in[0]) - 1
    return Binding(PEER, "PermuteRandom", module, Permutation(perm.size, perm=perm, spatial=spatial), lambda: {},
                   _calls(module))


def export_permute(layer: Permutation, params=None, hw=None):
    dims = (layer.features,) + tuple(hw or (1,) * layer.spatial) if layer.spatial else (layer.features,)
    module = Fm.PermuteRandom([dims])
    with torch.no_grad():
        module.perm.copy_(torch.as_tensor(np.asarray(layer.perm), dtype=torch.long))
        module.perm_inv.copy_(torch.as_tensor(np.argsort(layer.perm), dtype=torch.long))
    return module


def import_sequence(module: SequenceINN) -> Binding:
    if any(c is not None for c in module.conditions):
        raise ValueError("FrEIA SequenceINN with conditions is not mapped")
    subs = [bind(m) for m in module.module_list]

    def forward(x):
        z, jac = module(x)
        return (z[0] if isinstance(z, tuple) else z), jac

    def inverse(z):
        x, jac = module(z, rev=True)
        return (x[0] if isinstance(x, tuple) else x), jac

    return Binding(PEER, "SequenceINN[" + ", ".join(s.name for s in subs) + "]", module,
                   Chain([s.layer for s in subs]), lambda: {str(i): s.bind() for i, s in enumerate(subs)},
                   {"forward": forward, "inverse": inverse})


# ---------------------------------------------------------------------- dispatch
def bind(module) -> Binding:
    """The :class:`~rawflow.interop._torch.Binding` of a FrEIA module (a ``SequenceINN`` becomes a ``Chain``)."""
    if isinstance(module, SequenceINN):
        return import_sequence(module)
    if isinstance(module, (Fm.NICECouplingBlock, Fm.RNVPCouplingBlock, Fm.GLOWCouplingBlock)):
        return import_block(module)
    if isinstance(module, Fm.AffineCouplingOneSided):
        return import_one_sided(module)
    if isinstance(module, Fm.ActNorm):
        return import_actnorm(module)
    if isinstance(module, Fm.PermuteRandom):
        return import_permute(module)
    raise ValueError(f"FrEIA {type(module).__name__} is not mapped to rawflow")


def from_peer(module):
    """``(rawflow layer, params)`` reproducing a FrEIA module (see the module doc)."""
    b = bind(module)
    return b.layer, b.params()


def to_peer(layer, params: dict, hw=None):
    """The FrEIA module (float64) equal to a rawflow layer of a mapped form; image layers need ``hw``."""
    if isinstance(layer, Chain):
        return export_block(layer, params, hw)
    if isinstance(layer, Coupling):
        return export_one_sided(layer, params, hw)
    if isinstance(layer, ActNorm):
        return export_actnorm(layer, params, hw)
    if isinstance(layer, Permutation):
        return export_permute(layer, params, hw)
    raise ValueError(f"rawflow {type(layer).__name__} has no FrEIA counterpart here")


# ---------------------------------------------------------------------- verification cases
def _mlp(i, o, hidden=7):
    return nn.Sequential(nn.Linear(i, hidden), nn.ReLU(), nn.Linear(hidden, o))


def _cnn(i, o, hidden=6):
    return nn.Sequential(nn.Conv2d(i, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, o, 1))


def cases(seed: int = 0) -> list:
    """Zero-argument callables comparing every mapped layer, imported and exported."""
    from ..nets.cnn import Conv2d
    from .compare import case_pair, random_params
    from .nets import Act

    n, d, c, hw = 3, 5, 4, 4
    vec, img = (n, d), (n, c, hw, hw)

    def mlp(i, o):
        return MLP(i, o, (7,))

    def cnn(i, o):
        return SequentialCNN([("0", Conv2d(i, 6, 3)), ("1", Act("relu")), ("2", Conv2d(6, o, 1))])

    def native(layer, shape, scale=0.5):
        def make(rng):
            return layer, random_params(layer.init(rng, rng.normal(size=shape)), rng, scale=scale)
        return make

    def two_sided(features, image, kind, n1, activation="ATAN", clamp=2.0):
        net = cnn if image else mlp
        first = np.arange(features) < n1
        if kind == "nice":
            ta = tb = AdditiveTransform()
            na, nb = net(features - n1, n1), net(n1, features - n1)
        else:
            ta = tb = AffineTransform(ClampScale(clamp, activation))
            if kind == "rnvp":
                na = Parallel([net(features - n1, n1), net(features - n1, n1)])
                nb = Parallel([net(n1, features - n1), net(n1, features - n1)])
            else:
                na, nb = net(features - n1, 2 * n1), net(n1, 2 * (features - n1))
        return Chain([_coupling(features, image, ta, Partition(~first), na),
                      _coupling(features, image, tb, Partition(first), nb)])

    blocks = {"nice": Fm.NICECouplingBlock, "rnvp": Fm.RNVPCouplingBlock, "glow": Fm.GLOWCouplingBlock}
    out = []
    for kind, cls in blocks.items():
        for act in (("ATAN", "TANH", "SIGMOID") if kind == "glow" else ("ATAN",)):
            kw = {} if kind == "nice" else dict(clamp=1.5, clamp_activation=act)
            n1 = round(0.5 * d)
            out += case_pair(bind, to_peer, lambda g, cls=cls, kw=kw: cls([(d,)], subnet_constructor=_mlp, **kw).to(DTYPE),
                             native(two_sided(d, False, kind, n1, act, 1.5), vec), vec, seed,
                             label=kind if kind == "nice" else f"{kind}-{act.lower()}")
        out += case_pair(bind, lambda layer, p: to_peer(layer, p, hw=(hw, hw)),
                         lambda g, cls=cls: cls([(c, hw, hw)], subnet_constructor=_cnn).to(DTYPE),
                         native(two_sided(c, True, kind, c // 2), img, scale=0.3), img, seed, scale=0.3,
                         label=f"{kind}-image")
    out += case_pair(bind, to_peer, lambda g: Fm.AffineCouplingOneSided([(d,)], subnet_constructor=_mlp).to(DTYPE),
                     native(_coupling(d, False, AffineTransform(ClampScale(2.0, "ATAN")),
                                      Partition(np.arange(d) < round(0.5 * d)), mlp(2, 2 * 3)), vec), vec, seed, label="one-sided")
    out += case_pair(bind, to_peer, lambda g: Fm.ActNorm([(d,)]).to(DTYPE), native(ActNorm(d), vec), vec, seed,
                     prepare=_mark_initialised, label="actnorm")
    out += case_pair(bind, lambda layer, p: to_peer(layer, p, hw=(hw, hw)),
                     lambda g: Fm.ActNorm([(c, hw, hw)]).to(DTYPE), native(ActNorm(c, spatial=2), img), img, seed,
                     prepare=_mark_initialised, label="actnorm-image")
    out += case_pair(bind, to_peer, lambda g: Fm.PermuteRandom([(d,)], seed=int(torch.randint(0, 2**31, (1,), generator=g))),
                     lambda r: (Permutation(d, seed=int(r.integers(2**31))), {}), vec, seed,
                     label="permute")
    return out


def _mark_initialised(module):
    if isinstance(module, Fm.ActNorm):
        module.init_on_next_batch = False
