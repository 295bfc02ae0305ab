"""Conditioner networks of the peers, rebuilt from rawflow pieces with hand-written backward passes.

Same protocol as :class:`rawflow.nets.mlp.MLP` (``init``, ``apply``, ``backward``, ``in_features``,
``out_features``), so any of them can be handed to a rawflow coupling. Linear layers use PyTorch's
layout ``y = x @ w.T + b`` with ``w: (out, in)``; convolutions are :class:`rawflow.nets.cnn.Conv2d`.

* :class:`Parallel` — several networks reading the same input, outputs concatenated along axis 1
  (FrEIA's RNVP block and normflows' ``MaskedAffineFlow`` use separate ``s`` and ``t`` networks;
  a rawflow coupling wants one conditioner whose output is ``[h_s, t]``).
  VJP: ``gx = Σ_k net_kᵀ(gy_k)`` with ``gy_k`` the k-th slice of ``gy``.
* :class:`ResidualMLP` — nflows' ``ResidualNet`` without context, batch norm or dropout::

      h = x W_inᵀ + b_in
      h ← h + (φ(φ(h) W_1ᵀ + b_1) W_2ᵀ + b_2)          per block
      y = h W_outᵀ + b_out                            (no activation before the output layer)

  VJP per block (``a = φ(h)``, ``p = a W_1ᵀ + b_1``, ``q = φ(p)``)::

      gq = gh W_2 ;  gp = gq ⊙ φ'(p) ;  gh ← gh + (gp W_1) ⊙ φ'(h)
      gW_2 = ghᵀ q,  gb_2 = Σ gh,  gW_1 = gpᵀ a,  gb_1 = Σ gp

* :class:`SequentialCNN` — a plain stack of named layers for images (normflows' ``ConvNet2d``, FrEIA
  convolutional subnets): :class:`rawflow.nets.cnn.Conv2d`, :class:`rawflow.nets.cnn.ChannelNorm` and
  :class:`Act` (elementwise ``relu`` / ``leaky_relu`` / ``tanh``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .._array import Array, namespace
from ..nets.cnn import Act  # noqa: F401 - re-exported: the interop nets are built from it
from ..nets.cnn import _Sequential
from ..nets.mlp import Activation, conditioner_spec


class Parallel:
    """``y = [net_0(x), net_1(x), ...]`` concatenated along axis 1; ``params = {"0": ..., "1": ...}``."""

    def __init__(self, nets: Sequence):
        nets = list(nets)
        if not nets:
            raise ValueError("Parallel: needs at least one network")
        ins = {n.in_features for n in nets}
        if len(ins) != 1:
            raise ValueError(f"Parallel: networks must share their input width, got {sorted(ins)}")
        self.nets = nets
        self.in_features = ins.pop()
        self.sizes = [int(n.out_features) for n in nets]
        self.out_features = sum(self.sizes)

    @property
    def data_dependent(self) -> bool:
        return any(getattr(net, "data_dependent", False) for net in self.nets)

    def param_spec(self) -> dict:
        return {str(i): conditioner_spec(net) for i, net in enumerate(self.nets)}

    def init(self, rng, x):
        return {str(i): net.init(rng, x) for i, net in enumerate(self.nets)}

    def apply(self, params, x):
        outs, caches = [], []
        for i, net in enumerate(self.nets):
            y, cache = net.apply(params[str(i)], x)
            outs.append(y)
            caches.append(cache)
        return namespace(x).concatenate(outs, axis=1), caches

    def backward(self, params, caches, gy):
        gx, gparams, start = None, {}, 0
        for i, (net, size) in enumerate(zip(self.nets, self.sizes)):
            g, gparams[str(i)] = net.backward(params[str(i)], caches[i], gy[:, start : start + size])
            gx = g if gx is None else gx + g
            start += size
        return gx, gparams


def _linear(p, h):
    return h @ p["w"].T + p["b"]


def _torch_default(rng, fan_in, fan_out, xp, dtype, zero=False):
    if zero:
        w, b = np.zeros((fan_out, fan_in)), np.zeros(fan_out)
    else:
        bound = 1.0 / np.sqrt(fan_in)
        w = rng.uniform(-bound, bound, size=(fan_out, fan_in))
        b = rng.uniform(-bound, bound, size=fan_out)
    return {"w": xp.asarray(w, dtype=dtype), "b": xp.asarray(b, dtype=dtype)}


class ResidualMLP:
    """nflows' ``ResidualNet`` (no context, batch norm or dropout); see the module doc.

    ``params = {"in": {w, b}, "blocks": {"0": {"0": {w, b}, "1": {w, b}}, ...}, "out": {w, b}}``
    (``"blocks"`` absent when ``blocks = 0``). Layers start from PyTorch's default init, the output
    layer from zeros.
    """

    def __init__(self, in_features: int, out_features: int, hidden: int = 64, blocks: int = 2,
                 activation: str = "relu", slope: float = 0.01):
        widths = dict(in_features=in_features, out_features=out_features, hidden=hidden)
        if any(not (isinstance(v, (int, np.integer)) and v >= 1) for v in widths.values()):
            raise ValueError(f"ResidualMLP: widths must be positive integers, got {widths}")
        if not (isinstance(blocks, (int, np.integer)) and blocks >= 0):
            raise ValueError(f"ResidualMLP: blocks must be a non-negative integer, got {blocks!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.hidden, self.blocks = int(hidden), int(blocks)
        self.activation = Activation(activation, slope)

    data_dependent = False

    def param_spec(self) -> dict:
        hd = self.hidden
        spec = {"in": {"w": (hd, self.in_features), "b": (hd,)}}
        if self.blocks:
            spec["blocks"] = {str(k): {str(j): {"w": (hd, hd), "b": (hd,)} for j in range(2)}
                              for k in range(self.blocks)}
        spec["out"] = {"w": (self.out_features, hd), "b": (self.out_features,)}
        return spec

    def init(self, rng, x):
        xp, dt, hd = namespace(x), x.dtype, self.hidden
        params = {"in": _torch_default(rng, self.in_features, hd, xp, dt)}
        if self.blocks:
            params["blocks"] = {
                str(k): {str(j): _torch_default(rng, hd, hd, xp, dt) for j in range(2)} for k in range(self.blocks)
            }
        params["out"] = _torch_default(rng, hd, self.out_features, xp, dt, zero=True)
        return params

    def apply(self, params, x):
        act = self.activation
        h = _linear(params["in"], x)
        caches = []
        for k in range(self.blocks):
            p = params["blocks"][str(k)]
            a = act.apply(h)
            pre = _linear(p["0"], a)
            q = act.apply(pre)
            caches.append((h, a, pre, q))
            h = h + _linear(p["1"], q)
        return _linear(params["out"], h), (x, h, caches)

    def backward(self, params, cache, gy):
        x, h_last, caches = cache
        act = self.activation
        w_out = params["out"]["w"]
        gparams = {"out": {"w": gy.T @ h_last, "b": gy.sum(axis=0)}}
        gh = gy @ w_out
        gblocks = {}
        for k in reversed(range(self.blocks)):
            p = params["blocks"][str(k)]
            h, a, pre, q = caches[k]
            gq = gh @ p["1"]["w"]
            gpre = gq * act.grad(pre, q)
            ga = gpre @ p["0"]["w"]
            gblocks[str(k)] = {
                "0": {"w": gpre.T @ a, "b": gpre.sum(axis=0)},
                "1": {"w": gh.T @ q, "b": gh.sum(axis=0)},
            }
            gh = gh + ga * act.grad(h, a)
        gparams["in"] = {"w": gh.T @ x, "b": gh.sum(axis=0)}
        if self.blocks:
            gparams["blocks"] = gblocks
        return gh @ params["in"]["w"], gparams


class SequentialCNN(_Sequential):
    """Named image layers applied in order (``[(name, layer), ...]``); layers whose ``init`` returns
    ``None`` hold no parameters. ``in_features``/``out_features`` are the first/last layer's channels.
    :class:`rawflow.nets.cnn`'s sequential container with an input check."""

    def __init__(self, layers):
        super().__init__(layers)
        widths = [layer for _, layer in self.layers if hasattr(layer, "in_features")]
        if not widths:
            raise ValueError("SequentialCNN: needs at least one layer with channels (a convolution)")
        self.in_features = widths[0].in_features
        self.out_features = widths[-1].out_features

    def _check(self, x: Array):
        if x.ndim != 4 or x.shape[1] != self.in_features:
            raise ValueError(f"SequentialCNN: input must be (N, {self.in_features}, H, W), got {tuple(x.shape)}")

    def init(self, rng, x):
        self._check(x)
        return super().init(rng, x)

    def apply(self, params, x):
        self._check(x)
        return super().apply(params, x)
