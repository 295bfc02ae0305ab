"""normflows 1.7 ↔ rawflow.

**Direction.** A normflows ``Flow.forward`` runs latent → data (sampling) and ``inverse`` data →
latent, each returning the log-det of the direction it runs. rawflow's forward (data → latent) is
therefore normflows' ``inverse``, and rawflow's inverse is normflows' ``forward``; a normflows list of
flows ``[f_1, ..., f_K]`` (latent → data) is ``Chain([f_K, ..., f_1])`` in rawflow.

Mapped layers (``bind`` / ``from_peer`` / ``to_peer``):

=====================================  ================================================================
normflows                              rawflow
=====================================  ================================================================
``AffineCouplingBlock``                ``ChannelCoupling`` (images, ``ConvNet2d``) or ``Coupling``
(``Split`` → ``AffineCoupling`` →      (vectors, ``MLP``) with :class:`~rawflow.interop.maps.
``Merge``)                             ShiftScaleTransform`` (data → latent is ``(x₂ − shift)·s``):
                                       ``scale_map="exp"`` → ``s = exp(−h)`` (``h_s`` rows negated,
                                       ``ExpScale``), ``"sigmoid"`` → ``SigmoidScale``,
                                       ``"sigmoid_inv"`` → ``NegatedScale(SigmoidScale)``; ``t = −shift``
                                       (rows negated); ``scale=False`` → ``AdditiveCoupling``, rows
                                       negated. The net's output is interleaved ``[shift₀, scale₀, …]``.
                                       Split ``"channel"`` copies the first ⌈C/2⌉ channels
                                       (``chunk``), ``"channel_inv"`` the last ⌊C/2⌋.
``ConvNet2d`` (``actnorm=True``,       :class:`rawflow.nets.cnn.GlowCNN` with the output ``logs`` pinned at
``leaky=0``, kernels ``(k, 1, k)``)    0 (normflows has no ``exp(3·logs)`` output scale)
``ConvNet2d`` (other)                  :class:`~rawflow.interop.nets.SequentialCNN`
``MaskedAffineFlow(b, t, s)``          ``Coupling`` (vectors; nets read the zero-padded ``b·x``: only
                                       the copied columns are kept) or ``CheckerboardCoupling``
                                       (images, ``b`` a checkerboard), conditioner
                                       ``Parallel([s, t])``, ``ShiftScaleTransform(ExpScale)`` with
                                       both negated
``Invertible1x1Conv(use_lu=True)``     :class:`~rawflow.interop.lu.FactoredLULinear` (``perm`` from
                                       ``P``, ``sign_S``, ``L``, ``U``, ``log_S``: same factorisation)
``Invertible1x1Conv(use_lu=False)``    ``DenseLinear(weight=W)``
``InvertibleAffine`` (vectors)         ``DenseLinear(weight=Wᵀ)``: normflows multiplies row vectors
                                       (``x @ W``), so the matrix acting on a column is ``Wᵀ``
``ActNorm`` / ``AffineConstFlow``      ``ActNorm(bias = −t, log_scale = −s)`` (normflows' forward is
                                       ``z·exp(s) + t``, latent → data)
``Permute("shuffle")``                 ``Permutation(perm = inv_perm)``; ``"swap"`` → rotation by ⌈C/2⌉
``Squeeze``                            ``Squeeze`` (normflows' forward is the *un*squeeze)
``GlowBlock``                          ``Chain([ActNorm, 1×1 conv, ChannelCoupling])``
``NormalizingFlow`` (import only)      ``Chain`` of its flows, reversed (``q0`` not mapped)
``Merge`` + ``GlowBase`` (factored     ``Split`` with its ``ZeroConv2d`` weight pinned at 0 (normflows'
level of ``MultiscaleFlow``)           factored-out half is *not* conditioned on the kept half):
                                       ``b = [loc₀, log_scale₀, loc₁, …]``,
                                       ``logs = [loc_logs₀, log_scale_logs₀, …]``
``GlowBase`` (top level)               ``GlowTopPrior``: ``b = [loc, log_scale]``,
                                       ``logs = [loc_logs, log_scale_logs]``
=====================================  ================================================================

Not mapped (``ValueError``): checkerboard ``split_mode`` of ``AffineCouplingBlock`` (its net sees a
half-width image), class-conditional ``GlowBase``, ``MLP`` with ``output_fn``, odd channel counts
in ``Merge``.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import torch
from torch import nn

from normflows.flows import (
    ActNorm as NfActNorm,
    AffineConstFlow,
    AffineCouplingBlock,
    GlowBlock,
    Invertible1x1Conv,
    InvertibleAffine,
    MaskedAffineFlow,
    Merge,
    Permute,
    Squeeze as NfSqueeze,
)
from normflows.core import NormalizingFlow
from normflows.distributions import GlowBase
from normflows.nets import ConvNet2d, MLP as NfMLP
from normflows.utils.nn import ActNorm as NetActNorm

from ..bijectors.actnorm import ActNorm
from ..bijectors.chain import Chain
from ..nets.cnn import ChannelNorm, GlowCNN
from ..bijectors.coupling import AdditiveCoupling, AdditiveTransform, Coupling
from ..bijectors.image_coupling import ChannelCoupling, CheckerboardCoupling
from ..bijectors.linear import DenseLinear, LULinear
from ..nets.mlp import MLP
from ..bijectors.partition import Partition
from ..bijectors.permutation import Permutation
from ..bijectors.scales import ExpScale, SigmoidScale
from ..bijectors.split import GlowTopPrior, Split
from ..bijectors.squeeze import Squeeze
from .lu import FactoredLULinear
from .maps import NegatedScale, ShiftScaleTransform
from .nets import Parallel, SequentialCNN
from ._torch import (
    DTYPE,
    Binding,
    _scatter,
    read_cnn,
    read_mlp,
    set_parameters,
    tensor,
    to_numpy,
    write_cnn,
    write_mlp,
)

PEER = "normflows"


def _calls(module):
    # rawflow forward (data → latent) = normflows inverse; rawflow inverse = normflows forward.
    return {"forward": lambda x: module.inverse(x), "inverse": lambda z: module.forward(z)}


def _idx(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.long)


# ---------------------------------------------------------------------- conditioner networks
def _read_norm(m):
    """ChannelNorm for a normflows ``utils.ActNorm`` (``y = x·exp(s) + t`` → ``(x + t·e^{−s})·e^{s}``)."""
    if not isinstance(m, NetActNorm):
        return None
    inner = m.actNorm
    c = inner.s.shape[1]
    return ChannelNorm(c), lambda: {"b": (inner.t * torch.exp(-inner.s)).reshape(c), "logs": inner.s.reshape(c)}


def _write_norm(layer: ChannelNorm, params: dict):
    c = layer.in_features
    m = NetActNorm((c, 1, 1)).to(DTYPE)
    logs = np.asarray(params["logs"], dtype=np.float64)
    set_parameters(m, {"actNorm.s": logs.reshape(1, c, 1, 1),
                       "actNorm.t": (np.asarray(params["b"]) * np.exp(logs)).reshape(1, c, 1, 1),
                       "actNorm.data_dep_init_done": np.array(1.0)})
    return m


def _glow_cnn_pattern(mods) -> bool:
    kinds = [type(m) for m in mods]
    if kinds != [nn.Conv2d, NetActNorm, nn.LeakyReLU, nn.Conv2d, NetActNorm, nn.LeakyReLU, nn.Conv2d]:
        return False
    c1, c2, c3 = mods[0], mods[3], mods[6]
    return (
        all(m.negative_slope == 0 for m in (mods[2], mods[5])) and c1.bias is None and c2.bias is None
        and c3.bias is not None and c2.kernel_size == (1, 1) and c1.kernel_size == c3.kernel_size
        and c1.padding[0] == c1.kernel_size[0] // 2 and c3.padding[0] == c3.kernel_size[0] // 2
        and c1.kernel_size[0] % 2 == 1
    )


def read_net(net, *, rows=None, sign=None, cols=None):
    """``(rawflow conditioner, bind)`` for a normflows ``param_map`` / ``s`` / ``t`` network."""
    if isinstance(net, ConvNet2d) or (isinstance(net, nn.Sequential) and any(isinstance(m, nn.Conv2d) for m in net)):
        mods = list(net.net) if isinstance(net, ConvNet2d) else list(net)
        if _glow_cnn_pattern(mods):
            return _read_glow_cnn(mods, rows, sign)
        return read_cnn(mods, rows=rows, sign=sign, what="normflows ConvNet2d", norm_reader=_read_norm)
    mods = list(net.net) if isinstance(net, NfMLP) else list(net) if isinstance(net, nn.Sequential) else None
    if mods is None:
        raise ValueError(f"normflows network {type(net).__name__} is not mapped (MLP, ConvNet2d or nn.Sequential)")
    return read_mlp(mods, cols=cols, rows=rows, sign=sign, what="normflows MLP")


def _read_glow_cnn(mods, rows, sign):
    c1, n1, c2, n2, c3 = mods[0], mods[1], mods[3], mods[4], mods[6]
    out = c3.out_channels if rows is None else len(rows)
    net = GlowCNN(c1.in_channels, out, c1.out_channels, kernel=c1.kernel_size[0])
    _, b1 = _read_norm(n1)
    _, b2 = _read_norm(n2)
    idx = None if rows is None else _idx(rows)
    sg = None if sign is None else tensor(sign)
    zeros = torch.zeros(out, dtype=DTYPE)

    def bind():
        w, b = c3.weight, c3.bias
        if idx is not None:
            w, b = w[idx], b[idx]
        if sg is not None:
            w, b = w * sg.reshape(-1, 1, 1, 1), b * sg
        return {"conv1": {"w": c1.weight}, "norm1": b1(), "conv2": {"w": c2.weight}, "norm2": b2(),
                "out": {"w": w, "b": b, "logs": zeros}}

    return net, bind


def write_net(net, params, *, rows=None, sign=None, out_features=None, in_features=None, cols=None):
    """The normflows network for a rawflow conditioner (float64)."""
    if isinstance(net, GlowCNN):
        if np.any(np.asarray(params["out"]["logs"]) != 0):
            raise ValueError("normflows' ConvNet2d has no exp(3·logs) output scale: GlowCNN's out/logs must be 0")
        k = net.layers[0][1].kernel
        out = net.out_features if out_features is None else out_features
        cnn = ConvNet2d((net.in_features, net.width, net.width, out), (k, 1, k), 0.0, init_zeros=False,
                        actnorm=True).to(DTYPE)
        w = np.asarray(params["out"]["w"], dtype=np.float64)
        b = np.asarray(params["out"]["b"], dtype=np.float64)
        if rows is not None or sign is not None:
            w, b = _scatter(w, rows, sign, out), _scatter(b, rows, sign, out)
        values = {"net.0.weight": params["conv1"]["w"], "net.3.weight": params["conv2"]["w"],
                  "net.6.weight": w, "net.6.bias": b}
        for key, norm in (("1", "norm1"), ("4", "norm2")):
            logs = np.asarray(params[norm]["logs"], dtype=np.float64)
            values[f"net.{key}.actNorm.s"] = logs.reshape(1, -1, 1, 1)
            values[f"net.{key}.actNorm.t"] = (np.asarray(params[norm]["b"]) * np.exp(logs)).reshape(1, -1, 1, 1)
            values[f"net.{key}.actNorm.data_dep_init_done"] = np.array(1.0)
        return set_parameters(cnn, values)
    if isinstance(net, SequentialCNN):
        return nn.Sequential(*write_cnn(net, params, rows=rows, sign=sign, out_features=out_features,
                                        norm_writer=_write_norm))
    if isinstance(net, MLP):
        return nn.Sequential(*write_mlp(net, params, rows=rows, sign=sign, out_features=out_features,
                                        in_features=in_features, cols=cols))
    raise ValueError(f"conditioner {type(net).__name__} has no normflows counterpart here")


# ---------------------------------------------------------------------- couplings
def _interleaved_rows(nb: int) -> np.ndarray:
    """rawflow ``[h_s, t]`` rows from normflows' interleaved ``[shift₀, scale₀, shift₁, …]``."""
    return np.concatenate([2 * np.arange(nb) + 1, 2 * np.arange(nb)])


