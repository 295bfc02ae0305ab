"""An LU-factorised linear layer whose fixed factors (P, sign) are given rather than drawn.

:class:`~rawflow.bijectors.linear.LULinear` draws ``P`` and ``sign`` from a seed at construction (Glow's
init). A peer's layer comes with its own: nflows and zuko have no permutation (``P = I``) and a
positive (nflows) or free (zuko) diagonal; normflows stores ``P`` and ``sign_S`` as buffers.
:class:`FactoredLULinear` is ``LULinear`` with those two buffers passed in; everything else (maths,
VJPs, validation) is inherited unchanged. ``init`` returns the identity factors (``L = I``,
``U = 0``, ``log_scale = 0``), i.e. ``W = P·diag(sign)``.
"""

from __future__ import annotations

import numpy as np

from .._array import namespace
from ..bijectors._channel import ChannelBijector, _readonly
from ..bijectors.linear import LULinear


class FactoredLULinear(LULinear):
    """``W = P·L·(U + diag(sign ⊙ exp(log_scale)))`` with ``perm`` (P) and ``sign`` fixed by the caller.

    ``perm``: row indices, ``(P M) = M[perm]`` (default: identity); ``sign``: ±1 per channel
    (default: all +1).
    """

    def __init__(self, features: int, perm=None, sign=None, spatial: int = 0):
        ChannelBijector.__init__(self, features, spatial)
        c = self.features
        perm = np.arange(c) if perm is None else np.asarray(perm)
        sign = np.ones(c) if sign is None else np.asarray(sign, dtype=np.float64)
        if perm.shape != (c,) or perm.dtype.kind not in "iu" or not np.array_equal(np.sort(perm), np.arange(c)):
            raise self._error(f"perm must be a permutation of 0..{c - 1}, got {perm.tolist()}")
        if sign.shape != (c,) or not np.all(np.abs(sign) == 1):
            raise self._error(f"sign must be {c} entries of ±1, got {sign.tolist()}")
        self.seed = None
        self.perm = _readonly(perm.astype(np.intp))
        self.inverse_perm = _readonly(np.argsort(self.perm))
        self.sign = _readonly(sign)
        self._start = (np.zeros((c, c)), np.zeros((c, c)), np.zeros(c))

    def _init(self, rng, x):
        xp = namespace(x)
        lower, upper, log_s = (xp.asarray(a, dtype=x.dtype) for a in self._start)
        return {"lower": lower, "upper": upper, "log_scale": log_s}

    def __repr__(self) -> str:
        return f"FactoredLULinear({self.features}, perm={self.perm.tolist()}, sign={self.sign.tolist()})"
