"""Convolutional conditioner networks for image couplings (NCHW), with hand-written backward passes.

Same protocol as :class:`rawflow.nets.mlp.MLP`, with ``in_features`` / ``out_features`` counting channels::

    params = net.init(rng, x)               # x: (N, in_features, H, W); data-dependent init from it
    y, cache = net.apply(params, x)         # y: (N, out_features, H, W)
    gx, gparams = net.backward(params, cache, gy)

Building blocks (each keeps the protocol; convolutions from :mod:`rawflow.nets.conv`, "same" padding):

* :class:`Conv2d`       ``y = conv(x, w) + b``.
* :class:`ZeroConv2d`   Glow's ``Conv2dZeros``: ``y = (conv(x, w) + b) ⊙ exp(f·ℓ)`` per output channel,
  ``f = logscale_factor = 3``; ``w, b, ℓ`` all start at zero, so ``y ≡ 0`` at init.
  VJP: ``ga = gy ⊙ exp(f·ℓ)`` into the conv, ``gℓ = f·Σ_{n,h,w} gy ⊙ y``.
* :class:`ChannelNorm`  the conditioner's normalisation: ``y = (x + b) ⊙ exp(ℓ)`` per channel, with
  Glow's data-dependent init ``b = −mean(x)``, ``ℓ = −log(std(x) + 1e-6)`` over (N, H, W) of the
  example batch (TensorFlow Glow stores ``ℓ/3`` and multiplies by 3; the PyTorch ports, like this
  code, store ``ℓ``). A plain per-channel affine map afterwards (not a bijector: no log-det is tracked).
  VJP: ``gx = gy ⊙ exp(ℓ)``, ``gb = Σ gx``, ``gℓ = Σ gy ⊙ y``.

Networks (last layer zero-initialised, so a fresh coupling is the identity map):

* :class:`GlowCNN` (Glow's ``f``): conv3×3 → norm → ReLU → conv1×1 → norm → ReLU → ZeroConv2d 3×3.
  The first two convolutions have no bias (the norm that follows carries it), weights ``N(0, 0.05²)``.
* :class:`ResNetCNN` (RealNVP's ``s, t`` network): conv3×3 in →
  ``blocks`` × [x + conv3×3(ReLU(norm(conv3×3(ReLU(norm(x))))))] → norm → ReLU → conv3×3 out
  (zero weights and bias). RealNVP uses batch normalisation and weight normalisation; here the
  normalisation is :class:`ChannelNorm` (per-sample after init, so a batch's outputs equal its samples'
  outputs stacked) and there is no weight normalisation. Weights start from PyTorch's default
  ``U(±1/√fan_in)``.

Padding is plain zero padding (as in the PyTorch ports of Glow); the original TensorFlow Glow adds an
extra "edge" input channel marking padded pixels, which is not reproduced here.
"""

from __future__ import annotations

import numpy as np

from .._array import Array, namespace
from .conv import conv2d, conv2d_backward
from .mlp import Activation


def _channel_sum(a: Array) -> Array:
    return a.sum(axis=(0, 2, 3))


def _per_channel(v: Array) -> Array:
    return v.reshape(1, -1, 1, 1)


def _check_widths(name: str, **widths) -> None:
    bad = {k: v for k, v in widths.items() if not (isinstance(v, (int, np.integer)) and v >= 1)}
    if bad:
        raise ValueError(f"{name}: widths must be positive integers, got {bad}")


def _check_kernel(name: str, kernel: int) -> None:
    if not (isinstance(kernel, (int, np.integer)) and kernel >= 1 and kernel % 2 == 1):
        raise ValueError(f"{name}: kernel size must be a positive odd integer, got {kernel!r}")


