"""RealNVP's logit preprocessing as a bijector, with its exact log-det.

For data ``x ∈ [0, 1)`` (dequantised pixels), elementwise with a fixed ``α ∈ [0, ½)``::

    p = α + (1 − 2α)·x                       (keeps p away from 0 and 1)
    z = logit(p) = log p − log(1 − p)
    logdet = Σ [log(1 − 2α) − log p − log(1 − p)]          (per sample, over every element)

Inverse: ``p = sigmoid(z)``, ``x = (p − α)/(1 − 2α)``, ``logdet_inv = −logdet``. Both log-dets are
evaluated from ``z`` as ``Σ[log(1 − 2α) + softplus(z) + softplus(−z)]`` (equal to the above, since
``−log p = softplus(−z)`` and ``−log(1 − p) = softplus(z)``).

**When the log-dets cancel exactly.** ``forward`` at ``x`` and ``inverse`` at the ``z`` it returned
evaluate the same expression of the same ``z``: they cancel bit for bit, always. In the other
order, ``inverse`` at ``z`` then ``forward`` at the ``x`` it returned, the forward recomputes
``z' = logit(p(x))``: the two cancel bit for bit **if and only if** ``z' == z`` (the round trip
``z → x → z`` is exact, which for ``|z| ≳ 37`` (float64) it cannot be, since ``sigmoid(z)`` rounds
to 1); otherwise their sum is ``ℓ(z') − ℓ(z)``, at most ``Σ|tanh(z_i/2)|·|z'_i − z_i|`` plus the
two evaluations' rounding. No formula can do better: ``ℓ`` must then be a function of both ``x``
and ``z`` that is unchanged by each direction's round trip, and neither round trip is exact.
Layers whose log-det depends only on parameters (ActNorm, linear maps) or on a part that both
directions copy bit for bit (couplings) cancel exactly in both orders.

VJPs (``q = 1 − p``, evaluated as ``sigmoid(−z)`` in the inverse: ``1 − sigmoid(z)`` cancels for
large ``z`` and is 0 from ``z ≈ 37`` on, where ``q`` is ``e^{−z}``)::

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
        # the cache is the point's (p, q); here q = 1 − p errs by ≲ eps·p, within q's own sensitivity to x
        return z, self._logdet(z), (p, 1 - p)

    def _inverse(self, params, z):
        p = sigmoid(z)
        x = (p - self.alpha) / (1 - 2 * self.alpha)
        # q = sigmoid(−z), not 1 − p: the difference loses all of q once sigmoid(z) rounds near 1
        return x, -self._logdet(z), (p, sigmoid(-z))

    def _backward(self, params, cache, gz, glogdet):
        p, q = cache
        gx = (1 - 2 * self.alpha) * (gz + _per_row(glogdet, p) * (p - q)) / (p * q)
        return gx, {}

    def _inverse_backward(self, params, cache, gx, glogdet):
        p, q = cache
        gz = p * q * gx / (1 - 2 * self.alpha) + _per_row(glogdet, p) * (q - p)
        return gz, {}