def _scale_for(scale_map: str):
    """(rawflow scale map, sign applied to the h_s rows) for a normflows scale map (data → latent)."""
    if scale_map == "exp":
        return ExpScale(), -1.0
    if scale_map == "sigmoid":
        return SigmoidScale(), 1.0
    if scale_map == "sigmoid_inv":
        return NegatedScale(SigmoidScale()), 1.0
    raise ValueError(f"normflows scale map {scale_map!r} is not mapped")


def _channel_mask(c: int, mode: str) -> np.ndarray:
    first = (c + 1) // 2  # torch.chunk(2): the first chunk has ⌈C/2⌉ channels
    if mode == "channel":
        return np.arange(c) < first
    if mode == "channel_inv":
        return np.arange(c) >= first
    raise ValueError(f"normflows split_mode {mode!r} is not mapped (channel, channel_inv)")


def _is_image_net(net) -> bool:
    return isinstance(net, ConvNet2d) or (isinstance(net, nn.Sequential) and any(isinstance(m, nn.Conv2d) for m in net))


def import_coupling_block(module: AffineCouplingBlock) -> Binding:
    split, coupling, merge = module.flows
    if split.mode != merge.mode:
        raise ValueError("normflows AffineCouplingBlock with different split and merge modes")
    mode = split.mode
    image = _is_image_net(coupling.param_map)
    net0, _ = read_net(coupling.param_map)
    na, out = net0.in_features, net0.out_features
    m = 2 if coupling.scale else 1
    nb = out // m
    c = na + nb
    mask = _channel_mask(c, mode)
    if mask.sum() != na:
        raise ValueError(f"normflows AffineCouplingBlock: the net reads {na} channels, split {mode!r} of {c} copies "
                         f"{int(mask.sum())}")
    partition = Partition(mask)
    if coupling.scale:
        scale, s_sign = _scale_for(coupling.scale_map)
        rows = _interleaved_rows(nb)
        sign = np.concatenate([np.full(nb, s_sign), np.full(nb, -1.0)])
        transform = ShiftScaleTransform(scale)
    else:
        rows, sign = np.arange(nb), np.full(nb, -1.0)
        transform = AdditiveTransform()
    net, bind = read_net(coupling.param_map, rows=rows, sign=sign)
    if image:
        layer = ChannelCoupling(c, transform, partition=partition, conditioner=net)
    else:
        layer = Coupling(c, transform, partition=partition, conditioner=net)
    desc = f"{coupling.scale_map if coupling.scale else 'additive'}, {mode}"
    notes = ("data → latent: x₂ ↦ (x₂ − shift)·s, shift then scale (rawflow AffineCoupling: x₂·s + t)",
             "net output interleaved [shift, scale] per channel; rawflow conditioner output [h_s, t]")
    return Binding(PEER, f"AffineCouplingBlock[{desc}, {type(net).__name__}]", module, layer,
                   lambda: {"net": bind()}, _calls(module), notes=notes)


