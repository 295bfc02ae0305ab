"""Squeeze: 2×2 space-to-depth, ``(N, C, H, W) → (N, 4C, H/2, W/2)``, log-det 0.

Channel ordering (the one of Glow's ``squeeze2d`` and of the common PyTorch port
``x.view(N, C, H/2, 2, W/2, 2).permute(0, 1, 3, 5, 2, 4).reshape(N, 4C, H/2, W/2)``)::

    z[n, 4c + 2·di + dj, a, b] = x[n, c, 2a + di, 2b + dj]        di, dj ∈ {0, 1}

i.e. each input channel becomes four consecutive output channels, in row-major order of the
2×2 pixel block (top-left, top-right, bottom-left, bottom-right). It is a permutation of the
entries, so ``|det| = 1`` and the VJP of squeeze is unsqueeze (and vice versa). No arithmetic is
done: both directions are exact copies.
"""

from __future__ import annotations

import math

import numpy as np

from .._array import Array, namespace
from .bijector import Bijector


def squeeze2d(x: Array) -> Array:
    """``(N, C, H, W) → (N, 4C, H/2, W/2)``; H and W must be even."""
    n, c, h, w = x.shape
    z = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 3, 5, 2, 4)  # (N, C, di, dj, H/2, W/2)
    return z.reshape(n, 4 * c, h // 2, w // 2)


def unsqueeze2d(z: Array) -> Array:
    """``(N, 4C, h, w) → (N, C, 2h, 2w)``, the inverse of :func:`squeeze2d`."""
    n, c4, h, w = z.shape
    x = z.reshape(n, c4 // 4, 2, 2, h, w).transpose(0, 1, 4, 2, 5, 3)  # (N, C, h, di, w, dj)
    return x.reshape(n, c4 // 4, 2 * h, 2 * w)


class Squeeze(Bijector):
    """2×2 space-to-depth as a bijector: event ``(C, H, W) → (4C, H/2, W/2)``, any even H, W."""

    def __init__(self, channels: int):
        if isinstance(channels, bool) or not (isinstance(channels, (int, np.integer)) and channels >= 1):
            raise ValueError(f"Squeeze: channels must be a positive integer, got {channels!r}")
        self.channels = int(channels)
        self.event_shape = (self.channels, None, None)

    @property
    def out_event_shape(self) -> tuple:
        return (4 * self.channels, None, None)

    def __repr__(self) -> str:
        return f"Squeeze({self.channels})"

    def param_spec(self) -> dict:
        return {}

    def output_shape(self, shape: tuple) -> tuple:
        c, h, w = shape
        if h % 2 or w % 2:
            raise self._error(f"height and width must be even to squeeze 2×2, got H={h}, W={w}")
        return (4 * c, h // 2, w // 2)

    def _check_even(self, x: Array, what: str) -> None:
        h, w = x.shape[2], x.shape[3]
        if h % 2 or w % 2:
            raise self._error(f"{what} height and width must be even to squeeze 2×2, got H={h}, W={w}")

    def _zeros(self, x: Array) -> Array:
        return namespace(x).zeros(x.shape[0], dtype=x.dtype)

    def _forward(self, params, x):
        # Checked here, not in `forward`, so that a chain (which calls `_forward`) reports it too.
        self._check_even(x, "input")
        return squeeze2d(x), self._zeros(x), None

    def _inverse(self, params, z):
        return unsqueeze2d(z), self._zeros(z), None

    def _backward(self, params, cache, gz, glogdet):
        return unsqueeze2d(gz), {}

    def _inverse_backward(self, params, cache, gx, glogdet):
        self._check_even(gx, "cotangent")
        return squeeze2d(gx), {}


class Flatten(Bijector):
    """``(N, *shape) → (N, prod(shape))``, row-major (a reshape): log-det 0, exact both ways.

    NICE on images is ``Chain([Flatten(shape), ...vector layers...])``.
    """

    def __init__(self, shape):
        shape = tuple(int(d) for d in shape)
        if not shape or any(d < 1 for d in shape):
            raise ValueError(f"Flatten: shape must be positive sizes, got {shape}")
        self.event_shape = shape
        self.size = math.prod(shape)

    @property
    def out_event_shape(self) -> tuple:
        return (self.size,)

    def output_shape(self, shape: tuple) -> tuple:
        if tuple(int(d) for d in shape) != self.event_shape:
            raise self._error(f"built for events of shape {self.event_shape}, got {tuple(shape)}")
        return (self.size,)

    def param_spec(self) -> dict:
        return {}

    def _forward(self, params, x):
        return x.reshape(x.shape[0], self.size), namespace(x).zeros(x.shape[0], dtype=x.dtype), None

    def _inverse(self, params, z):
        return z.reshape((z.shape[0],) + self.event_shape), namespace(z).zeros(z.shape[0], dtype=z.dtype), None

    def _backward(self, params, cache, gz, glogdet):
        return gz.reshape((gz.shape[0],) + self.event_shape), {}

    def _inverse_backward(self, params, cache, gx, glogdet):
        return gx.reshape(gx.shape[0], self.size), {}
