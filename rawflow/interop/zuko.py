"""zuko 1.6 ↔ rawflow.

zuko's lazy transforms build ``torch.distributions`` transforms whose call is data → latent (a
``zuko.flows.Flow`` scores ``x`` through ``transform(x)``) and whose ``log_abs_det_jacobian`` is that
direction's; the inverse runs through ``transform.inv``. The same convention as rawflow.

=========================================================  ============================================
zuko                                                       rawflow
=========================================================  ============================================
``GeneralCouplingTransform(mask=m)`` with                  ``AffineCoupling(D, partition=Partition(m),
``MonotonicAffineTransform`` (zuko's NICE / RealNVP)       scale=SoftclipScale(slope))``: ``log s =
                                                           h / (1 + |h / log(slope)|)``, slope 1e-3;
                                                           the hyper-network output is interleaved
                                                           ``[shift₀, scale₀, shift₁, …]`` (rawflow
                                                           ``[h_s, t]``). ``mask`` True = copied, as in
                                                           rawflow; zuko's default mask copies the odd
                                                           features.
``GeneralCouplingTransform`` with ``AdditiveTransform``    ``AdditiveCoupling``
``UnconditionalTransform(LULinearTransform, LU)``          ``FactoredLULinear(D, sign=sign(diag LU))``:
                                                           zuko ``W = L·U`` with ``L`` lower carrying
                                                           the diagonal ``d`` and ``U`` *unit* upper;
                                                           rawflow ``L'`` unit lower and ``Ũ`` upper
                                                           with the diagonal: ``L' = L·D⁻¹``,
                                                           ``Ũ = D·U``, ``log_scale = log|d|``. No
                                                           permutation, no softplus: the diagonal is
                                                           free and may change sign in zuko (rawflow's
                                                           sign is fixed at import).
``UnconditionalTransform(PermutationTransform, order)``    ``Permutation(perm=order)``
``LazyComposedTransform`` / ``Flow.transform``             ``Chain`` (same order)
=========================================================  ============================================

Not mapped: context features, ``normalize=True`` hyper-networks (LayerNorm), other univariate
transforms (splines, Bernstein, …), autoregressive transforms.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from zuko.flows.coupling import GeneralCouplingTransform
from zuko.lazy import LazyComposedTransform, UnconditionalTransform
from zuko.transforms import (
    AdditiveTransform as ZAdditive,
    LULinearTransform,
    MonotonicAffineTransform,
    PermutationTransform,
)

from ..bijectors.chain import Chain
from ..bijectors.coupling import AdditiveCoupling, AdditiveTransform, AffineCoupling, AffineTransform, Coupling
from ..bijectors.linear import LULinear
from ..nets.mlp import MLP
from ..bijectors.partition import Partition
from ..bijectors.permutation import Permutation
from .lu import FactoredLULinear
from .maps import SoftclipScale
from ._torch import DTYPE, Binding, read_mlp, set_parameters, to_numpy

PEER = "zuko"


def _calls(module):
    def forward(x):
        return module().call_and_ladj(x)

    def inverse(z):
        return module().inv.call_and_ladj(z)

    return {"forward": forward, "inverse": inverse}


def _univariate(fn):
    """``("affine", slope)`` or ``("additive", None)`` for a coupling's univariate constructor."""
    base, kw = (fn.func, fn.keywords) if isinstance(fn, functools.partial) else (fn, {})
    if base is MonotonicAffineTransform:
        return "affine", float(kw.get("slope", 1e-3))
    if base is ZAdditive:
        return "additive", None
    raise ValueError(f"zuko univariate transform {base!r} is not mapped (MonotonicAffineTransform, AdditiveTransform)")


def _affine_rows(nb: int) -> np.ndarray:
    return np.concatenate([2 * np.arange(nb) + 1, 2 * np.arange(nb)])


def import_coupling(module: GeneralCouplingTransform) -> Binding:
    kind, slope = _univariate(module.univariate)
    mask = to_numpy(module.mask).astype(bool)
    partition = Partition(mask)
    d, na, nb = mask.size, partition.size_a, partition.size_b
    if module.hyper[0].weight.shape[-1] != na:
        raise ValueError("zuko couplings with context features are not mapped")
    if kind == "affine":
        if tuple(map(tuple, module.shapes)) != ((), ()):
            raise ValueError("zuko MonotonicAffineTransform coupling must have shapes ((), ())")
        net, bind = read_mlp(list(module.hyper), rows=_affine_rows(nb), what="zuko hyper MLP")
        layer = AffineCoupling(d, partition=partition, scale=SoftclipScale(slope), conditioner=net)
        notes = (f"scale map log s = h / (1 + |h / log({slope})|) (SoftclipScale); rawflow's default is exp(h)",
                 "hyper-network output interleaved [shift, scale] per feature; rawflow [h_s, t]")
    else:
        net, bind = read_mlp(list(module.hyper), what="zuko hyper MLP")
        layer = AdditiveCoupling(d, partition=partition, conditioner=net)
        notes = ()
    return Binding(PEER, f"GeneralCouplingTransform[{kind}]", module, layer, lambda: {"net": bind()},
                   _calls(module), notes=notes)