def _coupling_config(layer):
    t = layer.transform
    if isinstance(t, AdditiveTransform):
        return False, "exp", None
    if type(t) is not ShiftScaleTransform:
        raise ValueError(f"normflows' affine coupling shifts before it scales (ShiftScaleTransform); "
                         f"{t!r} has no normflows counterpart")
    sc = t.scale
    if isinstance(sc, ExpScale):
        return True, "exp", -1.0
    if isinstance(sc, SigmoidScale):
        return True, "sigmoid", 1.0
    if isinstance(sc, NegatedScale) and isinstance(sc.base, SigmoidScale):
        return True, "sigmoid_inv", 1.0
    raise ValueError(f"scale map {sc!r} has no normflows counterpart (exp, sigmoid, sigmoid_inv)")


def _mode_of(partition: Partition) -> str:
    for mode in ("channel", "channel_inv"):
        if np.array_equal(partition.mask, _channel_mask(partition.features, mode)):
            return mode
    raise ValueError(f"normflows splits channels in halves (first ⌈C/2⌉ or last ⌊C/2⌋ copied); {partition!r} is neither")


def export_coupling_block(layer: Coupling, params: dict):
    scale, scale_map, s_sign = _coupling_config(layer)
    mode = _mode_of(layer.partition)
    nb = layer.partition.size_b
    if scale:
        rows = _interleaved_rows(nb)
        sign = np.concatenate([np.full(nb, s_sign), np.full(nb, -1.0)])
    else:
        rows, sign = np.arange(nb), np.full(nb, -1.0)
    net = write_net(layer.net, params["net"], rows=rows, sign=sign, out_features=len(rows))
    return AffineCouplingBlock(net, scale, scale_map, mode).to(DTYPE)


