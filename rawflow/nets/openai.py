"""openai/glow's conditioner building blocks (its ``tfops.py``), NCHW, with hand-written VJPs.

The reference code (TensorFlow, NHWC) differs from :mod:`rawflow.nets.cnn` in two definitions,
reproduced here; everything else (3×3 → 1×1 → zero 3×3, ReLU, ``N(0, 0.05²)`` weights, no bias
before a norm) is the same network.

* **Edge padding** (``add_edge_padding`` + ``conv2d(..., pad="SAME", edge_bias=True)``): before a
  k×k convolution (k > 1) the input is zero-padded by ``p = k // 2`` and one channel is appended
  that is 1 on the padded border and 0 on the image; then a VALID convolution. The weight has
  ``C_in + 1`` input channels, the last one the edge channel's. Here, with ``B`` that border
  indicator of the padded frame and ``w_E = w[:, C_in]``::

      y[n, o, i, j] = conv_same(x, w[:, :C_in])[n, o, i, j] + E[o, i, j] (+ b[o])
      E[o, i, j]    = Σ_{a,b} w_E[o, a, b] · B[i + a, j + b]          (the same for every sample)

  which is the VALID convolution of the padded frame term by term (the zero-padded ``x`` part is
  :func:`~rawflow.nets.conv.conv2d` itself). ``E`` is one GEMM ``w_E (C_out, k²) @ M (k², H·W)``
  with ``M`` the 0/1 taps of ``B``; its VJP is ``g w_E = (Σ_n gy) Mᵀ``. A 1×1 convolution gets no
  edge channel (``add_edge_padding`` returns ``x`` unchanged for 1×1 filters).
* **ActNorm with a log-scale factor** (``actnorm`` inside ``conv2d``): ``y = (x + b) ⊙ exp(3·logs)``
  per channel; the stored parameter is ``logs`` (the reference's ``logs`` variable), the applied
  log-scale ``3·logs``. Data-dependent init, as ``actnorm_center`` then ``actnorm_scale`` compute
  it: ``b = −mean(x)``, ``logs = log(1 / (√mean((x + b)²) + 1e-6)) / 3`` over (N, H, W) — the
  1e-6 is added to the standard deviation, outside the square root. The factor changes nothing
  in the map at a given point, but it multiplies ``logs``'s gradient by 3, so an optimiser moves
  the log-scale 3× (Adam: 3× per step in ``3·logs``) as fast as with ``logs`` stored directly.

Networks: :class:`OpenAIGlowCNN` is the reference's ``f``: edge 3×3 conv (no bias) → norm → ReLU →
1×1 conv (no bias) → norm → ReLU → :class:`EdgeZeroConv2d` (``Conv2dZeros``: edge padding, bias,
``exp(3·logs)``). Weights in rawflow's layout ``(C_out, C_in(+1), k, k)``; the reference stores
``(k, k, C_in(+1), C_out)``: ``w_rawflow = w_tf.transpose(3, 2, 0, 1)``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .._array import Array, namespace
from .cnn import Act, _check_kernel, _check_widths, _Network, _per_channel, _channel_sum
from .conv import conv2d, conv2d_backward

#: the reference's log-scale factor of ActNorm and Conv2dZeros
LOGSCALE_FACTOR = 3.0
#: added to the standard deviation in the reference's ActNorm init (``1/(√var + 1e-6)``)
ACTNORM_EPS = 1e-6


@lru_cache(maxsize=64)
def edge_taps(h: int, w: int, k: int) -> np.ndarray:
    """``M: (k², H·W)`` float64 0/1: ``M[a·k + b, i·W + j] = 1`` where tap ``(a, b)`` of output
    pixel ``(i, j)`` falls on the zero-padded border of the ``(H + 2p) × (W + 2p)`` frame."""
    p = k // 2
    border = np.ones((h + 2 * p, w + 2 * p))
    border[p:p + h, p:p + w] = 0.0
    taps = np.empty((k * k, h * w))
    for a in range(k):
        for b in range(k):
            taps[a * k + b] = border[a:a + h, b:b + w].reshape(-1)
    taps.flags.writeable = False
    return taps


def _taps(x: Array, k: int) -> Array:
    xp = namespace(x)
    m = edge_taps(int(x.shape[2]), int(x.shape[3]), k)
    return m if xp is np and x.dtype == object else xp.asarray(m, dtype=x.dtype)


class EdgeConv2d:
    """The reference's ``conv2d`` with edge padding: ``y = VALID-conv([pad(x), B], w) (+ b)``.

    ``params = {"w": (C_out, C_in + 1, k, k)}`` (``+ 1`` only for ``k > 1``), plus ``"b": (C_out,)``
    with ``bias=True``. ``init``: ``"glow"`` = ``N(0, 0.05²)`` weights (the reference's
    ``default_initializer``), ``"zeros"`` = all zero.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, *, bias: bool = False,
                 init: str = "glow"):
        _check_widths(type(self).__name__, in_channels=in_channels, out_channels=out_channels)
        _check_kernel(type(self).__name__, kernel)
        if init not in ("glow", "zeros"):
            raise ValueError(f"{type(self).__name__}: unknown init {init!r}; use 'glow' or 'zeros'")
        self.in_features, self.out_features = int(in_channels), int(out_channels)
        self.kernel, self.bias, self.init_kind = int(kernel), bool(bias), init
        self.edge = self.kernel > 1

    data_dependent = False

    def param_spec(self) -> dict:
        c_in = self.in_features + (1 if self.edge else 0)
        spec = {"w": (self.out_features, c_in, self.kernel, self.kernel)}
        if self.bias:
            spec["b"] = (self.out_features,)
        return spec

    def init(self, rng: np.random.Generator, x: Array) -> dict:
        xp = namespace(x)
        shape = self.param_spec()["w"]
        w = rng.normal(scale=0.05, size=shape) if self.init_kind == "glow" else np.zeros(shape)
        params = {"w": xp.asarray(w, dtype=x.dtype)}
        if self.bias:
            params["b"] = xp.zeros(self.out_features, dtype=x.dtype)
        return params

    def apply(self, params: dict, x: Array):
        w = params["w"]
        if not self.edge:
            return conv2d(x, w, params.get("b"))
        c, k = self.in_features, self.kernel
        y, cache = conv2d(x, w[:, :c], params.get("b"))
        m = _taps(x, k)
        edge = (w[:, c].reshape(self.out_features, k * k) @ m).reshape(1, self.out_features, x.shape[2], x.shape[3])
        return y + edge, (cache, m)

    def backward(self, params: dict, cache, gy: Array):
        if not self.edge:
            gx, gw, gb = conv2d_backward(cache, gy)
            return gx, ({"w": gw, "b": gb} if self.bias else {"w": gw})
        xp = namespace(gy)
        conv_cache, m = cache
        k, c_out = self.kernel, self.out_features
        gx, gw_x, gb = conv2d_backward(conv_cache, gy)
        gw_edge = (gy.sum(axis=0).reshape(c_out, -1) @ m.T).reshape(c_out, 1, k, k)
        gw = xp.concatenate([gw_x, gw_edge], axis=1)
        return gx, ({"w": gw, "b": gb} if self.bias else {"w": gw})


