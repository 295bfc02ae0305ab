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
from .conv import conv_cm, conv_cm_backward
from .mlp import Activation


def _channel_sum(a: Array) -> Array:
    """``Σ`` over everything but the channels of an NCHW ``(N, C, H, W)`` array."""
    return a.sum(axis=(0, 2, 3))


def _per_channel(v: Array) -> Array:
    """``(C,) → (1, C, 1, 1)``: broadcasts over an NCHW array."""
    return v.reshape(1, -1, 1, 1)


def _channel_sum_cm(a: Array) -> Array:
    """``Σ`` over everything but the channels of a channel-major ``(C, N, H, W)`` array."""
    return a.sum(axis=(1, 2, 3))


def _per_channel_cm(v: Array) -> Array:
    """``(C,) → (C, 1, 1, 1)``: broadcasts over a channel-major array."""
    return v.reshape(-1, 1, 1, 1)


def to_cm(x: Array) -> Array:
    """NCHW → channel-major ``(C, N, H, W)`` (a view)."""
    return x.transpose(1, 0, 2, 3)


def from_cm(y: Array) -> Array:
    """Channel-major → a C-ordered NCHW array."""
    return namespace(y).ascontiguousarray(y.transpose(1, 0, 2, 3))


def _times(a: Array, b: Array, owned: bool) -> Array:
    """``a ⊙ b``, written into ``a`` when the caller owns it and the dtypes agree (same values)."""
    if owned and a.dtype == b.dtype:
        a *= b
        return a
    return a * b


def _check_widths(name: str, **widths) -> None:
    bad = {k: v for k, v in widths.items() if not (isinstance(v, (int, np.integer)) and v >= 1)}
    if bad:
        raise ValueError(f"{name}: widths must be positive integers, got {bad}")


def _check_kernel(name: str, kernel: int) -> None:
    if not (isinstance(kernel, (int, np.integer)) and kernel >= 1 and kernel % 2 == 1):
        raise ValueError(f"{name}: kernel size must be a positive odd integer, got {kernel!r}")


class _Layer:
    """The NCHW protocol (``apply``, ``backward``, ``apply_no_cache``) on top of a layer's
    channel-major methods:

    * ``apply_cm(params, x, owned) -> (y, cache)``, ``x, y: (C, N, H, W)``; ``owned`` says the
      caller owns ``x`` (a fresh array nothing else reads), so the layer may overwrite it;
    * ``backward_cm(params, cache, g, owned) -> (gx, gparams)``, ``gx`` always fresh or ``g``
      itself when owned;
    * ``apply_cm_no_cache(params, x, owned) -> y`` (inference), the same values as ``apply_cm``.

    :attr:`fresh_output`: ``apply_cm``'s output is a new array its cache does not hold, which the
    next layer may therefore overwrite.
    """

    fresh_output = False

    def apply(self, params, x: Array):
        y, cache = self.apply_cm(params, to_cm(x), False)
        return from_cm(y), cache

    def backward(self, params, cache, gy: Array):
        gx, gparams = self.backward_cm(params, cache, to_cm(gy), False)
        return from_cm(gx), gparams

    def apply_no_cache(self, params, x: Array) -> Array:
        return from_cm(self.apply_cm_no_cache(params, to_cm(x), False))

    def apply_cm_no_cache(self, params, x: Array, owned: bool) -> Array:
        return self.apply_cm(params, x, owned)[0]


class Conv2d(_Layer):
    """``y = conv(x, w) + b`` ("same" padding). ``init``: ``"glow"`` = ``N(0, 0.05²)`` weights,
    ``"torch"`` = ``U(±1/√fan_in)`` weights and bias, ``"zeros"`` = all zero."""

    fresh_output = True  # the cache holds the input, not the output

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

    def apply_cm(self, params: dict, x: Array, owned: bool = False):
        return conv_cm(x, params["w"], params.get("b"))

    def backward_cm(self, params: dict, cache, g: Array, owned: bool = False):
        gx, gw, gb = conv_cm_backward(cache, g)
        return gx, ({"w": gw, "b": gb} if self.bias else {"w": gw})


class ZeroConv2d(_Layer):
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

    def apply_cm(self, params: dict, x: Array, owned: bool = False):
        xp = namespace(x)
        a, conv_cache = conv_cm(x, params["w"], params["b"])
        scale = _per_channel_cm(xp.exp(self.logscale_factor * params["logs"]))
        y = _times(a, scale, True)  # a is the convolution's fresh output
        return y, (conv_cache, scale, y)

    def backward_cm(self, params: dict, cache, g: Array, owned: bool = False):
        conv_cache, scale, y = cache
        glogs = self.logscale_factor * _channel_sum_cm(g * y)
        gx, gw, gb = conv_cm_backward(conv_cache, _times(g, scale, owned))
        return gx, {"w": gw, "b": gb, "logs": glogs}