def import_masked_affine(module: MaskedAffineFlow) -> Binding:
    b = to_numpy(module.b)[0]
    has_s = isinstance(module.s, nn.Module)
    has_t = isinstance(module.t, nn.Module)
    if not has_t:
        raise ValueError("normflows MaskedAffineFlow without a translation network is not mapped")
    notes = ["data → latent: x ↦ b·x + (1 − b)·(x − t)·exp(−s); nets read the masked input b·x",
             "separate s and t networks: rawflow conditioner Parallel([s, t]) with both outputs negated"]
    if b.ndim == 1:
        mask = b == 1
        if not np.all((b == 0) | (b == 1)):
            raise ValueError("normflows MaskedAffineFlow mask must be 0/1")
        partition = Partition(mask)
        ia, ib = partition.idx_a, partition.idx_b
        neg = -np.ones(len(ib))
        t_net, t_bind = read_net(module.t, cols=ia, rows=ib, sign=neg)
        if has_s:
            s_net, s_bind = read_net(module.s, cols=ia, rows=ib, sign=neg)
            layer = Coupling(len(b), ShiftScaleTransform(ExpScale()), partition=partition,
                             conditioner=Parallel([s_net, t_net]))
            bind = lambda: {"net": {"0": s_bind(), "1": t_bind()}}  # noqa: E731
        else:
            layer = AdditiveCoupling(len(b), partition=partition, conditioner=t_net)
            bind = lambda: {"net": t_bind()}  # noqa: E731
        kind = "vector"
    else:
        c, h, w = b.shape
        i, j = np.indices((h, w))
        parity = 0 if b[0, 0, 0] == 1 else 1
        if not np.array_equal(b, np.broadcast_to(((i + j) % 2 == parity).astype(b.dtype), b.shape)):
            raise ValueError("normflows MaskedAffineFlow on images is mapped for checkerboard masks only")
        neg = -np.ones(c)
        t_net, t_bind = read_net(module.t, rows=np.arange(c), sign=neg)
        if has_s:
            s_net, s_bind = read_net(module.s, rows=np.arange(c), sign=neg)
            layer = CheckerboardCoupling(c, ShiftScaleTransform(ExpScale()), flip=parity == 1,
                                         conditioner=Parallel([s_net, t_net]))
            bind = lambda: {"net": {"0": s_bind(), "1": t_bind()}}  # noqa: E731
        else:
            layer = CheckerboardCoupling(c, "additive", flip=parity == 1, conditioner=t_net)
            bind = lambda: {"net": t_bind()}  # noqa: E731
        kind = "checkerboard"
    name = f"MaskedAffineFlow[{'affine' if has_s else 'additive'}, {kind}]"
    return Binding(PEER, name, module, layer, bind, _calls(module), notes=tuple(notes))


def export_masked_affine(layer, params: dict, shape=None):
    """normflows ``MaskedAffineFlow`` for a rawflow vector ``Coupling`` (``ShiftScaleTransform(ExpScale)``
    with a ``Parallel([s, t])`` conditioner, or additive) or a ``CheckerboardCoupling`` (``shape`` = (C, H, W))."""
    affine = not isinstance(layer.transform, AdditiveTransform)
    if affine and not (type(layer.transform) is ShiftScaleTransform and isinstance(layer.transform.scale, ExpScale)):
        raise ValueError("normflows MaskedAffineFlow is x·exp(s) + t latent → data: rawflow "
                         "ShiftScaleTransform(ExpScale) with negated outputs")
    if isinstance(layer, CheckerboardCoupling):
        c, h, w = shape
        i, j = np.indices((h, w))
        b = np.broadcast_to(((i + j) % 2 == layer.parity).astype(np.float64), (c, h, w)).copy()
        kw = dict(rows=np.arange(c), sign=-np.ones(c), out_features=c)
    else:
        d = layer.partition.features
        b = layer.partition.mask.astype(np.float64)
        ia, ib = layer.partition.idx_a, layer.partition.idx_b
        kw = dict(rows=ib, sign=-np.ones(len(ib)), out_features=d, in_features=d, cols=ia)
    net = params["net"]
    if affine:
        s = write_net(layer.net.nets[0], net["0"], **kw)
        t = write_net(layer.net.nets[1], net["1"], **kw)
    else:
        s, t = None, write_net(layer.net, net, **kw)
    return MaskedAffineFlow(torch.tensor(b, dtype=DTYPE), t, s).to(DTYPE)


# ---------------------------------------------------------------------- linear maps, ActNorm, permutations
def import_1x1(module: Invertible1x1Conv) -> Binding:
    c = module.num_channels
    if module.use_lu:
        perm = np.argmax(to_numpy(module.P), axis=1)
        layer = FactoredLULinear(c, perm=perm, sign=to_numpy(module.sign_S), spatial=2)
        bind = lambda: {"lower": module.L, "upper": module.U, "log_scale": module.log_S}  # noqa: E731
        name, notes = "Invertible1x1Conv[LU]", ("same P·L·U factorisation; normflows' forward (latent → data) "
                                                "applies U⁻¹L⁻¹Pᵀ from explicit inverses",)
    else:
        layer = DenseLinear(c, spatial=2)
        bind = lambda: {"weight": module.W}  # noqa: E731
        name, notes = "Invertible1x1Conv[dense]", ("normflows' forward (latent → data) uses torch.inverse(W)",)
    return Binding(PEER, name, module, layer, bind, _calls(module), notes=notes)


def export_1x1(layer, params: dict):
    c = layer.features
    if isinstance(layer, DenseLinear):
        module = Invertible1x1Conv(c, use_lu=False).to(DTYPE)
        return set_parameters(module, {"W": params["weight"]})
    if isinstance(layer, LULinear):
        module = Invertible1x1Conv(c, use_lu=True).to(DTYPE)
        p = np.zeros((c, c))
        p[np.arange(c), layer.perm] = 1
        return set_parameters(module, {"P": p, "sign_S": layer.sign, "L": params["lower"], "U": params["upper"],
                                       "log_S": params["log_scale"]})
    raise ValueError(f"{type(layer).__name__} has no normflows Invertible1x1Conv counterpart")


