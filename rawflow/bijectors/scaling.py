"""NICE's diagonal scaling layer: a learned per-feature (per-channel) scale.

Forward (data → latent), ``x: (N, C, *spatial)``, ``log_scale: (C,)``, ``e = exp(log_scale)``,
``P`` = number of spatial positions (1 for vectors)::

    z = x ⊙ e                        logdet = P · Σ_c log_scale_c        (the same for every sample)
    x = z / e                        logdet_inv = −logdet

NICE puts this layer last so the model can weight the latent dimensions (the additive couplings
before it are volume preserving). ``params = {"log_scale": (C,)}``, initialised to zeros (the
identity). The inverse divides by the forward's own rounded ``e`` (rather than multiplying by
``exp(−log_scale)``), so a round trip rounds twice: ``|x' − x| ≤ ulp(x)``.

Gradients (sums ``Σ`` run over the batch and spatial axes)::

    forward:  gx = gz ⊙ e           g log_scale = Σ gz ⊙ z + P·Σ_n glogdet_n
    inverse:  gz = gx / e           g log_scale = −Σ gx ⊙ x − P·Σ_n glogdet_n

(``∂z/∂log_scale = z`` and ``∂x/∂log_scale = −x``.) The cache ``(x, z, e)`` is the same from
either direction. A ``log_scale`` whose ``exp`` underflows to 0 or overflows is refused
(:func:`~rawflow.bijectors._channel.channel_scales`).
"""

from __future__ import annotations

import numpy as np

from .._array import Array, namespace
from ._channel import ChannelBijector, channel_scales, channel_view, constant_logdet, positions, sum_but_channel


class DiagonalScaling(ChannelBijector):
    """``z = x ⊙ exp(log_scale)`` along axis 1; ``logdet = P·Σ log_scale``."""

    def param_spec(self) -> dict:
        return {"log_scale": (self.features,)}

    def _init(self, rng: np.random.Generator, x: Array) -> dict:
        return {"log_scale": namespace(x).zeros(self.features, dtype=x.dtype)}

    def _logdet(self, params, x):
        return positions(x) * params["log_scale"].sum()

    def _forward(self, params, x):
        e = channel_scales(self, params["log_scale"])
        z = x * channel_view(e, x)
        return z, constant_logdet(self._logdet(params, x), z), (x, z, e)

    def _inverse(self, params, z):
        e = channel_scales(self, params["log_scale"])
        x = z / channel_view(e, z)
        return x, constant_logdet(-self._logdet(params, z), x), (x, z, e)

    def _backward(self, params, cache, gz, glogdet):
        x, z, e = cache
        gls = sum_but_channel(gz * z) + positions(gz) * glogdet.sum()
        return gz * channel_view(e, gz), {"log_scale": gls}

    def _inverse_backward(self, params, cache, gx, glogdet):
        x, z, e = cache
        gls = -(sum_but_channel(gx * x) + positions(gx) * glogdet.sum())
        return gx / channel_view(e, gx), {"log_scale": gls}