class Conv2d:
    """``y = conv(x, w) + b`` ("same" padding). ``init``: ``"glow"`` = ``N(0, 0.05²)`` weights,
    ``"torch"`` = ``U(±1/√fan_in)`` weights and bias, ``"zeros"`` = all zero."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, *, bias: bool = True,
                 init: str = "torch"):
        _check_widths("Conv2d", in_channels=in_channels, out_channels=out_channels)
        _check_kernel("Conv2d", kernel)
        if init not in ("glow", "torch", "zeros"):
            raise ValueError(f"Conv2d: unknown init {init!r}; use 'glow', 'torch' or 'zeros'")
        self.in_features, self.out_features = int(in_channels), int(out_channels)
        self.kernel, self.bias, self.init_kind = int(kernel), bool(bias), init

    data_dependent = False

    def param_spec(self) -> dict:
        spec = {"w": (self.out_features, self.in_features, self.kernel, self.kernel)}
        if self.bias:
            spec["b"] = (self.out_features,)
        return spec

    def init(self, rng: np.random.Generator, x: Array) -> dict:
        xp = namespace(x)
        shape = (self.out_features, self.in_features, self.kernel, self.kernel)
        bound = 1.0 / np.sqrt(self.in_features * self.kernel**2)
        if self.init_kind == "glow":
            w = rng.normal(scale=0.05, size=shape)
        elif self.init_kind == "torch":
            w = rng.uniform(-bound, bound, size=shape)
        else:
            w = np.zeros(shape)
        params = {"w": xp.asarray(w, dtype=x.dtype)}
        if self.bias:
            b = rng.uniform(-bound, bound, size=self.out_features) if self.init_kind == "torch" else np.zeros(
                self.out_features
            )
            params["b"] = xp.asarray(b, dtype=x.dtype)
        return params

    def apply(self, params: dict, x: Array):
        return conv2d(x, params["w"], params.get("b"))

    def backward(self, params: dict, cache, gy: Array):
        gx, gw, gb = conv2d_backward(cache, gy)
        return gx, ({"w": gw, "b": gb} if self.bias else {"w": gw})


class ZeroConv2d:
    """Glow's ``Conv2dZeros``: ``y = (conv(x, w) + b) ⊙ exp(f·ℓ)``, everything zero at init."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, *, logscale_factor: float = 3.0):
        _check_widths("ZeroConv2d", in_channels=in_channels, out_channels=out_channels)
        _check_kernel("ZeroConv2d", kernel)
        self.in_features, self.out_features = int(in_channels), int(out_channels)
        self.kernel, self.logscale_factor = int(kernel), float(logscale_factor)

    data_dependent = False

    def param_spec(self) -> dict:
        c_out = self.out_features
        return {"w": (c_out, self.in_features, self.kernel, self.kernel), "b": (c_out,), "logs": (c_out,)}

    def init(self, rng: np.random.Generator, x: Array) -> dict:
        xp = namespace(x)
        c_in, c_out, k = self.in_features, self.out_features, self.kernel
        return {
            "w": xp.zeros((c_out, c_in, k, k), dtype=x.dtype),
            "b": xp.zeros(c_out, dtype=x.dtype),
            "logs": xp.zeros(c_out, dtype=x.dtype),
        }

    def apply(self, params: dict, x: Array):
        xp = namespace(x)
        a, conv_cache = conv2d(x, params["w"], params["b"])
        scale = _per_channel(xp.exp(self.logscale_factor * params["logs"]))
        y = a * scale
        return y, (conv_cache, scale, y)

    def backward(self, params: dict, cache, gy: Array):
        conv_cache, scale, y = cache
        glogs = self.logscale_factor * _channel_sum(gy * y)
        gx, gw, gb = conv2d_backward(conv_cache, gy * scale)
        return gx, {"w": gw, "b": gb, "logs": glogs}


