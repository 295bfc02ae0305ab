"""Multi-scale flows (RealNVP, Glow): levels that each factor out part of their channels.

``MultiScale(levels, keep, image_shape)`` maps images ``x: (N, C, H, W)`` to one flat latent
``z: (N, C·H·W)``. Level ``l`` (any bijector, typically a :class:`~rawflow.bijectors.chain.Chain` ending in a
:class:`~rawflow.bijectors.split.Split`) maps its input to ``h_l``; its first ``keep[l]`` channels go on to level
``l + 1`` and the rest, ``ε_l``, leave the flow::

    h_0 = level_0(x);     ε_0 = h_0[:, keep_0:],   x_1 = h_0[:, :keep_0]
    h_1 = level_1(x_1);   ε_1 = h_1[:, keep_1:],   ...
    z = [vec(ε_0), vec(ε_1), ..., vec(h_last)]          logdet = Σ_l logdet_l

With Glow's split prior inside each level (``Split`` standardises the factored half with a mean and
log-std computed from the kept half), a standard normal prior on ``z`` is exactly Glow's
multi-scale likelihood; the last level may end with a zero-initialised :class:`~rawflow.bijectors.actnorm.ActNorm`
(``data_init=False``): a learned top prior. Parameters: ``{"0": level_0 params, "1": ...}``.

VJPs: ``gz`` is cut into the same pieces; going back from the last level, each level receives
``[g(kept part from the level above), g(ε_l)]`` along channels. ``reconstruct=True`` keeps only
``(x, z)`` and rebuilds each level's output from ``z`` and the level above's rebuilt input, running
the level's ``inverse`` right before its VJP (levels that are reconstructing chains do the same
inside), so activation memory does not grow with depth.

Levels that take a context (e.g. Glow's split prior conditioned on a class,
:class:`~rawflow.bijectors.conditional_prior.ConditionalSplit`) make the flow conditional, as a
:class:`~rawflow.bijectors.chain.Chain` does: the context goes to those levels only and the VJPs
also return the sum of their context cotangents.
"""

from __future__ import annotations

import math
from typing import Sequence

from .._array import namespace
from .bijector import (Bijector, common_context, run_backward, run_forward, run_forward_no_cache, run_init,
                       run_inverse, run_inverse_backward, run_inverse_no_cache)