def export_coupling(layer: Coupling, params: dict):
    mask = layer.partition.mask
    net = layer.net
    if not isinstance(net, MLP):
        raise ValueError("zuko's hyper-network is an MLP: rawflow MLP conditioner needed")
    act = net.activation
    activation = {"relu": nn.ReLU, "tanh": nn.Tanh}.get(act.name) or functools.partial(nn.LeakyReLU, act.slope)
    if isinstance(layer.transform, AdditiveTransform):
        kw = dict(univariate=ZAdditive, shapes=((),))
        rows = np.arange(layer.partition.size_b)
    elif type(layer.transform) is AffineTransform and isinstance(layer.transform.scale, SoftclipScale):
        slope = layer.transform.scale.slope
        kw = dict(univariate=functools.partial(MonotonicAffineTransform, slope=slope) if slope != 1e-3
                  else MonotonicAffineTransform)
        rows = _affine_rows(layer.partition.size_b)
    else:
        raise ValueError(f"zuko's affine coupling uses the softclip scale map (SoftclipScale); {layer.transform!r} "
                         "has no zuko counterpart")
    module = GeneralCouplingTransform(mask.size, mask=torch.as_tensor(mask), hidden_features=tuple(net.widths[1:-1]),
                                      activation=activation, **kw).to(DTYPE)
    values = {}
    n = len(net.widths) - 1
    for i in range(n):
        w = np.asarray(params["net"][str(i)]["w"], dtype=np.float64)
        b = np.asarray(params["net"][str(i)]["b"], dtype=np.float64)
        if i == n - 1:
            w_full, b_full = np.zeros_like(w), np.zeros_like(b)
            w_full[rows], b_full[rows] = w, b
            w, b = w_full, b_full
        values[f"hyper.{2 * i}.weight"], values[f"hyper.{2 * i}.bias"] = w, b
    return set_parameters(module, values)


def import_lu(module: UnconditionalTransform) -> Binding:
    lu0 = module._0
    d = to_numpy(torch.diagonal(lu0))
    if np.any(d == 0):
        raise ValueError("zuko LU with a zero diagonal entry is singular")
    layer = FactoredLULinear(lu0.shape[0], sign=np.sign(d))

    def bind():
        lu = module._0
        diag = torch.diagonal(lu)
        return {"lower": torch.tril(lu, -1) / diag[None, :], "upper": torch.triu(lu, 1) * diag[:, None],
                "log_scale": torch.log(diag.abs())}

    return Binding(PEER, "LULinearTransform", module, layer, bind, _calls(module),
                   notes=("zuko W = L·U, L lower with the diagonal d, U unit upper: rawflow L' = L·D⁻¹, Ũ = D·U, "
                          "log_scale = log|d|, sign fixed to sign(d) at import",))


def _lu_matrix(layer: LULinear, params: dict) -> np.ndarray:
    d = layer.sign * np.exp(np.asarray(params["log_scale"], dtype=np.float64))
    lower, upper = np.asarray(params["lower"], dtype=np.float64), np.asarray(params["upper"], dtype=np.float64)
    return np.tril(lower, -1) * d[None, :] + np.diag(d) + np.triu(upper, 1) / d[:, None]


def export_lu(layer: LULinear, params: dict):
    """``UnconditionalTransform(LULinearTransform)``; a permutation ``P ≠ I`` adds a
    ``PermutationTransform`` after it (``LazyComposedTransform``)."""
    lu = UnconditionalTransform(LULinearTransform, torch.tensor(_lu_matrix(layer, params), dtype=DTYPE), buffer=False)
    if np.array_equal(layer.perm, np.arange(layer.features)):
        return lu
    perm = UnconditionalTransform(PermutationTransform, torch.as_tensor(np.asarray(layer.perm)), buffer=True)
    return LazyComposedTransform(lu, perm)


def import_permutation(module: UnconditionalTransform) -> Binding:
    order = to_numpy(module._0).astype(np.intp)
    return Binding(PEER, "PermutationTransform", module, Permutation(order.size, perm=order), lambda: {},
                   _calls(module))


def export_permutation(layer: Permutation, params=None):
    return UnconditionalTransform(PermutationTransform, torch.as_tensor(np.asarray(layer.perm)), buffer=True)


