"""Torch-side plumbing shared by the peer adapters: conversions, bindings, network readers/writers.

A :class:`Binding` ties a peer module to the rawflow object that reproduces it:

* ``layer``   the rawflow bijector (or split / prior);
* ``bind()``  the rawflow parameter tree as torch tensors that are *differentiable functions of the
  peer module's parameters* (index gathers, sign flips, ``log(softplus(u) + ε)`` ...). Its value,
  detached, is what an import hands to rawflow; its Jacobian carries rawflow's gradients back to
  the peer's parameter coordinates (:func:`pullback`), so gradients are compared in the peer's
  own parametrisation;
* ``calls``   the peer's functions in rawflow's convention (forward = data → latent, log-dets
  ``log|det ∂out/∂in|`` per sample), e.g. ``{"forward": f(x) -> (z, logdet), "inverse": ...}``.

Network readers take a peer's layer list (``Linear``/``Conv2d`` and activations) and return the
matching rawflow network plus a ``bind`` function for its parameters; ``rows``/``sign`` describe
how the rawflow output channel ``k`` is obtained from the peer's output channel ``rows[k]``
(times ``sign[k]``), which absorbs peers' output layouts (interleaved, swapped halves, negated
shifts). Writers do the reverse and fill peer outputs that rawflow does not use with zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from .. import tree
from ..nets.cnn import ChannelNorm, Conv2d
from ..nets.mlp import MLP
from .nets import Act, SequentialCNN

DTYPE = torch.float64


def tensor(a) -> torch.Tensor:
    """float64 torch tensor (a copy) from an array-like."""
    return torch.tensor(np.asarray(a, dtype=np.float64), dtype=DTYPE)


def to_numpy(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().numpy().copy()
    return np.asarray(t)


def tree_numpy(t: dict) -> dict:
    return tree.map(to_numpy, t)


@dataclass
class Binding:
    """A peer module, the rawflow object reproducing it, and the map between their parameters."""

    peer: str
    name: str
    module: nn.Module
    layer: object
    bind: Callable[[], dict]
    calls: dict = field(default_factory=dict)
    kind: str = "bijector"  # "bijector", "split" or "prior"
    notes: tuple = ()

    def params(self) -> dict:
        """rawflow parameters (NumPy float64) of the peer module's current state."""
        with torch.no_grad():
            return tree_numpy(self.bind())

    def peer_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """The peer's learned parameters (``requires_grad``), by ``named_parameters`` name."""
        return [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]


def pullback(binding: Binding, gparams: dict) -> dict[str, np.ndarray]:
    """rawflow's parameter gradient ``gparams`` mapped to the peer's parameters.

    ``g_peer = (∂ bind / ∂ θ_peer)ᵀ g_rawflow``, by autograd through ``bind`` (the parametrisation
    map only; rawflow's own gradient is the hand-written one). rawflow leaves that do not depend on
    the peer's parameters (pinned constants) are dropped; peer parameters rawflow does not read get 0.
    """
    named = binding.peer_parameters()
    with torch.enable_grad():
        raw = binding.bind()
        outs, gouts = [], []
        for path, leaf in tree.leaves(raw):
            if isinstance(leaf, torch.Tensor) and leaf.requires_grad:
                outs.append(leaf)
                gouts.append(tensor(tree.get(gparams, path)))
        grads = torch.autograd.grad(outs, [p for _, p in named], gouts, allow_unused=True) if outs else []
    result = {}
    for i, (name, p) in enumerate(named):
        g = grads[i] if grads else None
        result[name] = np.zeros(tuple(p.shape)) if g is None else to_numpy(g)
    return result


def set_parameters(module: nn.Module, values: dict) -> nn.Module:
    """Copy ``{name: array}`` into the module's parameters/buffers of those names (float64)."""
    state = dict(module.named_parameters())
    state.update(dict(module.named_buffers()))
    with torch.no_grad():
        for name, value in values.items():
            if name not in state:
                raise KeyError(f"{type(module).__name__} has no parameter or buffer {name!r}")
            target = state[name]
            v = torch.as_tensor(np.array(value), dtype=target.dtype)
            if tuple(v.shape) != tuple(target.shape):
                raise ValueError(f"{name}: shape {tuple(v.shape)} does not fit {tuple(target.shape)}")
            target.copy_(v)
    return module


def randomize_(module: nn.Module, generator: torch.Generator, scale: float = 0.5) -> nn.Module:
    """Overwrite every learned parameter with ``N(0, scale²)`` draws (zero-initialised layers hide bugs)."""
    with torch.no_grad():
        for _, p in module.named_parameters():
            if p.requires_grad:
                p.copy_(scale * torch.randn(p.shape, generator=generator, dtype=DTYPE).to(p.dtype))
    return module


