"""Per-channel layers' shared base: maps acting on axis 1 identically at every spatial position.

A *channel layer* acts on axis 1 — the features of ``(N, D)`` vectors or the channels of
``(N, C, H, W)`` images — and applies the same map at every spatial position. The same class serves
vector flows (``spatial=0``, event shape ``(D,)``) and Glow (``spatial=2``, event shape
``(C, None, None)``: any H, W). Its log-det is the per-position log-det times the number of positions
``P = H·W`` (``P = 1`` for vectors).
"""

from __future__ import annotations

import math

import numpy as np

from .._array import Array, namespace
from .bijector import Bijector


class ChannelBijector(Bijector):
    """Base for layers acting on axis 1 identically at every position of the trailing axes.

    ``features`` is D (vectors) or C (images); ``spatial`` is the number of trailing axes
    (0 → event shape ``(D,)``; 2 → ``(C, None, None)``).
    """

    def __init__(self, features: int, spatial: int = 0):
        if isinstance(features, bool) or int(features) != features or features < 1:
            raise ValueError(f"{type(self).__name__}: features must be a positive integer, got {features!r}")
        if isinstance(spatial, bool) or int(spatial) != spatial or spatial < 0:
            raise ValueError(f"{type(self).__name__}: spatial must be a non-negative integer, got {spatial!r}")
        self.features = int(features)
        self.spatial = int(spatial)
        self.event_shape = (self.features,) + (None,) * self.spatial


def channel_scales(layer: Bijector, log_scale: Array) -> Array:
    """``e = exp(log_scale): (C,)``, refusing a scale that is 0 or not finite.

    ``exp`` underflows to 0 below ``log_scale ≈ −745`` (float64; −104 in float32) and overflows
    above 709.8 (88.7): the map would then send every sample to 0 (or ∞) while its log-det stays
    finite, and its inverse would divide by 0. Such a layer is not invertible in its dtype, so it
    raises ``ValueError`` naming the channels, as :class:`~rawflow.bijectors.linear.LULinear` does.
    O(C); called by the unchecked methods too, so a chain reports it.
    """
    xp = namespace(log_scale)
    with np.errstate(over="ignore", under="ignore"):  # reported below, as an error
        e = xp.exp(log_scale)
    bad = ~(xp.isfinite(e) & (e.real != 0))
    if bool(bad.any()):
        idx = [int(i) for i in xp.flatnonzero(bad)]
        raise layer._error(
            f"scale exp(log_scale) underflows to 0 or overflows at channels {idx[:8]} "
            f"(log_scale = {[float(log_scale[i].real) for i in idx[:8]]}); the layer is not invertible"
        )
    return e


def positions(x: Array) -> int:
    """Number of spatial positions ``P = H·W`` of ``x: (N, C, *spatial)`` (1 for vectors)."""
    return math.prod(x.shape[2:])


def channel_view(v: Array, x: Array) -> Array:
    """``v: (C,)`` reshaped to ``(1, C, 1, ...)`` so it broadcasts against ``x: (N, C, *spatial)``."""
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))


def sum_but_channel(a: Array) -> Array:
    """``Σ`` over the batch and spatial axes: ``(N, C, *spatial) → (C,)``."""
    return a.sum(axis=(0,) + tuple(range(2, a.ndim)))


def constant_logdet(value: Array, like: Array) -> Array:
    """``(N,)`` array equal to ``value`` for every sample (layers whose log-det ignores x).

    ``value`` must already be in the parameters' dtype (equal to ``like``'s, which validation
    enforces), so no promotion happens, and ``constant_logdet(-v)`` is the exact negation.
    """
    return namespace(like).zeros(like.shape[0], dtype=like.dtype) + value


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a)
    a.flags.writeable = False
    return a
