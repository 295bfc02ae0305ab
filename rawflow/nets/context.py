"""Networks that take a context ``c: (N, K)``, with hand-written backward passes.

A conditional coupling's conditioner sees the copied part *and* a context (a one-hot class label,
an encoder's output). Protocol (the MLP/CNN protocol with one more input and one more cotangent)::

    params = net.init(rng, x, c)             # x: (N, in_features[, H, W]), c: (N, K)
    y, cache = net.apply(params, x, c)
    gx, gparams, gc = net.backward(params, cache, gy)

* :class:`ConcatContext` wraps any conditioner (MLP for vectors, any CNN for images) whose input is
  the copied part with the context appended: ``[x_a, c]`` along features for vectors (zuko's and
  nflows' conditional MLPs), ``[x_a, c broadcast over the pixels]`` as ``K`` extra constant channels
  for images. ``gc`` is the cotangent of the appended part (summed over the pixels for images).
* :class:`ContextGlowCNN` is Glow's coupling network with the context *added after the first
  convolution*: ``a₁ = conv₃ₓ₃(x_a) + c·Vᵀ`` (a per-sample, per-channel bias), then the rest of
  :class:`~rawflow.nets.cnn.GlowCNN` unchanged. ``V: (width, K)`` starts at zero, so a fresh
  layer's normalisation init (which measures ``a₁`` on the example batch) and outputs are those
  of the unconditional network. VJP: ``gV = Σ_{h,w} ga₁ ⊗ c``, ``gc = (Σ_{h,w} ga₁)·V``.

  Why both for images: concatenation works with every conditioner (ResNet, a user's network) and
  is what a reader expects; for a 3×3 convolution with zero padding, constant context channels
  equal a context bias everywhere except at the border pixels (where the padding cuts the kernel),
  so adding after the first convolution is the same model without the border artefact, and
  cheaper: ``K·width`` multiply-adds per sample instead of ``9·K·width`` per pixel.
* :class:`LinearZeros` is openai/glow's ``linear_zeros``: ``y = (x·Wᵀ + b) ⊙ exp(f·ℓ)`` per output,
  ``f = logscale_factor = 3``, everything zero at init (so ``y ≡ 0``). Glow's class-conditional
  priors (``--ycond``) and classifier head are ``LinearZeros`` of the one-hot label and of the pooled
  top latent. VJP: ``ga = gy ⊙ exp(f·ℓ)``, ``gW = gaᵀx``, ``gb = Σ_n ga``, ``gℓ = f·Σ_n gy ⊙ y``,
  ``gx = ga·W``.

Every map here is polynomial or ``exp`` in its inputs and parameters (complex-step safe).
"""

from __future__ import annotations

import numpy as np

from .._array import Array, namespace
from .cnn import Conv2d, _Sequential, _check_kernel, _check_widths, glow_tail
from .mlp import conditioner_spec


def _check_features(name: str, **values) -> None:
    bad = {k: v for k, v in values.items() if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1}
    if bad:
        raise ValueError(f"{name}: sizes must be positive integers, got {bad}")


class LinearZeros:
    """openai/glow's ``linear_zeros``: ``y = (x·Wᵀ + b) ⊙ exp(f·ℓ)``, ``W: (out, in)``, all zero at init."""

    def __init__(self, in_features: int, out_features: int, *, logscale_factor: float = 3.0):
        _check_features("LinearZeros", in_features=in_features, out_features=out_features)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.logscale_factor = float(logscale_factor)

    data_dependent = False

    def param_spec(self) -> dict:
        return {"w": (self.out_features, self.in_features), "b": (self.out_features,),
                "logs": (self.out_features,)}

    def init(self, rng: np.random.Generator | None, x: Array) -> dict:
        xp = namespace(x)
        return {"w": xp.zeros((self.out_features, self.in_features), dtype=x.dtype),
                "b": xp.zeros(self.out_features, dtype=x.dtype),
                "logs": xp.zeros(self.out_features, dtype=x.dtype)}

    def apply(self, params: dict, x: Array):
        xp = namespace(x)
        scale = xp.exp(self.logscale_factor * params["logs"])
        y = (x @ params["w"].T + params["b"]) * scale
        return y, (x, scale, y)

    def backward(self, params: dict, cache, gy: Array):
        x, scale, y = cache
        ga = gy * scale
        gparams = {"w": ga.T @ x, "b": ga.sum(axis=0), "logs": self.logscale_factor * (gy * y).sum(axis=0)}
        return ga @ params["w"], gparams


