"""A conditional layer seen as an ordinary bijector of ``[x | c]``: how its context gets checked.

A conditional layer ``z = f(x; c)`` (the contract in :mod:`rawflow.bijectors.bijector`) defines the
bijection of the joint rows

    F([vec(x) | c]) = [vec(f(x; c)) | c],      ∂F/∂(x, c) = [[∂z/∂x, ∂z/∂c], [0, I]]

whose log-det is the layer's, ``log|det ∂z/∂x|`` (block-triangular Jacobian), and whose VJP with
output cotangents ``[g_z | g_c]`` is ``[vec(gx) | gcontext + g_c]``. :class:`ContextAsInput` is that
bijector. Every check written for unconditional layers then applies unchanged, the context's
cotangent included: :func:`rawflow.check.check_bijector` (gradients of the input columns, which now
hold the context, against the complex step; the log-det against ``slogdet`` of the joint Jacobian),
the golden vectors, the test harness. Images are flattened, so the wrapper needs the concrete event
shape of the data (``(C, H, W)``).

Layout of a row: ``w = [x.reshape(N, −1) | c]`` (forward input), ``[z.reshape(N, −1) | c]``
(forward output = inverse input).
"""

from __future__ import annotations

import math

from .._array import namespace
from .bijector import Bijector


class ContextAsInput(Bijector):
    """``[vec(x) | c] ↦ [vec(f(x; c)) | c]`` for a conditional layer ``f`` (see the module doc).

    ``event_shape`` is the concrete shape of one ``x`` (default: the layer's, which must then have
    no free axes). ``params`` are the layer's.
    """

    def __init__(self, layer: Bijector, event_shape=None):
        if not isinstance(layer, Bijector) or layer.context_shape is None:
            raise ValueError(f"ContextAsInput: needs a conditional layer (context_shape set), got {layer!r}")
        shape = tuple(layer.event_shape if event_shape is None else event_shape)
        if any(d is None for d in shape):
            raise ValueError(f"ContextAsInput: {layer.name} has free axes in its event shape {shape}; "
                             "pass the concrete event_shape")
        self.layer = layer
        self.x_shape = tuple(int(d) for d in shape)
        self.z_shape = tuple(layer.output_shape(self.x_shape))
        (self.k,) = layer.context_shape
        self.dx, self.dz = math.prod(self.x_shape), math.prod(self.z_shape)
        self.event_shape = (self.dx + self.k,)
        self._out = (self.dz + self.k,)

    def __repr__(self) -> str:
        return f"ContextAsInput({self.layer!r}, {self.x_shape})"

    @property
    def name(self) -> str:
        return f"ContextAsInput({self.layer.name})"

    @property
    def out_event_shape(self) -> tuple:
        return self._out

    def output_shape(self, shape: tuple) -> tuple:
        return self._out

    @property
    def reconstruct(self) -> bool:
        """A memory-lean composite inside (its VJPs run at rebuilt points; the checks widen their bars)."""
        return bool(getattr(self.layer, "reconstruct", False))

    @property
    def data_dependent(self) -> bool:
        return self.layer.data_dependent

    def param_spec(self) -> dict:
        return self.layer.param_spec()

    # ------------------------------------------------------------------ [vec(x) | c] ↔ (x, c)
    def _cut(self, w, shape, size):
        return w[:, :size].reshape((w.shape[0],) + shape), w[:, size:]

    def _rows(self, a, c):
        # explicit sizes: a -1 cannot be inferred from an empty batch (N = 0)
        return namespace(a, c).concatenate([a.reshape(a.shape[0], math.prod(a.shape[1:])), c], axis=1)

    # ------------------------------------------------------------------ the bijector
    def _init(self, rng, w):
        x, c = self._cut(w, self.x_shape, self.dx)
        return self.layer._init(rng, x, c)

    def _forward(self, params, w):
        x, c = self._cut(w, self.x_shape, self.dx)
        z, logdet, cache = self.layer._forward(params, x, c)
        return self._rows(z, c), logdet, cache

    def _inverse(self, params, w):
        z, c = self._cut(w, self.z_shape, self.dz)
        x, logdet, cache = self.layer._inverse(params, z, c)
        return self._rows(x, c), logdet, cache

    def _forward_no_cache(self, params, w):
        x, c = self._cut(w, self.x_shape, self.dx)
        z, logdet = self.layer._forward_no_cache(params, x, c)
        return self._rows(z, c), logdet

    def _inverse_no_cache(self, params, w):
        z, c = self._cut(w, self.z_shape, self.dz)
        x, logdet = self.layer._inverse_no_cache(params, z, c)
        return self._rows(x, c), logdet

    def _backward(self, params, cache, g, glogdet):
        gz, gc_out = self._cut(g, self.z_shape, self.dz)
        gx, gparams, gc = self.layer._backward(params, cache, gz, glogdet)
        return self._rows(gx, gc + gc_out), gparams

    def _inverse_backward(self, params, cache, g, glogdet):
        gx, gc_out = self._cut(g, self.x_shape, self.dx)
        gz, gparams, gc = self.layer._inverse_backward(params, cache, gx, glogdet)
        return self._rows(gz, gc + gc_out), gparams