class MultiScale(Bijector):
    def __init__(self, levels: Sequence[Bijector], keep: Sequence[int], image_shape, *, reconstruct: bool = False):
        levels, keep = list(levels), [int(k) for k in keep]
        if not levels:
            raise ValueError("MultiScale: needs at least one level")
        if len(keep) != len(levels) - 1:
            raise ValueError(f"MultiScale: keep needs one entry per level but the last ({len(levels) - 1}), got {len(keep)}")
        self.levels, self.keep = levels, keep
        self.event_shape = tuple(int(d) for d in image_shape)
        self.reconstruct = bool(reconstruct)
        self.context_shape = common_context("MultiScale", levels)
        # Concrete shapes: each level's output, and the factored / kept parts.
        self.level_in, self.level_out = [], []
        shape = self.event_shape
        for i, level in enumerate(levels):
            self.level_in.append(shape)
            out = level.output_shape(shape)
            self.level_out.append(out)
            if i < len(keep):
                if not 0 < keep[i] < out[0]:
                    raise ValueError(f"MultiScale: level {i} outputs {out[0]} channels, cannot keep {keep[i]}")
                shape = (keep[i],) + tuple(out[1:])
        self.pieces = [(out[0] - k,) + tuple(out[1:]) for out, k in zip(self.level_out, keep)]
        self.pieces.append(self.level_out[-1])
        self.sizes = [math.prod(p) for p in self.pieces]
        self.size = sum(self.sizes)
        if self.size != math.prod(self.event_shape):
            raise ValueError(f"MultiScale: latent size {self.size} ≠ input size {math.prod(self.event_shape)}")

    @property
    def out_event_shape(self) -> tuple:
        return (self.size,)

    def param_spec(self) -> dict:
        return {str(i): level.param_spec() for i, level in enumerate(self.levels)}

    @property
    def data_dependent(self) -> bool:
        return any(level.data_dependent for level in self.levels)

    def output_shape(self, shape: tuple) -> tuple:
        if tuple(shape) != self.event_shape:
            raise self._error(f"built for images of shape {self.event_shape}, got {tuple(shape)}")
        return (self.size,)

    # ------------------------------------------------------------------ pieces of the flat latent
    def _cut(self, z):
        n, out, start = z.shape[0], [], 0
        for shape, size in zip(self.pieces, self.sizes):
            out.append(z[:, start:start + size].reshape((n,) + shape))
            start += size
        return out

    def _join(self, pieces):
        n = pieces[0].shape[0]
        # explicit sizes: a -1 cannot be inferred from an empty batch (N = 0)
        return namespace(pieces[0]).concatenate([p.reshape(n, math.prod(p.shape[1:])) for p in pieces], axis=1)

    def _merge(self, kept, factored):
        return namespace(kept).concatenate([kept, factored], axis=1)

    # ------------------------------------------------------------------ the bijector
    def _init(self, rng, x, context=None):
        params = {}
        for i, level in enumerate(self.levels):
            params[str(i)] = run_init(level, rng, x, context)
            h = run_forward(level, params[str(i)], x, context)[0]
            x = h[:, : self.keep[i]] if i < len(self.keep) else h
        return params

    def _ends(self, x, z, context):
        return (x, z) if context is None else (x, z, context)

    def _finish(self, g, gparams, gcontext):
        return (g, gparams) if self.context_shape is None else (g, gparams, gcontext)

    def _forward(self, params, x, context=None):
        if self.reconstruct:  # keeps only its ends: the levels need not build caches at all
            z, total = self._forward_no_cache(params, x, context)
            return z, total, self._ends(x, z, context)
        total, caches, pieces = 0, [], []
        for i, level in enumerate(self.levels):
            h, logdet, cache = run_forward(level, params[str(i)], x, context)
            total = total + logdet
            caches.append(cache)
            if i < len(self.keep):
                pieces.append(h[:, self.keep[i]:])
                x = h[:, : self.keep[i]]
            else:
                pieces.append(h)
        return self._join(pieces), total, caches

    def _inverse(self, params, z, context=None):
        if self.reconstruct:
            x, total = self._inverse_no_cache(params, z, context)
            return x, total, self._ends(x, z, context)
        pieces = self._cut(z)
        total, caches = 0, [None] * len(self.levels)
        h = pieces[-1]
        for i in reversed(range(len(self.levels))):
            if i < len(self.keep):
                h = self._merge(h, pieces[i])
            h, logdet, caches[i] = run_inverse(self.levels[i], params[str(i)], h, context)
            total = total + logdet
        return h, total, caches

    def _forward_no_cache(self, params, x, context=None):
        total, pieces = 0, []
        for i, level in enumerate(self.levels):
            h, logdet = run_forward_no_cache(level, params[str(i)], x, context)
            total = total + logdet
            if i < len(self.keep):
                pieces.append(h[:, self.keep[i]:])
                x = h[:, : self.keep[i]]
            else:
                pieces.append(h)
        return self._join(pieces), total

    def _inverse_no_cache(self, params, z, context=None):
        pieces = self._cut(z)
        total = 0
        h = pieces[-1]
        for i in reversed(range(len(self.levels))):
            if i < len(self.keep):
                h = self._merge(h, pieces[i])
            h, logdet = run_inverse_no_cache(self.levels[i], params[str(i)], h, context)
            total = total + logdet
        return h, total

    def _backward(self, params, cache, gz, glogdet):
        gpieces = self._cut(gz)
        pieces = self._cut(cache[1]) if self.reconstruct else None
        context = cache[2] if self.reconstruct and len(cache) == 3 else None
        gparams, gcontext = {}, None
        g, h = gpieces[-1], (pieces[-1] if pieces else None)
        for i in reversed(range(len(self.levels))):
            level, p = self.levels[i], params[str(i)]
            if i < len(self.keep):
                g = self._merge(g, gpieces[i])
                if pieces:
                    h = self._merge(h, pieces[i])
            if self.reconstruct:
                h, _, level_cache = run_inverse(level, p, h, context)
            else:
                level_cache = cache[i]
            g, gparams[str(i)], gc = run_backward(level, p, level_cache, g, glogdet)
            del level_cache
            if gc is not None:
                gcontext = gc if gcontext is None else gcontext + gc
        return self._finish(g, gparams, gcontext)

    def _inverse_backward(self, params, cache, gx, glogdet):
        x = cache[0] if self.reconstruct else None
        context = cache[2] if self.reconstruct and len(cache) == 3 else None
        gparams, gpieces, gcontext = {}, [], None
        g = gx
        for i, level in enumerate(self.levels):
            p = params[str(i)]
            if self.reconstruct:
                h, _, level_cache = run_forward(level, p, x, context)
            else:
                level_cache = cache[i]
            g, gparams[str(i)], gc = run_inverse_backward(level, p, level_cache, g, glogdet)
            del level_cache
            if gc is not None:
                gcontext = gc if gcontext is None else gcontext + gc
            if i < len(self.keep):
                gpieces.append(g[:, self.keep[i]:])
                g = g[:, : self.keep[i]]
                if self.reconstruct:
                    x = h[:, : self.keep[i]]
            else:
                gpieces.append(g)
        return self._finish(self._join(gpieces), gparams, gcontext)
