"""Partitions of the features (axis 1) into a copied part ``a`` and a transformed part ``b``.

``split(x) -> (x_a, x_b)`` and ``merge(x_a, x_b) -> x`` are exact copies (no arithmetic), so the
copied half of a coupling is bit-identical in both directions. Works on any array whose axis 1 is
the partitioned one: ``(N, D)`` vectors or ``(N, C, H, W)`` images split by channel.
"""

from __future__ import annotations

import numpy as np

from .._array import Array, namespace


class Partition:
    """Split axis 1 by a boolean mask: ``mask[i]`` True means feature ``i`` is copied."""

    def __init__(self, mask):
        mask = np.asarray(mask)
        if mask.ndim != 1 or mask.dtype != bool:
            raise ValueError(f"Partition: mask must be a 1-D boolean array, got {mask.dtype} {mask.shape}")
        if mask.all() or not mask.any():
            raise ValueError("Partition: mask must copy at least one feature and transform at least one")
        self.mask = mask
        self.features = mask.size
        self.idx_a = np.flatnonzero(mask)
        self.idx_b = np.flatnonzero(~mask)
        order = np.concatenate([self.idx_a, self.idx_b])
        self._inv = np.argsort(order)
        # Contiguous blocks are split by slicing (views) and merged by concatenation.
        self._slices = None
        if _is_range(self.idx_a) and _is_range(self.idx_b):
            self._slices = (slice(self.idx_a[0], self.idx_a[-1] + 1), slice(self.idx_b[0], self.idx_b[-1] + 1))

    @classmethod
    def half(cls, features: int, flip: bool = False) -> "Partition":
        """First ``features // 2`` copied, the rest transformed; ``flip`` swaps the roles."""
        if features < 2:
            raise ValueError(f"Partition: a half split needs at least 2 features, got {features}")
        mask = np.arange(features) < features // 2
        return cls(~mask if flip else mask)

    @property
    def size_a(self) -> int:
        return self.idx_a.size

    @property
    def size_b(self) -> int:
        return self.idx_b.size

    def flipped(self) -> "Partition":
        return Partition(~self.mask)

    def split(self, x: Array) -> tuple[Array, Array]:
        if self._slices is not None:
            sa, sb = self._slices
            return x[:, sa], x[:, sb]
        xp = namespace(x)
        return xp.take(x, xp.asarray(self.idx_a), axis=1), xp.take(x, xp.asarray(self.idx_b), axis=1)

    def merge(self, xa: Array, xb: Array) -> Array:
        xp = namespace(xa, xb)
        if self._slices is not None:
            first_a = self._slices[0].start == 0
            return xp.concatenate([xa, xb] if first_a else [xb, xa], axis=1)
        return xp.take(xp.concatenate([xa, xb], axis=1), xp.asarray(self._inv), axis=1)

    def __repr__(self) -> str:
        return f"Partition(copied={self.idx_a.tolist()})"


def _is_range(idx: np.ndarray) -> bool:
    return idx.size > 0 and bool(np.all(np.diff(idx) == 1))