class EdgeZeroConv2d(EdgeConv2d):
    """The reference's ``conv2d_zeros``: ``y = (EdgeConv2d(x) + b) ⊙ exp(3·logs)``, all zero at init.

    ``params = {"w": (C_out, C_in + 1, k, k), "b": (C_out,), "logs": (C_out,)}``. VJP:
    ``ga = gy ⊙ exp(3·logs)`` into the convolution, ``g logs = 3·Σ_{n,h,w} gy ⊙ y``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, *,
                 logscale_factor: float = LOGSCALE_FACTOR):
        super().__init__(in_channels, out_channels, kernel, bias=True, init="zeros")
        self.logscale_factor = float(logscale_factor)

    def param_spec(self) -> dict:
        return {**super().param_spec(), "logs": (self.out_features,)}

    def init(self, rng: np.random.Generator, x: Array) -> dict:
        params = super().init(rng, x)
        params["logs"] = namespace(x).zeros(self.out_features, dtype=x.dtype)
        return params

    def apply(self, params: dict, x: Array):
        xp = namespace(x)
        a, conv_cache = super().apply(params, x)
        scale = _per_channel(xp.exp(self.logscale_factor * params["logs"]))
        y = a * scale
        return y, (conv_cache, scale, y)

    def backward(self, params: dict, cache, gy: Array):
        conv_cache, scale, y = cache
        glogs = self.logscale_factor * _channel_sum(gy * y)
        gx, gparams = super().backward(params, conv_cache, gy * scale)
        return gx, {**gparams, "logs": glogs}


class OpenAINorm:
    """The reference's ActNorm inside its networks: ``y = (x + b) ⊙ exp(3·logs)`` (no log-det).

    Init (data-dependent, over (N, H, W)): ``b = −mean(x)``, ``logs = log(1/(√mean((x + b)²) + 1e-6))/3``.
    VJP: ``gx = gy ⊙ exp(3·logs)``, ``gb = Σ gx``, ``g logs = 3·Σ gy ⊙ y``.
    """

    def __init__(self, channels: int, logscale_factor: float = LOGSCALE_FACTOR, eps: float = ACTNORM_EPS):
        _check_widths("OpenAINorm", channels=channels)
        self.in_features = self.out_features = int(channels)
        self.logscale_factor, self.eps = float(logscale_factor), float(eps)

    data_dependent = True

    def param_spec(self) -> dict:
        return {"b": (self.in_features,), "logs": (self.in_features,)}

    def init(self, rng: np.random.Generator, x: Array) -> dict:
        if x.shape[0] * x.shape[2] * x.shape[3] == 0:
            raise ValueError(f"OpenAINorm: data-dependent init needs a non-empty example batch, got shape "
                             f"{tuple(x.shape)}")
        xp = namespace(x)
        b = -x.mean(axis=(0, 2, 3))
        centred = x + _per_channel(b)  # actnorm_center, then actnorm_scale measures mean(x²) of this
        var = (centred * centred).mean(axis=(0, 2, 3))
        return {"b": b, "logs": xp.log(1.0 / (xp.sqrt(var) + self.eps)) / self.logscale_factor}

    def apply(self, params: dict, x: Array):
        xp = namespace(x)
        scale = _per_channel(xp.exp(self.logscale_factor * params["logs"]))
        y = (x + _per_channel(params["b"])) * scale
        return y, (scale, y)

    def backward(self, params: dict, cache, gy: Array):
        scale, y = cache
        gx = gy * scale
        return gx, {"b": _channel_sum(gx), "logs": self.logscale_factor * _channel_sum(gy * y)}


class OpenAIGlowCNN(_Network):
    """The reference's coupling network ``f``: edge conv3×3 → norm → ReLU → conv1×1 → norm → ReLU →
    edge zero conv3×3 (see the module doc).

    Parameters ``{"conv1": {w}, "norm1": {b, logs}, "conv2": {w}, "norm2": {b, logs},
    "out": {w, b, logs}}`` — :class:`~rawflow.nets.cnn.GlowCNN`'s names; ``conv1/w`` and ``out/w``
    have one extra input channel (the edge channel).
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 512, *, kernel: int = 3):
        _check_widths("OpenAIGlowCNN", in_channels=in_channels, out_channels=out_channels, width=width)
        _check_kernel("OpenAIGlowCNN", kernel)
        self.in_features, self.out_features, self.width = int(in_channels), int(out_channels), int(width)
        super().__init__([
            ("conv1", EdgeConv2d(in_channels, width, kernel)),
            ("norm1", OpenAINorm(width)),
            ("relu1", Act("relu")),
            ("conv2", EdgeConv2d(width, width, 1)),
            ("norm2", OpenAINorm(width)),
            ("relu2", Act("relu")),
            ("out", EdgeZeroConv2d(width, out_channels, kernel)),
        ])