def import_invertible_affine(module: InvertibleAffine) -> Binding:
    layer = DenseLinear(module.num_channels)
    if module.use_lu:
        def bind():
            eye = torch.eye(module.num_channels, dtype=module.L.dtype)
            lower = torch.tril(module.L, diagonal=-1) + eye
            upper = torch.triu(module.U, diagonal=1) + torch.diag(module.sign_S * torch.exp(module.log_S))
            return {"weight": (module.P @ lower @ upper).T}
    else:
        def bind():
            return {"weight": module.W.T}
    notes = ("normflows multiplies row vectors (x @ W): rawflow DenseLinear weight = Wᵀ (= Uᵀ Lᵀ Pᵀ with LU, "
             "not of rawflow's P·L·U form)",)
    return Binding(PEER, f"InvertibleAffine[{'LU' if module.use_lu else 'dense'}]", module, layer, bind,
                   {"forward": lambda x: module.inverse(x), "inverse": lambda z: module.forward(z)}, notes=notes)


def export_invertible_affine(layer: DenseLinear, params: dict):
    module = InvertibleAffine(layer.features, use_lu=False).to(DTYPE)
    return set_parameters(module, {"W": np.asarray(params["weight"]).T})


def import_actnorm(module: AffineConstFlow) -> Binding:
    shape = module.s.shape[1:]
    c = shape[0]
    layer = ActNorm(c, spatial=len(shape) - 1)
    if len(shape) > 1 and tuple(shape[1:]) != (1,) * (len(shape) - 1):
        raise ValueError("normflows ActNorm with per-pixel parameters is not mapped (shape must be (C, 1, 1))")
    notes = ["normflows forward (latent → data) z·exp(s) + t: rawflow bias = −t, log_scale = −s"]
    if isinstance(module, NfActNorm) and not module.data_dep_init_done > 0:
        notes.append("data-dependent init not done: normflows would overwrite these parameters on its next call")
    name = f"{'ActNorm' if isinstance(module, NfActNorm) else 'AffineConstFlow'}[{'image' if len(shape) > 1 else 'vector'}]"
    return Binding(PEER, name, module, layer, lambda: {"bias": -module.t.reshape(c), "log_scale": -module.s.reshape(c)},
                   _calls(module), notes=tuple(notes))


def export_actnorm(layer: ActNorm, params: dict):
    c = layer.features
    shape = (c,) + (1,) * layer.spatial
    module = NfActNorm(shape).to(DTYPE)
    return set_parameters(module, {"s": -np.asarray(params["log_scale"]).reshape((1,) + shape),
                                   "t": -np.asarray(params["bias"]).reshape((1,) + shape),
                                   "data_dep_init_done": np.array(1.0)})


def import_permute(module: Permute, spatial: int = 0) -> Binding:
    c = module.num_channels
    if module.mode == "shuffle":
        perm = to_numpy(module.inv_perm).astype(np.intp)
    elif module.mode == "swap":
        perm = _swap(c)
    else:
        raise ValueError(f"normflows Permute mode {module.mode!r} is not mapped")
    layer = Permutation(c, perm=perm, spatial=spatial)
    return Binding(PEER, f"Permute[{module.mode}]", module, layer, lambda: {}, _calls(module),
                   notes=("data → latent applies normflows' inv_perm: rawflow perm = inv_perm",))


def _swap(c: int) -> np.ndarray:
    """The permutation of normflows' ``Permute(c, "swap")`` in rawflow's direction (rotation by ⌈c/2⌉)."""
    first = (c + 1) // 2
    return np.concatenate([np.arange(first, c), np.arange(first)])


def export_permute(layer: Permutation, params=None):
    """``Permute(c, "swap")`` for the rotation it computes, else ``Permute(c, "shuffle")`` with the permutation."""
    c = layer.features
    if np.array_equal(np.asarray(layer.perm), _swap(c)):
        return Permute(c, "swap")
    module = Permute(c, "shuffle")
    module.inv_perm.copy_(torch.as_tensor(np.asarray(layer.perm), dtype=torch.long))
    module.perm.copy_(torch.as_tensor(np.argsort(layer.perm), dtype=torch.long))
    return module


def import_squeeze(module: NfSqueeze, channels: int) -> Binding:
    return Binding(PEER, "Squeeze", module, Squeeze(channels), lambda: {}, _calls(module),
                   notes=("normflows Squeeze.forward is latent → data (unsqueeze); same channel order",))


# ---------------------------------------------------------------------- Glow block
def import_glow_block(module: GlowBlock) -> Binding:
    subs = [bind(f) for f in reversed(module.flows)]  # data → latent order
    layer = Chain([s.layer for s in subs])
    return Binding(PEER, "GlowBlock[" + ", ".join(s.name for s in subs) + "]", module, layer,
                   lambda: {str(i): s.bind() for i, s in enumerate(subs)}, _calls(module),
                   notes=("normflows flows [coupling, 1×1 conv, ActNorm] run latent → data: rawflow "
                          "Chain([ActNorm, 1×1 conv, coupling])",))


def export_glow_block(layer: Chain, params: dict):
    act, lin, cpl = layer.layers
    if not (isinstance(act, ActNorm) and isinstance(cpl, ChannelCoupling)):
        raise ValueError("normflows GlowBlock = Chain([ActNorm, LULinear/DenseLinear, ChannelCoupling])")
    c = act.features
    flows = [export_coupling_block(cpl, params["2"]), export_1x1(lin, params["1"]), export_actnorm(act, params["0"])]
    module = GlowBlock(c, 2).to(DTYPE)
    module.flows = nn.ModuleList(flows)
    return module