# ---------------------------------------------------------------------- activations
def activation_of(mod: nn.Module):
    """``(name, slope)`` of a torch activation module rawflow has, else ``None``."""
    if isinstance(mod, nn.ReLU):
        return "relu", 0.01
    if isinstance(mod, nn.LeakyReLU):
        slope = float(mod.negative_slope)
        return ("relu", 0.01) if slope == 0 else ("leaky_relu", slope)
    if isinstance(mod, nn.Tanh):
        return "tanh", 0.01
    return None


def activation_module(name: str, slope: float) -> nn.Module:
    return {"relu": nn.ReLU, "tanh": nn.Tanh}.get(name, lambda: nn.LeakyReLU(slope))()


def _is_linear(mod) -> bool:
    w = getattr(mod, "weight", None)
    return type(mod).__name__ == "Linear" and isinstance(w, torch.Tensor) and w.dim() == 2


def _skip(mod) -> bool:
    """Layers that are the identity at evaluation: ``Identity`` and ``Dropout(p=0)``."""
    return isinstance(mod, nn.Identity) or (isinstance(mod, nn.Dropout) and mod.p == 0)


def _gather(t: torch.Tensor, rows, sign) -> torch.Tensor:
    if rows is not None:
        t = t[torch.as_tensor(np.asarray(rows), dtype=torch.long)]
    if sign is not None:
        t = t * tensor(sign).reshape((-1,) + (1,) * (t.dim() - 1))
    return t


# ---------------------------------------------------------------------- MLPs
def read_mlp(mods, *, cols=None, rows=None, sign=None, what: str = "network"):
    """``(MLP, bind)`` for a torch layer list ``[Linear, act, Linear, ..., Linear]``.

    ``cols``: input features rawflow feeds (the peer's first layer reads a wider, zero-padded
    input; its other columns only ever multiply zeros). ``rows``/``sign``: output map (module doc).
    """
    mods = [m for m in mods if not _skip(m)]
    linears = mods[0::2]
    acts = mods[1::2]
    if not mods or len(linears) != len(acts) + 1 or not all(_is_linear(m) for m in linears):
        raise ValueError(
            f"{what}: expected alternating Linear and activation layers ending in Linear, got "
            f"{[type(m).__name__ for m in mods]}"
        )
    kinds = {activation_of(a) for a in acts}
    if None in kinds or len(kinds) > 1:
        raise ValueError(f"{what}: activations must be one of ReLU, LeakyReLU, Tanh (all the same), got "
                         f"{[type(a).__name__ for a in acts]}")
    if any(lin.bias is None for lin in linears):
        raise ValueError(f"{what}: Linear layers without bias are not mapped")
    name, slope = kinds.pop() if kinds else ("relu", 0.01)
    in_features = linears[0].weight.shape[1] if cols is None else len(cols)
    out_features = linears[-1].weight.shape[0] if rows is None else len(rows)
    hidden = [int(lin.weight.shape[0]) for lin in linears[:-1]]
    mlp = MLP(in_features, out_features, hidden=hidden, activation=name, slope=slope)
    last = len(linears) - 1

    def bind():
        params = {}
        for i, lin in enumerate(linears):
            w, b = lin.weight, lin.bias
            if i == 0 and cols is not None:
                w = w[:, torch.as_tensor(np.asarray(cols), dtype=torch.long)]
            if i == last:
                w, b = _gather(w, rows, sign), _gather(b, rows, sign)
            params[str(i)] = {"w": w, "b": b}
        return params

    return mlp, bind


def write_mlp(mlp: MLP, params: dict, *, in_features=None, cols=None, out_features=None, rows=None,
              sign=None, linear=nn.Linear) -> list:
    """The torch layer list of :func:`read_mlp`'s inverse: rawflow MLP params → ``[Linear, act, ...]``."""
    n = len(mlp.widths) - 1
    mods = []
    for i in range(n):
        w = np.asarray(params[str(i)]["w"], dtype=np.float64)
        b = np.asarray(params[str(i)]["b"], dtype=np.float64)
        if i == 0 and cols is not None:
            full = np.zeros((w.shape[0], in_features))
            full[:, np.asarray(cols)] = w
            w = full
        if i == n - 1 and (rows is not None or sign is not None):
            w, b = _scatter(w, rows, sign, out_features), _scatter(b, rows, sign, out_features)
        lin = linear(w.shape[1], w.shape[0]).to(DTYPE)
        with torch.no_grad():
            lin.weight.copy_(tensor(w))
            lin.bias.copy_(tensor(b))
        mods.append(lin)
        if i < n - 1:
            mods.append(activation_module(mlp.activation.name, mlp.activation.slope))
    return mods