class ConcatContext:
    """``net([x, c])``: the context appended to the conditioner's input (see the module doc).

    ``net`` maps ``in_features + K`` features (vectors) or channels (images) to its outputs;
    ``in_features`` of this wrapper is the copied part's size alone. Parameters are ``net``'s.
    """

    def __init__(self, net, context_features: int):
        _check_features("ConcatContext", context_features=context_features)
        self.net, self.context_features = net, int(context_features)
        self.in_features = int(net.in_features) - self.context_features
        self.out_features = int(net.out_features)
        if self.in_features < 1:
            raise ValueError(f"ConcatContext: the network takes {net.in_features} inputs, no room for the data "
                             f"besides a context of {self.context_features}")

    @property
    def data_dependent(self) -> bool:
        return bool(getattr(self.net, "data_dependent", False))

    def param_spec(self):
        return conditioner_spec(self.net)

    def _joined(self, x: Array, c: Array) -> Array:
        xp = namespace(x, c)
        if x.ndim == 2:
            return xp.concatenate([x, c], axis=1)  # (N, |a| + K)
        extra = xp.broadcast_to(c.reshape(c.shape + (1,) * (x.ndim - 2)), (x.shape[0], c.shape[1]) + x.shape[2:])
        return xp.concatenate([x, extra], axis=1)  # (N, C_a + K, H, W)

    def init(self, rng, x: Array, c: Array) -> dict:
        return self.net.init(rng, self._joined(x, c))

    def apply(self, params, x: Array, c: Array):
        return self.net.apply(params, self._joined(x, c))

    def backward(self, params, cache, gy: Array):
        g_in, gparams = self.net.backward(params, cache, gy)
        k = self.in_features
        gc = g_in[:, k:]
        if gc.ndim > 2:
            gc = gc.sum(axis=tuple(range(2, gc.ndim)))  # the context is constant over the pixels
        return g_in[:, :k], gparams, gc


class ContextGlowCNN:
    """Glow's coupling network with the context added after the first convolution (module doc).

    Parameters ``{"conv1": {w}, "context": {w: (width, K)}, "norm1", "conv2", "norm2", "out"}``:
    :class:`~rawflow.nets.cnn.GlowCNN`'s plus the context weights (zero at init).
    """

    def __init__(self, in_channels: int, out_channels: int, width: int, context_features: int, *, kernel: int = 3):
        _check_widths("ContextGlowCNN", in_channels=in_channels, out_channels=out_channels, width=width,
                      context_features=context_features)
        _check_kernel("ContextGlowCNN", kernel)
        self.in_features, self.out_features, self.width = int(in_channels), int(out_channels), int(width)
        self.context_features = int(context_features)
        self.first = Conv2d(in_channels, width, kernel, bias=False, init="glow")
        self.rest = _Sequential(glow_tail(width, out_channels, kernel))

    data_dependent = True

    def param_spec(self) -> dict:
        return {"conv1": self.first.param_spec(), "context": {"w": (self.width, self.context_features)},
                **self.rest.param_spec()}

    def _check(self, x: Array) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_features:
            raise ValueError(f"ContextGlowCNN: input must be (N, {self.in_features}, H, W), got {tuple(x.shape)}")

    def _first(self, params, x, c):
        a, conv_cache = self.first.apply(params["conv1"], x)
        return a + (c @ params["context"]["w"].T)[:, :, None, None], conv_cache  # (N, width, H, W)

    def init(self, rng: np.random.Generator, x: Array, c: Array) -> dict:
        self._check(x)
        if x.size == 0:
            raise ValueError(f"ContextGlowCNN: data-dependent init (its ChannelNorm layers) needs a non-empty "
                             f"example batch, got shape {tuple(x.shape)}")
        xp = namespace(x)
        params = {"conv1": self.first.init(rng, x),
                  "context": {"w": xp.zeros((self.width, self.context_features), dtype=x.dtype)}}
        a, _ = self._first(params, x, c)
        params.update(self.rest.init(rng, a))
        return params

    def apply(self, params: dict, x: Array, c: Array):
        self._check(x)
        a, conv_cache = self._first(params, x, c)
        y, rest_cache = self.rest.apply(params, a)
        return y, (conv_cache, c, rest_cache)

    def backward(self, params: dict, cache, gy: Array):
        conv_cache, c, rest_cache = cache
        ga, gparams = self.rest.backward(params, rest_cache, gy)
        gx, gconv = self.first.backward(params["conv1"], conv_cache, ga)
        gbias = ga.sum(axis=(2, 3))  # (N, width): the context bias is constant over the pixels
        gparams["conv1"] = gconv
        gparams["context"] = {"w": gbias.T @ c}
        return gx, gparams, gbias @ params["context"]["w"]