# ---------------------------------------------------------------------- multi-scale: split prior and top prior
class MultiscaleLevel(nn.Module):
    """A factored-out level of normflows' ``MultiscaleFlow``: the ``Merge`` and that level's ``GlowBase``."""

    def __init__(self, merge: Merge, q0: GlowBase):
        super().__init__()
        self.merge, self.q0 = merge, q0


def _check_glow_base(q0: GlowBase):
    if q0.class_cond:
        raise ValueError("class-conditional normflows GlowBase is not mapped")
    if q0.temperature is not None:
        raise ValueError("normflows GlowBase with a temperature set is not mapped")


def _interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.stack([a.reshape(-1), b.reshape(-1)], dim=1).reshape(-1)


def import_split(level: MultiscaleLevel) -> Binding:
    merge, q0 = level.merge, level.q0
    _check_glow_base(q0)
    if merge.mode != "channel":
        raise ValueError("normflows Merge mode must be 'channel' to map to rawflow's Split")
    c2 = q0.shape[0]
    split = Split(2 * c2, logscale_factor=q0.logscale_factor)
    w = torch.zeros((2 * c2, c2, 3, 3), dtype=DTYPE)

    def bind_():
        return {"prior": {"w": w, "b": _interleave(q0.loc, q0.log_scale),
                          "logs": _interleave(q0.loc_logs, q0.log_scale_logs)}}

    def factor(x):
        (kept, x2), ld = merge.inverse(x)
        return kept, q0.log_prob(x2) + ld

    def unfactor(kept, eps):
        with mock.patch("torch.randn", return_value=eps):  # GlowBase draws ε with torch.randn: feed rawflow's
            z2, logp = q0(kept.shape[0])
        x, ld = merge([kept, z2])
        return x, logp - ld

    notes = ("normflows' factored-out half has a learned per-channel Gaussian not conditioned on the kept half: "
             "rawflow Split with its ZeroConv2d weight pinned at 0 (b, logs interleaved [μ, ℓ])",
             "unfactor: normflows draws ε inside GlowBase.forward with torch.randn; the comparison substitutes "
             "the ε given to rawflow")
    return Binding(PEER, "Merge+GlowBase[split]", level, split, bind_, {"factor": factor, "unfactor": unfactor},
                   kind="split", notes=notes)


def export_split(layer: Split, params: dict, hw: tuple) -> MultiscaleLevel:
    if np.any(np.asarray(params["prior"]["w"]) != 0):
        raise ValueError("normflows' factored prior is unconditional: rawflow Split's prior/w must be 0")
    c2 = layer.factored
    if layer.kept != c2:
        raise ValueError("normflows' Merge halves the channels: an even channel count is needed")
    q0 = GlowBase((c2,) + tuple(hw), logscale_factor=layer.prior.logscale_factor).to(DTYPE)
    b, logs = np.asarray(params["prior"]["b"]), np.asarray(params["prior"]["logs"])
    shape = (1, c2, 1, 1)
    set_parameters(q0, {"loc": b[0::2].reshape(shape), "log_scale": b[1::2].reshape(shape),
                        "loc_logs": logs[0::2].reshape(shape), "log_scale_logs": logs[1::2].reshape(shape)})
    return MultiscaleLevel(Merge("channel"), q0)


def import_top_prior(q0: GlowBase) -> Binding:
    _check_glow_base(q0)
    c = q0.shape[0]
    prior = GlowTopPrior(c, logscale_factor=q0.logscale_factor)
    return Binding(PEER, "GlowBase[top]", q0, prior,
                   lambda: {"b": torch.cat([q0.loc.reshape(c), q0.log_scale.reshape(c)]),
                            "logs": torch.cat([q0.loc_logs.reshape(c), q0.log_scale_logs.reshape(c)])},
                   {"log_prob": lambda z: q0.log_prob(z)}, kind="prior",
                   notes=("loc = loc·exp(3·loc_logs), log_scale = log_scale·exp(3·log_scale_logs): rawflow "
                          "h = b·exp(3·logs) with b = [loc, log_scale]",))


def export_top_prior(prior: GlowTopPrior, params: dict, hw: tuple) -> GlowBase:
    c = prior.channels
    q0 = GlowBase((c,) + tuple(hw), logscale_factor=prior.logscale_factor).to(DTYPE)
    b, logs = np.asarray(params["b"]), np.asarray(params["logs"])
    shape = (1, c, 1, 1)
    return set_parameters(q0, {"loc": b[:c].reshape(shape), "log_scale": b[c:].reshape(shape),
                               "loc_logs": logs[:c].reshape(shape), "log_scale_logs": logs[c:].reshape(shape)})


def import_flows(model) -> Binding:
    """A ``NormalizingFlow``'s flows (latent → data list) as ``Chain`` of the reversed list; the base
    distribution ``q0`` is not part of the binding."""
    subs = [bind(f) for f in reversed(model.flows)]

    def run(x, steps):
        # NormalizingFlow.inverse_and_log_det / forward_and_log_det accumulate in float32 (see
        # docs/peer-findings.md #5): sum the flows' own log-dets in the input's dtype instead.
        total = torch.zeros(len(x), dtype=x.dtype)
        for step in steps:
            x, ld = step(x)
            total = total + ld
        return x, total

    calls = {"forward": lambda x: run(x, [f.inverse for f in reversed(model.flows)]),
             "inverse": lambda z: run(z, [f.forward for f in model.flows])}
    return Binding(PEER, "NormalizingFlow[" + ", ".join(s.name for s in subs) + "]", model,
                   Chain([s.layer for s in subs]), lambda: {str(i): s.bind() for i, s in enumerate(subs)}, calls,
                   notes=("flows only: q0 is not mapped; log-dets summed in float64 (NormalizingFlow's own "
                          "accumulator is float32)",))


