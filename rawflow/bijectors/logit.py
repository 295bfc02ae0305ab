"""RealNVP's logit preprocessing as a bijector, with its exact log-det.

For data ``x ∈ [0, 1)`` (dequantised pixels), elementwise with a fixed ``α ∈ [0, ½)``::

    p = α + (1 − 2α)·x                       (keeps p away from 0 and 1)
    z = logit(p) = log p − log(1 − p)
    logdet = Σ [log(1 − 2α) − log p − log(1 − p)]          (per sample, over every element)

Inverse: ``p = sigmoid(z)``, ``x = (p − α)/(1 − 2α)``, ``logdet_inv = −logdet``. Both log-dets are
evaluated from ``z`` as ``Σ[log(1 − 2α) + softplus(z) + softplus(−z)]`` (equal to the above, since
``−log p = softplus(−z)`` and ``−log(1 − p) = softplus(z)``), so they cancel exactly.
VJPs (``q = 1 − p``)::

    forward:  d/dx [−log p − log q] = (1 − 2α)·(p − q)/(p·q), so
              gx = (1 − 2α)·[gz + gℓ·(p − q)]/(p·q)
    inverse:  dp/dz = p·q and logdet_inv = Σ[log p + log q] − const, so
              gz = p·q·gx/(1 − 2α) + gℓ·(q − p)

No parameters. Shapes: any ``(N, *event)``; the event shape is fixed at construction
(``event_shape`` entries may be ``None``).
"""

from __future__ import annotations

import math
from typing import Sequence

from .._array import namespace, sigmoid, softplus
from .bijector import Bijector


def _row_sum(a):
    return a.sum(axis=tuple(range(1, a.ndim)))


def _per_row(g, like):
    return g.reshape((g.shape[0],) + (1,) * (like.ndim - 1))


class Logit(Bijector):
    """``z = logit(α + (1 − 2α)·x)`` elementwise (RealNVP uses α = 0.05)."""

    def __init__(self, event_shape: Sequence[int | None], alpha: float = 0.05):
        if not 0 <= alpha < 0.5:
            raise ValueError(f"Logit: alpha must be in [0, 0.5), got {alpha}")
        self.event_shape = tuple(event_shape)
        self.alpha = float(alpha)
        self._log_range = math.log1p(-2 * self.alpha)

    def param_spec(self) -> dict:
        return {}

    def _logdet(self, z):
        # −log p − log(1 − p) = softplus(z) + softplus(−z): written in the latent z, which forward
        # returns and inverse receives bit for bit, so the two log-dets cancel exactly.
        return _row_sum(self._log_range + softplus(z) + softplus(-z))

    def _forward(self, params, x):
        xp = namespace(x)
        p = self.alpha + (1 - 2 * self.alpha) * x
        if not bool(((p.real > 0) & (p.real < 1)).all()):
            raise self._error("input must lie in [0, 1) (alpha = 0 needs x strictly inside (0, 1))")
        z = xp.log(p) - xp.log1p(-p)
        return z, self._logdet(z), p

    def _inverse(self, params, z):
        p = sigmoid(z)
        x = (p - self.alpha) / (1 - 2 * self.alpha)
        return x, -self._logdet(z), p

    def _backward(self, params, cache, gz, glogdet):
        p = cache
        q = 1 - p
        gx = (1 - 2 * self.alpha) * (gz + _per_row(glogdet, p) * (p - q)) / (p * q)
        return gx, {}

    def _inverse_backward(self, params, cache, gx, glogdet):
        p = cache
        q = 1 - p
        gz = p * q * gx / (1 - 2 * self.alpha) + _per_row(glogdet, p) * (q - p)
        return gz, {}
