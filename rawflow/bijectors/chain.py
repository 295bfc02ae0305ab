"""A chain of bijectors is itself a bijector, with a cached or a memory-lean backward.

``Chain([f1, f2, ..., fK])`` maps ``x → fK(...f2(f1(x)))`` (layers applied in list order), with
``logdet = Σ_k logdet_k``. Parameters are ``{"0": params_1, "1": params_2, ...}``.

Two ways to run the backward pass, chosen explicitly at construction:

* ``reconstruct=False`` (cached): ``forward`` keeps every layer's cache; activation memory grows
  linearly with depth K.
* ``reconstruct=True`` (memory-lean): ``forward`` keeps only its input and output. ``backward``
  walks the layers from the output, rebuilding each layer's input (and its cache) with that layer's
  ``inverse`` right before its VJP, so at most one layer's intermediates are alive at a time and
  activation memory does not grow with K. The gradients equal the cached path's to round-off (the
  rebuilt inputs differ from the originals by the inverse's round-off). ``inverse_backward`` does
  the mirror image, rebuilding with ``forward``.

Every layer receives the same ``glogdet``, since ``∂(Σ_k logdet_k)/∂logdet_k = 1``.

A chain holding conditional layers (:mod:`rawflow.bijectors.conditional`) is conditional: its
``context_shape`` is theirs (they must agree), ``forward``/``inverse`` take ``context=`` and hand it
to those layers only, and its VJPs return ``(g, gparams, gcontext)`` with ``gcontext`` the sum of
their context cotangents. A reconstructing chain keeps the context with its end points.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .._array import Array
from .bijector import (Bijector, common_context, run_backward, run_forward, run_forward_no_cache, run_init,
                       run_inverse, run_inverse_backward, run_inverse_no_cache)


class Chain(Bijector):
    def __init__(self, layers: Sequence[Bijector], *, reconstruct: bool = False):
        if len(layers) == 0:
            raise ValueError("Chain: needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Bijector):
                raise ValueError(f"Chain: layer {i} ({type(layer).__name__}) is not a Bijector")
        for i, (a, b) in enumerate(zip(layers[:-1], layers[1:])):
            if not _shapes_compatible(a.out_event_shape, b.event_shape):
                raise ValueError(
                    f"Chain: layer {i} ({a.name}) outputs event shape {a.out_event_shape} "
                    f"but layer {i + 1} ({b.name}) expects {b.event_shape}"
                )
        self.layers = list(layers)
        self.reconstruct = bool(reconstruct)
        self.event_shape = self.layers[0].event_shape
        self.context_shape = common_context("Chain", self.layers)

    @property
    def out_event_shape(self) -> tuple:
        return self.layers[-1].out_event_shape

    def output_shape(self, shape: tuple) -> tuple:
        for layer in self.layers:
            shape = layer.output_shape(shape)
        return shape

    def __len__(self) -> int:
        return len(self.layers)

    def param_spec(self) -> dict:
        return {str(i): layer.param_spec() for i, layer in enumerate(self.layers)}

    @property
    def data_dependent(self) -> bool:
        return any(layer.data_dependent for layer in self.layers)

    def _init(self, rng: np.random.Generator, x: Array, context: Array | None = None) -> dict:
        params = {}
        for i, layer in enumerate(self.layers):
            # Data-dependent layers (ActNorm) see the batch as it arrives at their depth.
            params[str(i)] = run_init(layer, rng, x, context)
            x = run_forward(layer, params[str(i)], x, context)[0]
        return params

    def _ends(self, x_in, x_out, context):
        """A reconstructing chain's cache: its end points (and the context, if it takes one)."""
        return (x_in, x_out) if context is None else (x_in, x_out, context)

    def _forward(self, params, x, context=None):
        if self.reconstruct:  # keeps only its ends: the layers need not build caches at all
            z, total = self._forward_no_cache(params, x, context)
            return z, total, self._ends(x, z, context)
        total = 0
        caches = []
        for i, layer in enumerate(self.layers):
            x, logdet, cache = run_forward(layer, params[str(i)], x, context)
            total = total + logdet
            caches.append(cache)
        return x, total, caches

    def _inverse(self, params, z, context=None):
        if self.reconstruct:
            x, total = self._inverse_no_cache(params, z, context)
            return x, total, self._ends(x, z, context)
        total = 0
        caches = [None] * len(self.layers)
        for i in reversed(range(len(self.layers))):
            z, logdet, caches[i] = run_inverse(self.layers[i], params[str(i)], z, context)
            total = total + logdet
        return z, total, caches

    def _forward_no_cache(self, params, x, context=None):
        total = 0
        for i, layer in enumerate(self.layers):
            x, logdet = run_forward_no_cache(layer, params[str(i)], x, context)
            total = total + logdet
        return x, total

    def _inverse_no_cache(self, params, z, context=None):
        total = 0
        for i in reversed(range(len(self.layers))):
            z, logdet = run_inverse_no_cache(self.layers[i], params[str(i)], z, context)
            total = total + logdet
        return z, total

    def _finish(self, g, gparams, gcontext):
        return (g, gparams) if self.context_shape is None else (g, gparams, gcontext)

    def _backward(self, params, cache, gz, glogdet):
        gparams, gcontext = {}, None
        if self.reconstruct:
            z, context = cache[1], cache[2] if len(cache) == 3 else None
        for i in reversed(range(len(self.layers))):
            layer, p = self.layers[i], params[str(i)]
            if self.reconstruct:
                z, _, layer_cache = run_inverse(layer, p, z, context)
            else:
                layer_cache = cache[i]
            gz, gparams[str(i)], gc = run_backward(layer, p, layer_cache, gz, glogdet)
            del layer_cache
            if gc is not None:
                gcontext = gc if gcontext is None else gcontext + gc
        return self._finish(gz, gparams, gcontext)

    def _inverse_backward(self, params, cache, gx, glogdet):
        gparams, gcontext = {}, None
        if self.reconstruct:
            x, context = cache[0], cache[2] if len(cache) == 3 else None
        for i, layer in enumerate(self.layers):
            p = params[str(i)]
            if self.reconstruct:
                x, _, layer_cache = run_forward(layer, p, x, context)
            else:
                layer_cache = cache[i]
            gx, gparams[str(i)], gc = run_inverse_backward(layer, p, layer_cache, gx, glogdet)
            del layer_cache
            if gc is not None:
                gcontext = gc if gcontext is None else gcontext + gc
        return self._finish(gx, gparams, gcontext)


def _shapes_compatible(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(p is None or q is None or p == q for p, q in zip(a, b))