# ---------------------------------------------------------------------- dispatch
def bind(module, **kwargs) -> Binding:
    """The :class:`~rawflow.interop._torch.Binding` of a normflows flow / level / base distribution.

    ``Squeeze`` needs ``channels=C``; ``Permute`` on images takes ``spatial=2``.
    """
    if isinstance(module, NormalizingFlow):
        return import_flows(module)
    if isinstance(module, GlowBlock):
        return import_glow_block(module)
    if isinstance(module, AffineCouplingBlock):
        return import_coupling_block(module)
    if isinstance(module, MaskedAffineFlow):
        return import_masked_affine(module)
    if isinstance(module, Invertible1x1Conv):
        return import_1x1(module)
    if isinstance(module, InvertibleAffine):
        return import_invertible_affine(module)
    if isinstance(module, AffineConstFlow):
        return import_actnorm(module)
    if isinstance(module, Permute):
        return import_permute(module, **kwargs)
    if isinstance(module, NfSqueeze):
        return import_squeeze(module, **kwargs)
    if isinstance(module, MultiscaleLevel):
        return import_split(module)
    if isinstance(module, GlowBase):
        return import_top_prior(module)
    raise ValueError(f"normflows {type(module).__name__} is not mapped to rawflow")


def from_peer(module, **kwargs):
    """``(rawflow layer, params)`` reproducing a normflows module (see the module doc)."""
    b = bind(module, **kwargs)
    return b.layer, b.params()


def to_peer(layer, params: dict, **kwargs):
    """The normflows module (float64) equal to a rawflow layer of a mapped form.

    ``Split`` and ``GlowTopPrior`` need ``hw=(H, W)`` (``GlowBase`` has a fixed shape);
    ``CheckerboardCoupling`` needs ``shape=(C, H, W)``.
    """
    if isinstance(layer, Chain):
        return export_glow_block(layer, params)
    if isinstance(layer, CheckerboardCoupling):
        return export_masked_affine(layer, params, **kwargs)
    if isinstance(layer, Coupling):
        if isinstance(layer.net, Parallel) or kwargs.get("masked"):
            return export_masked_affine(layer, params)
        return export_coupling_block(layer, params)
    if isinstance(layer, (LULinear, DenseLinear)) and getattr(layer, "spatial", 0) == 2:
        return export_1x1(layer, params)
    if isinstance(layer, DenseLinear):
        return export_invertible_affine(layer, params)
    if isinstance(layer, ActNorm):
        return export_actnorm(layer, params)
    if isinstance(layer, Permutation):
        return export_permute(layer, params)
    if isinstance(layer, Squeeze):
        return NfSqueeze()
    if isinstance(layer, Split):
        return export_split(layer, params, **kwargs)
    if isinstance(layer, GlowTopPrior):
        return export_top_prior(layer, params, **kwargs)
    raise ValueError(f"rawflow {type(layer).__name__} has no normflows counterpart here")


# ---------------------------------------------------------------------- verification cases
def _prepare(module):
    for m in module.modules():
        if isinstance(m, NfActNorm):
            m.data_dep_init_done.fill_(1.0)


def _seeded(gen, make):
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
        return make()