class ChannelNorm:
    """Per-channel ``y = (x + b) ⊙ exp(ℓ)`` with Glow's data-dependent ActNorm init (not a bijector)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        _check_widths("ChannelNorm", channels=channels)
        self.in_features = self.out_features = int(channels)
        self.eps = float(eps)

    #: ``init`` measures the example batch's per-channel mean and spread.
    data_dependent = True

    def param_spec(self) -> dict:
        return {"b": (self.in_features,), "logs": (self.in_features,)}

    def init(self, rng: np.random.Generator, x: Array) -> dict:
        if x.shape[0] * x.shape[2] * x.shape[3] == 0:
            raise ValueError(f"ChannelNorm: data-dependent init needs a non-empty example batch, got shape "
                             f"{tuple(x.shape)}")
        xp = namespace(x)
        mean = x.mean(axis=(0, 2, 3))
        centred = x - _per_channel(mean)
        std = xp.sqrt((centred * centred).mean(axis=(0, 2, 3)))
        return {"b": -mean, "logs": -xp.log(std + self.eps)}

    def apply(self, params: dict, x: Array):
        xp = namespace(x)
        scale = _per_channel(xp.exp(params["logs"]))
        y = (x + _per_channel(params["b"])) * scale
        return y, (scale, y)

    def backward(self, params: dict, cache, gy: Array):
        scale, y = cache
        gx = gy * scale
        return gx, {"b": _channel_sum(gx), "logs": _channel_sum(gy * y)}


class Act:
    """Elementwise activation as a parameter-free network layer (``init`` returns ``None``);
    comparisons on the real part keep it complex-step safe off the kink."""

    def __init__(self, name: str = "relu", slope: float = 0.01):
        self.activation = Activation(name, slope)

    data_dependent = False

    def param_spec(self):
        return None

    def init(self, rng, x):
        return None

    def apply(self, params, x):
        y = self.activation.apply(x)
        return y, (x, y)

    def backward(self, params, cache, gy):
        x, y = cache
        return gy * self.activation.grad(x, y), None


class _Sequential:
    """Named layers applied in order; layers whose ``init`` returns ``None`` hold no parameters."""

    def __init__(self, layers):
        self.layers = list(layers)

    @property
    def data_dependent(self) -> bool:
        return any(layer.data_dependent for _, layer in self.layers)

    def param_spec(self) -> dict:
        """Parameter shapes by layer name (parameter-free layers have no entry)."""
        specs = ((name, layer.param_spec()) for name, layer in self.layers)
        return {name: spec for name, spec in specs if spec is not None}

    def init(self, rng, x):
        params = {}
        for name, layer in self.layers:
            p = layer.init(rng, x)  # each layer initialises from the batch as it arrives at its depth
            if p is not None:
                params[name] = p
            x = layer.apply(p, x)[0]
        return params

    def apply(self, params, x):
        caches = []
        for name, layer in self.layers:
            x, cache = layer.apply(params.get(name), x)
            caches.append(cache)
        return x, caches

    def backward(self, params, caches, gy):
        gparams = {}
        for (name, layer), cache in zip(reversed(self.layers), reversed(caches)):
            gy, gp = layer.backward(params.get(name), cache, gy)
            if gp is not None:
                gparams[name] = gp
        return gy, gparams


class _Residual(_Sequential):
    """``y = x + body(x)``."""

    def apply(self, params, x):
        y, caches = super().apply(params, x)
        return x + y, caches

    def backward(self, params, caches, gy):
        gx, gparams = super().backward(params, caches, gy)
        return gy + gx, gparams


class _Network(_Sequential):
    """Shared plumbing: the public protocol plus a channel check naming the network."""

    def apply(self, params: dict, x: Array):
        if x.ndim != 4 or x.shape[1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__}: input must be (N, {self.in_features}, H, W), got {tuple(x.shape)}"
            )
        return super().apply(params, x)

    def init(self, rng: np.random.Generator, x: Array) -> dict:
        if x.ndim != 4 or x.shape[1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__}: input must be (N, {self.in_features}, H, W), got {tuple(x.shape)}"
            )
        if self.data_dependent and x.size == 0:
            raise ValueError(f"{type(self).__name__}: data-dependent init (its ChannelNorm layers) needs a "
                             f"non-empty example batch, got shape {tuple(x.shape)}")
        return super().init(rng, x)


class GlowCNN(_Network):
    """Glow's coupling network: conv3×3 → norm → ReLU → conv1×1 → norm → ReLU → ZeroConv2d 3×3.

    Parameters ``{"conv1": {w}, "norm1": {b, logs}, "conv2": {w}, "norm2": {b, logs},
    "out": {w, b, logs}}``; ``width`` is Glow's ``hidden_channels`` (512 in the paper).
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 512, *, kernel: int = 3):
        _check_widths("GlowCNN", in_channels=in_channels, out_channels=out_channels, width=width)
        _check_kernel("GlowCNN", kernel)
        self.in_features, self.out_features, self.width = int(in_channels), int(out_channels), int(width)
        super().__init__([
            ("conv1", Conv2d(in_channels, width, kernel, bias=False, init="glow")),
            ("norm1", ChannelNorm(width)),
            ("relu1", Act("relu")),
            ("conv2", Conv2d(width, width, 1, bias=False, init="glow")),
            ("norm2", ChannelNorm(width)),
            ("relu2", Act("relu")),
            ("out", ZeroConv2d(width, out_channels, kernel)),
        ])


class ResNetCNN(_Network):
    """RealNVP's residual coupling network (normalisation: :class:`ChannelNorm`).

    Parameters ``{"in": {w, b}, "blocks": {"0": {norm1, conv1, norm2, conv2}, ...}, "norm": {b, logs},
    "out": {w, b}}``.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 64, blocks: int = 2, *,
                 kernel: int = 3):
        _check_widths("ResNetCNN", in_channels=in_channels, out_channels=out_channels, width=width)
        _check_kernel("ResNetCNN", kernel)
        if not (isinstance(blocks, (int, np.integer)) and blocks >= 0):
            raise ValueError(f"ResNetCNN: blocks must be a non-negative integer, got {blocks!r}")
        self.in_features, self.out_features, self.width = int(in_channels), int(out_channels), int(width)
        residual = _Residual([
            ("norm1", ChannelNorm(width)),
            ("relu1", Act("relu")),
            ("conv1", Conv2d(width, width, kernel)),
            ("norm2", ChannelNorm(width)),
            ("relu2", Act("relu")),
            ("conv2", Conv2d(width, width, kernel)),
        ])
        body = _Sequential([(str(i), residual) for i in range(blocks)])
        layers = [("in", Conv2d(in_channels, width, kernel))]
        if blocks:
            layers.append(("blocks", body))
        layers += [
            ("norm", ChannelNorm(width)),
            ("relu", Act("relu")),
            ("out", Conv2d(width, out_channels, kernel, init="zeros")),
        ]
        super().__init__(layers)