class ChannelNorm(_Layer):
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
        centred = x - mean.reshape(1, -1, 1, 1)
        std = xp.sqrt((centred * centred).mean(axis=(0, 2, 3)))
        return {"b": -mean, "logs": -xp.log(std + self.eps)}

    def _normalise(self, params: dict, x: Array, owned: bool):
        """``((x + b) ⊙ e, e)`` with ``e = exp(ℓ)`` per channel, in ``x``'s memory when owned."""
        scale = _per_channel_cm(namespace(x).exp(params["logs"]))
        b = _per_channel_cm(params["b"])
        if owned and x.dtype == b.dtype:
            x += b
            u = x
        else:
            u = x + b
        return _times(u, scale, True), scale

    def apply_cm(self, params: dict, x: Array, owned: bool = False):
        y, scale = self._normalise(params, x, owned)
        return y, (scale, y)

    def apply_cm_no_cache(self, params: dict, x: Array, owned: bool = False) -> Array:
        return self._normalise(params, x, owned)[0]

    def backward_cm(self, params: dict, cache, g: Array, owned: bool = False):
        scale, y = cache
        glogs = _channel_sum_cm(g * y)  # before g is scaled in place
        gx = _times(g, scale, owned)
        return gx, {"b": _channel_sum_cm(gx), "logs": glogs}

    # ---------------------------------------------------------------- fused with a following ReLU
    def apply_relu_cm(self, params: dict, act: "Act", x: Array, owned: bool = False):
        """``r = ReLU((x + b) ⊙ e)`` as one step that keeps only ``(e, r)``: the norm's output is
        needed by its VJP only through ``Σ gy ⊙ y`` with ``gy = gr ⊙ [y > 0]``, which equals
        ``Σ gy ⊙ r`` term by term (``r = y`` wherever ``gy`` can be non-zero)."""
        y, scale = self._normalise(params, x, owned)
        r = act.activation.apply(y, inplace=True)  # y is this step's own array
        return r, (scale, r)

    def backward_relu_cm(self, params: dict, act: "Act", cache, g: Array, owned: bool = False):
        scale, r = cache
        gy = act.activation.backward(g, None, r, inplace=owned)
        return self.backward_cm(params, (scale, r), gy, True)


class Act(_Layer):
    """Elementwise activation as a parameter-free network layer (``init`` returns ``None``);
    comparisons on the real part keep it complex-step safe off the kink."""

    def __init__(self, name: str = "relu", slope: float = 0.01):
        self.activation = Activation(name, slope)

    data_dependent = False

    def param_spec(self):
        return None

    def init(self, rng, x):
        return None

    def apply_cm(self, params, x: Array, owned: bool = False):
        act = self.activation
        if act.needs_input:
            y = act.apply(x)
            return y, (x, y)
        y = act.apply(x, inplace=owned)
        return y, (None, y)

    def apply_cm_no_cache(self, params, x: Array, owned: bool = False) -> Array:
        return self.activation.apply(x, inplace=owned)

    def backward_cm(self, params, cache, g: Array, owned: bool = False):
        x, y = cache
        return self.activation.backward(g, x, y, inplace=owned), None


def _fuses(layer, following) -> bool:
    """A :class:`ChannelNorm` followed by an :class:`Act` ReLU runs as one step."""
    return (isinstance(layer, ChannelNorm) and isinstance(following, Act)
            and following.activation.name == "relu")


def _cm_step(layer, params, x, owned):
    """``layer.apply_cm``, or the NCHW ``apply`` of a layer that only has the protocol."""
    if hasattr(layer, "apply_cm"):
        return layer.apply_cm(params, x, owned)
    y, cache = layer.apply(params, from_cm(x))
    return to_cm(y), cache