def cases(seed: int = 0) -> list:
    """Zero-argument callables comparing every mapped layer, imported and exported."""
    from .compare import case_pair, random_params

    n, d, c, hw, hidden = 2, 5, 4, 4, 6
    vec, img = (n, d), (n, c, hw, hw)
    out = []

    def native(layer, x, keep=(), fix=None, scale=0.5):
        def make(rng):
            params = random_params(layer.init(rng, rng.normal(size=x)), rng, scale=scale, keep=keep)
            return layer, (fix(params) if fix else params)
        return make

    def pair(label, make_module, make_native, shape, bind_fn=bind, to_peer_fn=to_peer, scale=0.5):
        return case_pair(bind_fn, to_peer_fn, make_module, make_native, shape, seed, _prepare, scale=scale,
                         label=label)

    # Couplings: vectors (MLP) and images (ConvNet2d, with and without its ActNorm layers).
    for scale_map in ("exp", "sigmoid", "sigmoid_inv"):
        for mode in ("channel", "channel_inv"):
            first = (d + 1) // 2
            na = first if mode == "channel" else d - first
            out += pair(f"coupling-{scale_map}-{mode}", lambda g, sm=scale_map, md=mode, na=na: AffineCouplingBlock(
                            NfMLP([na, 7, 2 * (d - na)], leaky=0.1), True, sm, md).to(DTYPE),
                        native(Coupling(d, ShiftScaleTransform(_scale_for(scale_map)[0]),
                                        partition=Partition(_channel_mask(d, mode)),
                                        conditioner=MLP(na, 2 * (d - na), (7,), "leaky_relu", 0.1)), vec), vec)
    out += pair("coupling-additive", lambda g: AffineCouplingBlock(NfMLP([3, 7, 2]), False, "exp", "channel").to(DTYPE),
                native(AdditiveCoupling(d, partition=Partition(_channel_mask(d, "channel")), hidden=(7,)), vec), vec)
    for actnorm in (False, True):
        out += pair(f"coupling-image-{'glowcnn' if actnorm else 'convnet'}", lambda g, an=actnorm: AffineCouplingBlock(
                        ConvNet2d((c // 2, hidden, hidden, c), (3, 1, 3), 0.0, False, actnorm=an), True, "sigmoid",
                        "channel").to(DTYPE),
                    native(ChannelCoupling(c, ShiftScaleTransform(SigmoidScale()), width=hidden,
                                           conditioner=GlowCNN(c // 2, c, hidden) if actnorm else SequentialCNN(
                                               _cnn_layers(c // 2, c, hidden))), img,
                           fix=(lambda p: _zero_logs(p)) if actnorm else None, scale=0.25), img, scale=0.25)
    out += pair("masked-affine", lambda g: MaskedAffineFlow(torch.tensor([1.0, 0, 1, 0, 0], dtype=DTYPE),
                                           NfMLP([d, 6, d]), NfMLP([d, 6, d])).to(DTYPE),
                native(Coupling(d, ShiftScaleTransform(ExpScale()), partition=Partition(np.array([1, 0, 1, 0, 0]) == 1),
                                conditioner=Parallel([MLP(2, 3, (6,)), MLP(2, 3, (6,))])), vec), vec)
    out += pair("masked-affine-checkerboard", lambda g: MaskedAffineFlow(torch.tensor(_checker(c, hw, 1), dtype=DTYPE), _conv_seq(c, c, hidden),
                                           _conv_seq(c, c, hidden)).to(DTYPE),
                native(CheckerboardCoupling(c, ShiftScaleTransform(ExpScale()), conditioner=Parallel(
                    [SequentialCNN(_cnn_layers(c, c, hidden, kernels=(3, 3))),
                     SequentialCNN(_cnn_layers(c, c, hidden, kernels=(3, 3)))])), img, scale=0.25),
                img, to_peer_fn=lambda layer, p: to_peer(layer, p, shape=(c, hw, hw)), scale=0.25)
    # 1×1 convolutions, ActNorm, permutations, squeeze.
    out += pair("1x1-lu", lambda g: _seeded(g, lambda: Invertible1x1Conv(c, use_lu=True)).to(DTYPE),
                native(LULinear(c, spatial=2, seed=seed + 7), img,
                       fix=lambda p: p | {"lower": np.tril(p["lower"], -1), "upper": np.triu(p["upper"], 1)}), img)
    out += pair("1x1-dense", lambda g: _seeded(g, lambda: Invertible1x1Conv(c, use_lu=False)).to(DTYPE),
                native(DenseLinear(c, spatial=2), img, fix=lambda p: {"weight": p["weight"] + 2 * np.eye(c)}), img)
    out += pair("invertible-affine", lambda g: _seeded(g, lambda: InvertibleAffine(d, use_lu=True)).to(DTYPE),
                native(DenseLinear(d), vec, fix=lambda p: {"weight": p["weight"] + 2 * np.eye(d)}), vec)
    out += pair("actnorm-image", lambda g: NfActNorm((c, 1, 1)).to(DTYPE), native(ActNorm(c, spatial=2), img), img)
    out += pair("actnorm", lambda g: NfActNorm((d,)).to(DTYPE), native(ActNorm(d), vec), vec)
    out += pair("permute-shuffle", lambda g: _seeded(g, lambda: Permute(c, "shuffle")), lambda r: (Permutation(c, seed=3, spatial=2), {}),
                img, bind_fn=lambda m: bind(m, spatial=2))
    out += pair("permute-swap", lambda g: Permute(d, "swap"), lambda r: (Permutation(d, perm=_swap(d)), {}), vec)
    out += pair("squeeze", lambda g: NfSqueeze(), lambda r: (Squeeze(c), {}), img, bind_fn=lambda m: bind(m, channels=c))
    # Glow block (ActNorm + LU 1×1 conv + affine coupling with ConvNet2d).
    out += pair("glow-block", lambda g: _seeded(g, lambda: GlowBlock(c, hidden, split_mode="channel")).to(DTYPE),
                lambda r: _glow_block_native(c, hidden, r, img), img, scale=0.25)
    # Multi-scale: factored level (Merge + GlowBase) and top prior.
    out += pair("split", lambda g: MultiscaleLevel(Merge("channel"), GlowBase((c // 2, hw, hw))).to(DTYPE),
                native(Split(c), img, fix=lambda p: {"prior": p["prior"] | {"w": np.zeros_like(p["prior"]["w"])}}),
                img, to_peer_fn=lambda layer, p: to_peer(layer, p, hw=(hw, hw)))
    out += pair("top-prior", lambda g: GlowBase((c, hw, hw)).to(DTYPE), native(GlowTopPrior(c), img), img,
                to_peer_fn=lambda layer, p: to_peer(layer, p, hw=(hw, hw)))
    return out


def _checker(c, hw, parity):
    i, j = np.indices((hw, hw))
    return np.broadcast_to(((i + j) % 2 == (1 - parity)).astype(np.float64), (c, hw, hw)).copy()


def _conv_seq(c_in, c_out, hidden):
    return nn.Sequential(nn.Conv2d(c_in, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, c_out, 3, padding=1))


def _cnn_layers(c_in, c_out, hidden, kernels=(3, 1, 3)):
    from ..nets.cnn import Conv2d
    from .nets import Act

    widths = [c_in] + [hidden] * (len(kernels) - 1) + [c_out]
    layers = []
    for i, k in enumerate(kernels):
        layers.append((str(2 * i), Conv2d(widths[i], widths[i + 1], k)))
        if i < len(kernels) - 1:
            layers.append((str(2 * i + 1), Act("relu")))
    return layers


def _zero_logs(params):
    params["net"]["out"]["logs"] = np.zeros_like(params["net"]["out"]["logs"])
    return params


def _glow_block_native(c, hidden, rng, shape):
    from .compare import random_params

    layer = Chain([ActNorm(c, spatial=2), LULinear(c, spatial=2, seed=int(rng.integers(2**31))),
                   ChannelCoupling(c, ShiftScaleTransform(SigmoidScale()), partition=Partition(_channel_mask(c, "channel")),
                                   conditioner=SequentialCNN(_cnn_layers((c + 1) // 2, 2 * (c // 2), hidden)))])
    params = random_params(layer.init(rng, rng.normal(size=shape)), rng, scale=0.25)
    params["1"]["lower"], params["1"]["upper"] = np.tril(params["1"]["lower"], -1), np.triu(params["1"]["upper"], 1)
    return layer, params
