"""Fixed permutations of axis 1 (features of ``(N, D)`` vectors or channels of ``(N, C, H, W)`` images).

Permutations (forward = data → latent)::

    z[:, i] = x[:, perm[i]]          x[:, j] = z[:, inv[j]]      inv = argsort(perm)
    logdet = 0                       (a permutation matrix has |det| = 1)
    gx = gz[:, inv]                  gz = gx[:, perm]            (VJPs: the transposed permutation)

No parameters (``params = {}``); every output is an exact copy, so round trips are bit-exact.
"""

from __future__ import annotations

import numpy as np

from .._array import Array, namespace
from ._channel import ChannelBijector, _readonly


class Permutation(ChannelBijector):
    """``z[:, i] = x[:, perm[i]]``: a fixed permutation of the features / channels.

    ``perm`` is drawn once at construction from ``np.random.default_rng(seed)`` unless given
    explicitly; ``seed`` defaults to 0, so a layer rebuilt from its configuration is the same layer
    (give each permutation of a model its own seed). ``perm`` and ``inverse_perm`` are read-only host
    arrays (fixed buffers, not parameters).
    """

    def __init__(self, features: int, seed: int | None = None, perm=None, spatial: int = 0):
        super().__init__(features, spatial)
        if perm is None:
            perm = np.random.default_rng(0 if seed is None else seed).permutation(self.features)
        elif seed is not None:
            raise self._error("pass either seed (to draw a permutation) or perm, not both")
        perm = np.asarray(perm)
        if perm.ndim != 1 or perm.dtype.kind not in "iu":
            raise self._error(f"perm must be a 1-D integer array, got dtype {perm.dtype} shape {perm.shape}")
        if perm.size != self.features or not np.array_equal(np.sort(perm), np.arange(self.features)):
            raise self._error(f"perm must be a permutation of 0..{self.features - 1}, got {perm.tolist()}")
        self.perm = _readonly(perm.astype(np.intp))
        self.inverse_perm = _readonly(np.argsort(self.perm))

    def param_spec(self) -> dict:
        return {}

    def _take(self, a: Array, index: np.ndarray) -> Array:
        xp = namespace(a)
        return xp.take(a, xp.asarray(index), axis=1)

    def _forward(self, params, x):
        z = self._take(x, self.perm)
        return z, namespace(x).zeros(x.shape[0], dtype=x.dtype), None

    def _inverse(self, params, z):
        x = self._take(z, self.inverse_perm)
        return x, namespace(z).zeros(z.shape[0], dtype=z.dtype), None

    def _backward(self, params, cache, gz, glogdet):
        return self._take(gz, self.inverse_perm), {}

    def _inverse_backward(self, params, cache, gx, glogdet):
        return self._take(gx, self.perm), {}


class Reverse(Permutation):
    """``z[:, i] = x[:, D−1−i]``: reverse the order of the features / channels (RealNVP, Glow)."""

    def __init__(self, features: int, spatial: int = 0):
        ChannelBijector.__init__(self, features, spatial)  # validates features before arange uses it
        super().__init__(self.features, perm=np.arange(self.features)[::-1], spatial=spatial)
