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
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .._array import Array
from .bijector import Bijector


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

    def _init(self, rng: np.random.Generator, x: Array) -> dict:
        params = {}
        for i, layer in enumerate(self.layers):
            # Data-dependent layers (ActNorm) see the batch as it arrives at their depth.
            params[str(i)] = layer._init(rng, x)
            x = layer._forward(params[str(i)], x)[0]
        return params

    def _forward(self, params, x):
        if self.reconstruct:  # keeps only its ends: the layers need not build caches at all
            z, total = self._forward_no_cache(params, x)
            return z, total, (x, z)
        total = 0
        caches = []
        for i, layer in enumerate(self.layers):
            x, logdet, cache = layer._forward(params[str(i)], x)
            total = total + logdet
            caches.append(cache)
        return x, total, caches

    def _inverse(self, params, z):
        if self.reconstruct:
            x, total = self._inverse_no_cache(params, z)
            return x, total, (x, z)
        total = 0
        caches = [None] * len(self.layers)
        for i in reversed(range(len(self.layers))):
            z, logdet, caches[i] = self.layers[i]._inverse(params[str(i)], z)
            total = total + logdet
        return z, total, caches

    def _forward_no_cache(self, params, x):
        total = 0
        for i, layer in enumerate(self.layers):
            x, logdet = layer._forward_no_cache(params[str(i)], x)
            total = total + logdet
        return x, total

    def _inverse_no_cache(self, params, z):
        total = 0
        for i in reversed(range(len(self.layers))):
            z, logdet = self.layers[i]._inverse_no_cache(params[str(i)], z)
            total = total + logdet
        return z, total

    def _backward(self, params, cache, gz, glogdet):
        gparams = {}
        if self.reconstruct:
            _, z = cache
            for i in reversed(range(len(self.layers))):
                layer, p = self.layers[i], params[str(i)]
                z, _, layer_cache = layer._inverse(p, z)
                gz, gparams[str(i)] = layer._backward(p, layer_cache, gz, glogdet)
                del layer_cache
        else:
            for i in reversed(range(len(self.layers))):
                gz, gparams[str(i)] = self.layers[i]._backward(params[str(i)], cache[i], gz, glogdet)
        return gz, gparams

    def _inverse_backward(self, params, cache, gx, glogdet):
        gparams = {}
        if self.reconstruct:
            x, _ = cache
            for i, layer in enumerate(self.layers):
                p = params[str(i)]
                x, _, layer_cache = layer._forward(p, x)
                gx, gparams[str(i)] = layer._inverse_backward(p, layer_cache, gx, glogdet)
                del layer_cache
        else:
            for i, layer in enumerate(self.layers):
                gx, gparams[str(i)] = layer._inverse_backward(params[str(i)], cache[i], gx, glogdet)
        return gx, gparams


def _shapes_compatible(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(p is None or q is None or p == q for p, q in zip(a, b))