class _Sequential(_Layer):
    """Named layers applied in order; layers whose ``init`` returns ``None`` hold no parameters.

    Runs channel-major from its first layer to its last: a :class:`ChannelNorm` followed by a ReLU
    is one step (:meth:`ChannelNorm.apply_relu_cm`), and a layer whose input is the previous
    layer's fresh output (a convolution's) works in that array's memory.
    """

    def __init__(self, layers):
        self.layers = list(layers)

    @property
    def data_dependent(self) -> bool:
        return any(layer.data_dependent for _, layer in self.layers)

    @property
    def fresh_output(self) -> bool:
        return bool(self.layers) and getattr(self.layers[-1][1], "fresh_output", False)

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

    def _steps(self):
        """``(i, fused)`` for each step: layer ``i`` alone, or fused with layer ``i + 1``."""
        i, n = 0, len(self.layers)
        while i < n:
            fused = i + 1 < n and _fuses(self.layers[i][1], self.layers[i + 1][1])
            yield i, fused
            i += 2 if fused else 1

    def apply_cm(self, params, x, owned: bool = False):
        caches = []
        for i, fused in self._steps():
            name, layer = self.layers[i]
            if fused:
                x, cache = layer.apply_relu_cm(params.get(name), self.layers[i + 1][1], x, owned)
                owned = False  # the fused step caches its output
            else:
                x, cache = _cm_step(layer, params.get(name), x, owned)
                owned = getattr(layer, "fresh_output", False)
            caches.append(cache)
        return x, caches

    def apply_cm_no_cache(self, params, x, owned: bool = False):
        for i, fused in self._steps():
            name, layer = self.layers[i]
            if fused:
                x = layer.apply_relu_cm(params.get(name), self.layers[i + 1][1], x, owned)[0]
            elif hasattr(layer, "apply_cm_no_cache"):
                x = layer.apply_cm_no_cache(params.get(name), x, owned)
            else:  # a layer with only the NCHW protocol might return (a view of) its input
                x = _cm_step(layer, params.get(name), x, owned)[0]
                owned = False
                continue
            owned = True  # nothing is cached: each output is the next layer's to overwrite
        return x

    def backward_cm(self, params, caches, g, owned: bool = False):
        gparams = {}
        steps = list(self._steps())
        for (i, fused), cache in zip(reversed(steps), reversed(caches)):
            name, layer = self.layers[i]
            if fused:
                g, gp = layer.backward_relu_cm(params.get(name), self.layers[i + 1][1], cache, g, owned)
            elif hasattr(layer, "backward_cm"):
                g, gp = layer.backward_cm(params.get(name), cache, g, owned)
            else:
                g, gp = layer.backward(params.get(name), cache, from_cm(g))
                g = to_cm(g)
            owned = True  # every step returns a fresh cotangent (or the owned one it was given)
            if gp is not None:
                gparams[name] = gp
        return g, gparams


class _Residual(_Sequential):
    """``y = x + body(x)``."""

    fresh_output = True

    def apply_cm(self, params, x, owned: bool = False):
        y, caches = super().apply_cm(params, x, False)  # x is read again below: never overwritten
        return x + y, caches

    def apply_cm_no_cache(self, params, x, owned: bool = False):
        return x + super().apply_cm_no_cache(params, x, False)

    def backward_cm(self, params, caches, g, owned: bool = False):
        gx, gparams = super().backward_cm(params, caches, g, False)
        return g + gx, gparams


class _Network(_Sequential):
    """Shared plumbing: the public protocol plus a channel check naming the network."""

    def _check_input(self, x: Array) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__}: input must be (N, {self.in_features}, H, W), got {tuple(x.shape)}"
            )

    def apply(self, params: dict, x: Array):
        self._check_input(x)
        return super().apply(params, x)

    def apply_no_cache(self, params: dict, x: Array) -> Array:
        self._check_input(x)
        return super().apply_no_cache(params, x)

    def init(self, rng: np.random.Generator, x: Array) -> dict:
        self._check_input(x)
        if self.data_dependent and x.size == 0:
            raise ValueError(f"{type(self).__name__}: data-dependent init (its ChannelNorm layers) needs a "
                             f"non-empty example batch, got shape {tuple(x.shape)}")
        return super().init(rng, x)


def glow_tail(width: int, out_channels: int, kernel: int) -> list:
    """Glow's coupling network after its first convolution: norm → ReLU → conv1×1 → norm → ReLU →
    ZeroConv2d (shared by :class:`GlowCNN` and the context network that adds ``c`` after conv1)."""
    return [
        ("norm1", ChannelNorm(width)),
        ("relu1", Act("relu")),
        ("conv2", Conv2d(width, width, 1, bias=False, init="glow")),
        ("norm2", ChannelNorm(width)),
        ("relu2", Act("relu")),
        ("out", ZeroConv2d(width, out_channels, kernel)),
    ]


class GlowCNN(_Network):
    """Glow's coupling network: conv3×3 → norm → ReLU → conv1×1 → norm → ReLU → ZeroConv2d 3×3.

    Parameters ``{"conv1": {w}, "norm1": {b, logs}, "conv2": {w}, "norm2": {b, logs},
    "out": {w, b, logs}}``; ``width`` is Glow's ``hidden_channels`` (512 in the paper).
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 512, *, kernel: int = 3):
        _check_widths("GlowCNN", in_channels=in_channels, out_channels=out_channels, width=width)
        _check_kernel("GlowCNN", kernel)
        self.in_features, self.out_features, self.width = int(in_channels), int(out_channels), int(width)
        super().__init__([("conv1", Conv2d(in_channels, width, kernel, bias=False, init="glow")),
                          *glow_tail(width, out_channels, kernel)])


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