def _scatter(a: np.ndarray, rows, sign, size) -> np.ndarray:
    """Inverse of ``_gather``: peer row ``rows[k]`` = ``sign[k]`` · rawflow row ``k``; others zero."""
    rows = np.arange(a.shape[0]) if rows is None else np.asarray(rows)
    sign = np.ones(a.shape[0]) if sign is None else np.asarray(sign, dtype=np.float64)
    out = np.zeros((a.shape[0] if size is None else size,) + a.shape[1:])
    out[rows] = a * sign.reshape((-1,) + (1,) * (a.ndim - 1))
    return out


# ---------------------------------------------------------------------- CNNs
def _check_conv(conv: nn.Conv2d, what: str) -> int:
    k = conv.kernel_size
    ok = (
        k[0] == k[1] and k[0] % 2 == 1 and conv.stride == (1, 1) and conv.dilation == (1, 1)
        and conv.groups == 1 and conv.padding == (k[0] // 2, k[0] // 2) and conv.padding_mode == "zeros"
    )
    if not ok:
        raise ValueError(
            f"{what}: only stride-1, 'same'-zero-padded, odd square convolutions map to rawflow.nets.cnn.Conv2d, "
            f"got {conv}"
        )
    return k[0]


def read_cnn(mods, *, rows=None, sign=None, what: str = "network", norm_reader=None):
    """``(SequentialCNN, bind)`` for a torch layer list of ``Conv2d``, activations and (through
    ``norm_reader(module) -> (ChannelNorm, bind)``) normalisation layers. rawflow layer names are the
    positions in ``mods`` (``"0"``, ``"1"``, ...), as in an ``nn.Sequential``."""
    mods = list(mods)
    layers, binds = [], {}
    convs = [i for i, m in enumerate(mods) if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{what}: no Conv2d layer")
    last = convs[-1]
    if any(not isinstance(m, nn.Conv2d) and not _skip(m) for m in mods[last + 1 :]):
        raise ValueError(f"{what}: layers after the last convolution are not mapped")
    for i, m in enumerate(mods):
        key = str(i)
        if isinstance(m, nn.Conv2d):
            k = _check_conv(m, what)
            c_out = m.out_channels if (i != last or rows is None) else len(rows)
            layers.append((key, Conv2d(m.in_channels, c_out, k, bias=m.bias is not None)))

            def conv_bind(m=m, final=(i == last)):
                w, b = m.weight, m.bias
                if final:
                    w = _gather(w, rows, sign)
                    b = None if b is None else _gather(b, rows, sign)
                return {"w": w} if b is None else {"w": w, "b": b}

            binds[key] = conv_bind
        elif activation_of(m) is not None:
            layers.append((key, Act(*activation_of(m))))
        elif _skip(m):
            continue
        elif norm_reader is not None and norm_reader(m) is not None:
            norm, nbind = norm_reader(m)
            layers.append((key, norm))
            binds[key] = nbind
        else:
            raise ValueError(f"{what}: layer {type(m).__name__} is not mapped")
    net = SequentialCNN(layers)

    def bind():
        return {key: fn() for key, fn in binds.items()}

    return net, bind


def write_cnn(net: SequentialCNN, params: dict, *, out_features=None, rows=None, sign=None,
              norm_writer=None) -> list:
    """Inverse of :func:`read_cnn`: the torch layer list (``Conv2d`` with "same" padding, activations)."""
    mods = []
    conv_keys = [name for name, layer in net.layers if isinstance(layer, Conv2d)]
    for name, layer in net.layers:
        if isinstance(layer, Conv2d):
            p = params[name]
            w = np.asarray(p["w"], dtype=np.float64)
            b = None if "b" not in p else np.asarray(p["b"], dtype=np.float64)
            if name == conv_keys[-1] and (rows is not None or sign is not None):
                w = _scatter(w, rows, sign, out_features)
                b = None if b is None else _scatter(b, rows, sign, out_features)
            conv = nn.Conv2d(w.shape[1], w.shape[0], layer.kernel, padding=layer.kernel // 2,
                             bias=b is not None).to(DTYPE)
            with torch.no_grad():
                conv.weight.copy_(tensor(w))
                if b is not None:
                    conv.bias.copy_(tensor(b))
            mods.append(conv)
        elif isinstance(layer, Act):
            mods.append(activation_module(layer.activation.name, layer.activation.slope))
        elif isinstance(layer, ChannelNorm) and norm_writer is not None:
            mods.append(norm_writer(layer, params[name]))
        else:
            raise ValueError(f"write_cnn: layer {type(layer).__name__} has no torch counterpart here")
    return mods


class ContextFree(nn.Sequential):
    """``nn.Sequential`` that accepts and ignores a ``context`` argument (nflows calls
    ``transform_net(inputs, context)``)."""

    def forward(self, inputs, context=None):  # noqa: D401 - torch signature
        return super().forward(inputs)
