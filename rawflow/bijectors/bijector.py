"""The bijector contract every rawflow layer keeps.

Direction convention: **forward = data → latent** (the training direction). For a batch
``x: (N, *event_shape)``

    z, logdet, cache = layer.forward(params, x)        # logdet = log|det ∂z/∂x|, shape (N,)
    x, logdet_inv, cache = layer.inverse(params, z)    # logdet_inv = -logdet at matching points
    gx, gparams = layer.backward(params, cache, gz, glogdet)           # VJP of forward
    gz, gparams = layer.inverse_backward(params, cache, gx, glogdet)   # VJP of inverse

* ``params`` is a tree (nested ``dict[str, array]``, see :mod:`rawflow.tree`) of *learned* arrays;
  ``gparams`` has exactly its structure. Fixed buffers (masks, permutations, the P and sign of an
  LU factorisation) are attributes of the layer object, chosen at construction, never in ``params``.
* ``glogdet`` is the cotangent of the log-det output, shape ``(N,)``; its contribution is part of
  the VJP. A scalar objective ``L(z, logdet)`` has ``gz = ∂L/∂z``, ``glogdet = ∂L/∂logdet``.
* ``cache`` describes a *point* of the bijection (an ``(x, z)`` pair and intermediates). The cache
  returned by ``forward`` and the one returned by ``inverse`` at the matching point are
  interchangeable: ``backward`` and ``inverse_backward`` accept either. That is what lets a chain
  rebuild a layer's cache from its output alone (see :class:`rawflow.bijectors.chain.Chain`).
* The public methods validate their inputs and raise ``ValueError`` naming the layer; subclasses
  implement the unchecked ``_forward``, ``_inverse``, ``_backward``, ``_inverse_backward``, which a
  chain calls directly once it has validated its own input.
* Nothing is stored on the layer by any call: calls can overlap and nothing needs flushing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from .. import tree as _tree
from .._array import Array, namespace


class Bijector(ABC):
    """Base class: validation and the public contract; subclasses provide the maths."""

    #: shape of one sample at the input (forward direction); ``None`` entries match any size.
    event_shape: tuple = ()

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def out_event_shape(self) -> tuple:
        """Shape of one sample at the output; the same as the input unless a layer reshapes."""
        return self.event_shape

    def output_shape(self, shape: tuple) -> tuple:
        """Concrete event shape of the output for an input of concrete event shape ``shape``.

        The default keeps the input's size wherever ``out_event_shape`` says ``None``; layers that
        reshape (squeeze, flatten) override it.
        """
        out = self.out_event_shape
        if len(out) != len(shape):
            raise self._error(f"cannot map an event of shape {tuple(shape)} (expected {len(out)} axes)")
        return tuple(int(s) if o is None else int(o) for o, s in zip(out, shape))

    # ------------------------------------------------------------------ public, validated
    def init(self, rng: np.random.Generator, x: Array) -> dict:
        """Parameters for this layer, in ``x``'s dtype and array namespace.

        ``x`` is an example batch; data-dependent layers (ActNorm) initialise from it.
        """
        self._check_array(x, self.event_shape, "input")
        return self._init(rng, x)

    def forward(self, params: dict, x: Array):
        """``(z, logdet, cache)`` with ``z = f(x)`` and ``logdet = log|det ∂z/∂x|: (N,)``."""
        self._check_call(params, x, self.event_shape, "input")
        return self._forward(params, x)

    def inverse(self, params: dict, z: Array):
        """``(x, logdet_inv, cache)`` with ``x = f⁻¹(z)`` and ``logdet_inv = log|det ∂x/∂z|``."""
        self._check_call(params, z, self.out_event_shape, "latent input")
        return self._inverse(params, z)

    def backward(self, params: dict, cache: Any, gz: Array, glogdet: Array):
        """VJP of ``forward``: ``(gx, gparams)`` given cotangents of ``z`` and ``logdet``."""
        self._check_cotangents(params, gz, glogdet, self.out_event_shape)
        return self._backward(params, cache, gz, glogdet)

    def inverse_backward(self, params: dict, cache: Any, gx: Array, glogdet: Array):
        """VJP of ``inverse``: ``(gz, gparams)`` given cotangents of ``x`` and ``logdet_inv``."""
        self._check_cotangents(params, gx, glogdet, self.event_shape)
        return self._inverse_backward(params, cache, gx, glogdet)

    # ------------------------------------------------------------------ to implement
    def _init(self, rng, x):
        return {}

    @abstractmethod
    def _forward(self, params, x):
        ...

    @abstractmethod
    def _inverse(self, params, z):
        ...

    @abstractmethod
    def _backward(self, params, cache, gz, glogdet):
        ...

    @abstractmethod
    def _inverse_backward(self, params, cache, gx, glogdet):
        ...

    # ------------------------------------------------------------------ validation
    def _error(self, message: str) -> ValueError:
        return ValueError(f"{self.name}: {message}")

    def _check_array(self, x: Any, event_shape: tuple, what: str) -> None:
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise self._error(f"{what} must be an array, got {type(x).__name__}")
        want = 1 + len(event_shape)
        if x.ndim != want:
            raise self._error(
                f"{what} must have {want} dimensions (N, {', '.join(map(_dim, event_shape))}), "
                f"got shape {tuple(x.shape)}"
            )
        for axis, (have, expect) in enumerate(zip(x.shape[1:], event_shape), start=1):
            if expect is not None and have != expect:
                raise self._error(
                    f"{what} has size {have} on axis {axis}, expected {expect} "
                    f"(shape {tuple(x.shape)})"
                )
        kind = np.dtype(x.dtype).kind
        if kind not in "fc":
            raise self._error(f"{what} must be a floating-point array, got dtype {x.dtype}")
        if not bool(namespace(x).isfinite(x).all()):
            raise self._error(f"{what} contains NaN or Inf")

    def _check_call(self, params: dict, x: Array, event_shape: tuple, what: str) -> None:
        self._check_array(x, event_shape, what)
        for path, leaf in _tree.leaves(params):
            if leaf.dtype != x.dtype:
                raise self._error(
                    f"parameter '{path}' has dtype {leaf.dtype} but the {what} has dtype {x.dtype}; "
                    "cast one to match"
                )

    def _check_cotangents(self, params: dict, g: Array, glogdet: Array, event_shape: tuple) -> None:
        self._check_call(params, g, event_shape, "cotangent")
        if tuple(glogdet.shape) != (g.shape[0],):
            raise self._error(
                f"log-det cotangent must have shape ({g.shape[0]},), got {tuple(glogdet.shape)}"
            )
        if glogdet.dtype != g.dtype:
            raise self._error(f"log-det cotangent dtype {glogdet.dtype} differs from {g.dtype}")


def _dim(d) -> str:
    return "*" if d is None else str(d)