def import_composed(module: LazyComposedTransform) -> Binding:
    subs = [bind(t) for t in module.transforms]
    return Binding(PEER, "LazyComposedTransform[" + ", ".join(s.name for s in subs) + "]", module,
                   Chain([s.layer for s in subs]), lambda: {str(i): s.bind() for i, s in enumerate(subs)},
                   _calls(module))


# ---------------------------------------------------------------------- dispatch
def bind(module) -> Binding:
    """The :class:`~rawflow.interop._torch.Binding` of a zuko lazy transform (or a ``Flow``'s transform)."""
    if hasattr(module, "transform") and hasattr(module, "base"):
        module = module.transform
    if isinstance(module, GeneralCouplingTransform):
        return import_coupling(module)
    if isinstance(module, LazyComposedTransform):
        return import_composed(module)
    if isinstance(module, UnconditionalTransform):
        if module.f is LULinearTransform:
            return import_lu(module)
        if module.f is PermutationTransform:
            return import_permutation(module)
    raise ValueError(f"zuko {type(module).__name__} ({getattr(module, 'f', '')}) is not mapped to rawflow")


def from_peer(module):
    """``(rawflow layer, params)`` reproducing a zuko lazy transform (see the module doc)."""
    b = bind(module)
    return b.layer, b.params()


def to_peer(layer, params: dict):
    """The zuko lazy transform (float64) equal to a rawflow layer of a mapped form."""
    if isinstance(layer, Chain):
        return LazyComposedTransform(*(to_peer(sub, params[str(i)]) for i, sub in enumerate(layer.layers)))
    if isinstance(layer, Coupling):
        return export_coupling(layer, params)
    if isinstance(layer, LULinear):
        return export_lu(layer, params)
    if isinstance(layer, Permutation):
        return export_permutation(layer, params)
    raise ValueError(f"rawflow {type(layer).__name__} has no zuko counterpart here")


# ---------------------------------------------------------------------- verification cases
def cases(seed: int = 0) -> list:
    """Zero-argument callables comparing every mapped layer, imported and exported."""
    import zuko

    from .compare import case_pair, random_params

    n, d = 3, 5
    vec = (n, d)

    def native(layer, fix=None):
        def make(rng):
            params = random_params(layer.init(rng, rng.normal(size=vec)), rng)
            return layer, (fix(params) if fix else params)
        return make

    def lu_fix(p):
        return p | {"lower": np.tril(p["lower"], -1), "upper": np.triu(p["upper"], 1)}

    mask = np.arange(d) % 2 == 1
    out = []
    out += case_pair(bind, to_peer, lambda g: GeneralCouplingTransform(d, hidden_features=(7, 5)).to(DTYPE),
                     native(AffineCoupling(d, partition=Partition(mask), scale=SoftclipScale(), hidden=(7, 5))),
                     vec, seed, label="coupling-affine")
    out += case_pair(bind, to_peer, lambda g: GeneralCouplingTransform(
                         d, univariate=ZAdditive, shapes=((),), hidden_features=(6,), activation=nn.Tanh).to(DTYPE),
                     native(AdditiveCoupling(d, partition=Partition(~mask), hidden=(6,), activation="tanh")),
                     vec, seed, label="coupling-additive")
    out += case_pair(bind, to_peer, lambda g: UnconditionalTransform(
                         LULinearTransform, torch.eye(d, dtype=DTYPE), buffer=False),
                     native(FactoredLULinear(d, sign=np.where(np.arange(d) % 3 == 0, -1.0, 1.0)), fix=lu_fix),
                     vec, seed, fix_import=_dominant_diagonal, label="lu")
    out += case_pair(bind, to_peer, lambda g: UnconditionalTransform(
                         PermutationTransform, torch.randperm(d, generator=g), buffer=True),
                     lambda r: (Permutation(d, seed=int(r.integers(2**31))), {}), vec, seed,
                     label="permutation")
    out += case_pair(bind, to_peer, lambda g: zuko.flows.NICE(d, transforms=3, hidden_features=(6,)).transform.to(DTYPE),
                     native(Chain([AffineCoupling(d, partition=Partition(np.arange(d) % 2 == i % 2),
                                                  scale=SoftclipScale(), hidden=(6,)) for i in range(3)])),
                     vec, seed, label="nice-chain")
    return out


def _dominant_diagonal(module):
    """Move a random LU's diagonal away from 0 (|d| ≥ 1) so the test matrix is well conditioned."""
    if isinstance(module, UnconditionalTransform) and module.f is LULinearTransform:
        with torch.no_grad():
            d = torch.diagonal(module._0)
            d.add_(torch.where(d >= 0, 1.0, -1.0).to(d.dtype))
