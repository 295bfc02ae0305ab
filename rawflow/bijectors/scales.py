"""Scale maps of affine couplings: raw conditioner output ``h`` ↦ ``log s``.

Each map returns ``(log_s, dlog_s)`` with ``dlog_s = d(log s)/dh``; the coupling uses
``s = exp(log_s)`` and ``log|det| = Σ log_s``. Working in ``log s`` keeps the log-det exact
(no ``log`` of a rounded ``s``) and every map analytic, so complex-step oracles apply.

* ``"exp"``:      ``s = exp(h)``                    (RealNVP);   ``log s = h``
* ``"bounded"``:  ``s = exp(c·tanh(h/c))``          (soft clamp, ``|log s| < c``)
* ``"sigmoid"``:  ``s = sigmoid(h + 2)``            (Glow's code); ``log s = −softplus(−(h+2))``
"""

from __future__ import annotations

from .._array import Array, namespace, sech2, sigmoid, softplus


class ScaleMap:
    name = "base"

    def __call__(self, h: Array) -> tuple[Array, Array]:
        return self.log_scale(h)

    def log_only(self, h: Array) -> Array:
        """``log s`` alone, bit for bit the first output of :meth:`log_scale` (inference paths,
        which need no derivative). Subclasses override it to skip computing ``dlog_s``."""
        return self.log_scale(h)[0]

    def __repr__(self) -> str:
        return self.name


class ExpScale(ScaleMap):
    name = "exp"
    kernel_name = "exp"  # the fused kernels implement exactly this class (rawflow.kernels.interface)

    def log_scale(self, h):
        return h, namespace(h).ones_like(h)

    def log_only(self, h):
        return h


class BoundedScale(ScaleMap):
    name = "bounded"
    kernel_name = "bounded"

    def __init__(self, c: float = 2.0):
        if not c > 0:
            raise ValueError(f"bounded scale map: c must be positive, got {c}")
        self.c = float(c)

    def log_scale(self, h):
        u = h / self.c
        return self.c * namespace(h).tanh(u), sech2(u)

    def log_only(self, h):
        return self.c * namespace(h).tanh(h / self.c)

    def __repr__(self) -> str:
        return f"bounded(c={self.c})"


class SigmoidScale(ScaleMap):
    name = "sigmoid"
    kernel_name = "sigmoid"

    def log_scale(self, h):
        u = h + 2
        return -softplus(-u), sigmoid(-u)

    def log_only(self, h):
        return -softplus(-(h + 2))


def scale_map(spec) -> ScaleMap:
    """``"exp"``, ``"bounded"``, ``"sigmoid"`` or a :class:`ScaleMap` instance."""
    if isinstance(spec, ScaleMap):
        return spec
    table = {"exp": ExpScale, "bounded": BoundedScale, "sigmoid": SigmoidScale}
    if spec not in table:
        raise ValueError(f"unknown scale map {spec!r}; use one of {sorted(table)}")
    return table[spec]()
