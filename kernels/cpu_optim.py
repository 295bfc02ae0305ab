"""Fused Numba CPU kernel for Adam's update (:class:`rawflow.Adam`), one pass per parameter leaf.

The same operations as the reference expressions in :mod:`rawflow.training.optim`, in the same
order and in the leaf's dtype, so the results are identical bit for bit (tests hold them to it)::

    m' = β₁·m + (1 − β₁)·g
    v' = β₂·v + (1 − β₂)·(g·g)
    θ' = θ − lr·(m'/c₁) / (√(v'/c₂) + ε)          c₁ = 1 − β₁ᵗ, c₂ = 1 − β₂ᵗ

The scalars are rounded to the dtype once, as NumPy rounds a Python float that meets a float32
array; every operation is a separate IEEE operation (no fused multiply-add: Numba emits no
contraction flags without ``fastmath``), and ``√`` is correctly rounded in both. What the kernel
saves is NumPy's per-call overhead and temporaries: the reference makes 14 array operations per
leaf (4 temporaries); a model with a few hundred small leaves (the digits Glow of ``rawflow
demo``) spends most of its optimiser time there.

One signature per dtype (1-D, C-contiguous views of the leaves), compiled on first use and cached
on disk (``cache=True``).
"""

from __future__ import annotations

import numpy as np
from numba import njit


# error_model="numpy": IEEE division (no zero-division check, which would also keep the loop from
# vectorising: the reference's 0/0 with eps = 0 is NaN, not an exception)
@njit(cache=True, nogil=True, error_model="numpy")
def _adam(p, g, m, v, lr, b1, a1, b2, a2, eps, c1, c2):  # pragma: no cover - compiled
    po = np.empty_like(p)
    mo = np.empty_like(p)
    vo = np.empty_like(p)
    for i in range(p.size):
        mi = b1 * m[i] + a1 * g[i]
        vi = b2 * v[i] + a2 * (g[i] * g[i])
        mo[i] = mi
        vo[i] = vi
        po[i] = p[i] - lr * (mi / c1) / (np.sqrt(vi / c2) + eps)
    return po, mo, vo


def adam_scalars(dtype, lr: float, b1: float, b2: float, eps: float, t: int) -> tuple:
    """The update's scalars in ``dtype``, rounded as NumPy rounds them for an array of that dtype."""
    f = np.dtype(dtype).type
    return (f(lr), f(b1), f(1 - b1), f(b2), f(1 - b2), f(eps), f(1 - b1**t), f(1 - b2**t))


def adam_leaf(p, g, m, v, scalars: tuple):
    """``(θ', m', v')`` for one leaf: NumPy float32/float64 arrays of one shape and dtype; the
    inputs are not modified."""
    shape = p.shape
    po, mo, vo = _adam(p.ravel(), g.ravel(), m.ravel(), v.ravel(), *scalars)
    return po.reshape(shape), mo.reshape(shape), vo.reshape(shape)
