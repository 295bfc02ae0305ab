"""Peer definitions that rawflow's own scale maps and transforms do not cover, written the rawflow way.

Pure NumPy/CuPy (no torch): each class here is an ordinary rawflow piece (a
:class:`~rawflow.bijectors.scales.ScaleMap` or an elementwise coupling transform with a hand-written VJP),
complex-step safe, and verified by :mod:`rawflow.check` like every other layer. They exist so a
peer's layer can be reproduced *exactly*, operation for operation, instead of approximately.

Scale maps (``h`` = raw conditioner output, each returns ``(log s, d log s / dh)``)::

    OffsetSigmoidScale(2, 1e-3)   s = sigmoid(h + 2) + 1e-3        nflows AffineCouplingTransform
                                  log s = log(σ + ε),  d = σ(1 − σ) / (σ + ε)      (σ = sigmoid(h + 2))
    SoftclipScale(1e-3)           log s = h / (1 + |h / L|),  L = log(slope) < 0    zuko MonotonicAffineTransform
                                  d = 1 / (1 + |h / L|)²          (|log s| < −L = 6.908 for slope 1e-3)
    ClampScale(c, "ATAN")         log s = c · (0.636 · atan(h)),  d = 0.636·c / (1 + h²)       FrEIA
    ClampScale(c, "TANH")         log s = c · tanh(h),            d = c / cosh²h               FrEIA
    ClampScale(c, "SIGMOID")      log s = c · (2(σ(h) − 0.5)),    d = 2c · σ(h)σ(−h)           FrEIA
    NegatedScale(m)               log s = −m(h)                    normflows "sigmoid_inv"

``|u|`` is written ``u·sign(Re u)`` (analytic off ``u = 0``, where the maps are C¹ and the formula
for ``d`` is still the derivative).

Transform::

    ShiftScaleTransform(m)        y_b = (x_b + t) ⊙ s,   log|det| = Σ log s,   [h_s, t] = h

is the *shift-then-scale* order of OpenAI's Glow code (``z2 += shift; z2 *= scale``) and of
normflows' data→latent direction (``(z2 − shift)·scale``, i.e. ``t = −shift``). rawflow's
:class:`~rawflow.bijectors.coupling.AffineTransform` scales first (``y_b = x_b ⊙ s + t``). The two families
are the same set of maps (``t_rawflow = t·s``) but not the same function of the conditioner's
output, so a peer's weights only carry over with the matching transform. VJPs (cotangents ``gy``
and ``gℓ``; ``u = x_b + t = y_b / s``)::

    forward:  gx_b = gy ⊙ s,   gt = gy ⊙ s,    gh_s = (gy ⊙ y_b + gℓ) ⊙ d log s/dh
    inverse:  gy_b = gx / s,   gt = −gx,       gh_s = (−gx ⊙ u − gℓ) ⊙ d log s/dh

(``∂y_b/∂log s = y_b``; ``x_b = y_b/s − t`` so ``∂x_b/∂log s = −u``.) The cache ``(u, y_b, s, d)`` is
the same from either direction.
"""

from __future__ import annotations

import math

from .._array import namespace, sigmoid
from ..bijectors.coupling import AffineTransform
from ..bijectors.scales import ScaleMap, scale_map

_ATAN_FACTOR = 0.636  # FrEIA's literal constant (≈ 2/π, which would be 0.63662)


def _abs(u):
    """``|u|`` continued analytically off ``Re u = 0`` (complex-step safe)."""
    return u * namespace(u).sign(u.real)


class OffsetSigmoidScale(ScaleMap):
    """``s = sigmoid(h + offset) + eps`` (nflows' affine coupling: offset 2, eps 1e-3)."""

    name = "offset_sigmoid"

    def __init__(self, offset: float = 2.0, eps: float = 1e-3):
        if not eps >= 0:
            raise ValueError(f"OffsetSigmoidScale: eps must be non-negative, got {eps}")
        self.offset, self.eps = float(offset), float(eps)

    def log_scale(self, h):
        xp = namespace(h)
        u = h + self.offset
        sig = sigmoid(u)
        s = sig + self.eps
        return xp.log(s), sig * sigmoid(-u) / s

    def __repr__(self) -> str:
        return f"offset_sigmoid(offset={self.offset}, eps={self.eps})"


class SoftclipScale(ScaleMap):
    """``log s = h / (1 + |h / log(slope)|)`` (zuko's ``MonotonicAffineTransform``, slope 1e-3)."""

    name = "softclip"

    def __init__(self, slope: float = 1e-3):
        if not 0 < slope < 1:
            raise ValueError(f"SoftclipScale: slope must be in (0, 1), got {slope}")
        self.slope = float(slope)
        self._log_slope = math.log(self.slope)

    def log_scale(self, h):
        d = 1 + _abs(h / self._log_slope)
        return h / d, 1 / (d * d)

    def __repr__(self) -> str:
        return f"softclip(slope={self.slope})"


class ClampScale(ScaleMap):
    """FrEIA's soft clamp ``log s = clamp · f(h)`` with ``f`` = ``"ATAN"``, ``"TANH"`` or ``"SIGMOID"``.

    Note that FrEIA 0.2 applies ``f`` to ``h`` itself, not to ``h / clamp`` (rawflow's ``"bounded"``
    map is ``c·tanh(h / c)``).
    """

    name = "clamp"

    def __init__(self, clamp: float = 2.0, activation: str = "ATAN"):
        if activation not in ("ATAN", "TANH", "SIGMOID"):
            raise ValueError(f"ClampScale: activation must be 'ATAN', 'TANH' or 'SIGMOID', got {activation!r}")
        self.clamp, self.activation = float(clamp), activation

    def log_scale(self, h):
        xp = namespace(h)
        c = self.clamp
        if self.activation == "ATAN":
            return c * (_ATAN_FACTOR * xp.arctan(h)), (c * _ATAN_FACTOR) / (1 + h * h)
        if self.activation == "TANH":
            # 1/cosh² rather than 1 − tanh²: relative accuracy where tanh rounds to ±1 (|h| > 19).
            ch = xp.cosh(h)
            return c * xp.tanh(h), c / (ch * ch)
        sig = sigmoid(h)
        return c * (2.0 * (sig - 0.5)), (2 * c) * (sig * sigmoid(-h))

    def __repr__(self) -> str:
        return f"clamp({self.clamp}, {self.activation})"


class NegatedScale(ScaleMap):
    """``log s = −m(h)``: the reciprocal scale of another map ``m``."""

    name = "negated"

    def __init__(self, base):
        self.base = scale_map(base)

    def log_scale(self, h):
        log_s, d = self.base(h)
        return -log_s, -d

    def __repr__(self) -> str:
        return f"negated({self.base!r})"


def _row_sum(a):
    return a.sum(axis=tuple(range(1, a.ndim)))


def _per_row(g, like):
    return g.reshape((g.shape[0],) + (1,) * (like.ndim - 1))


class ShiftScaleTransform(AffineTransform):
    """``y_b = (x_b + t) ⊙ s`` (shift, then scale) with ``[h_s, t] = h``; see the module doc."""

    def forward(self, xb, h):
        log_s, dlog_s, s, t = self._params(h)
        u = xb + t
        yb = u * s
        return yb, _row_sum(log_s), (u, yb, s, dlog_s)

    def inverse(self, yb, h):
        log_s, dlog_s, s, t = self._params(h)
        u = yb / s
        # -(Σ log s) is the exact negation of the forward's sum: the two log-dets cancel exactly.
        return u - t, -_row_sum(log_s), (u, yb, s, dlog_s)

    # AffineTransform's no-cache paths compute scale-then-shift: this map's are its own
    def forward_no_cache(self, xb, h):
        return self.forward(xb, h)[:2]

    def inverse_no_cache(self, yb, h):
        return self.inverse(yb, h)[:2]

    def backward(self, tcache, gyb, glogdet):
        u, yb, s, dlog_s = tcache
        gu = gyb * s
        gh_s = (gyb * yb + _per_row(glogdet, yb)) * dlog_s
        return gu, namespace(gu).concatenate([gh_s, gu], axis=1)

    def inverse_backward(self, tcache, gxb, glogdet):
        u, yb, s, dlog_s = tcache
        gh_s = (-(gxb * u) - _per_row(glogdet, u)) * dlog_s
        return gxb / s, namespace(gxb).concatenate([gh_s, -gxb], axis=1)

    def __repr__(self) -> str:
        return f"ShiftScaleTransform({self.scale!r})"
