"""Glow's priors with openai/glow's class conditioning (``--ycond``), as bijectors.

openai/glow's ``prior()`` scores the top latent ``z: (N, C, H, W)`` under ``N(μ, exp(2ℓ))`` per
channel with (``model.py``; ``c`` the one-hot label, ``f = 3``)::

    h = b ⊙ exp(f·logs)                       learntop: Conv2dZeros of a zero input = its bias
      + (c·Wᵀ + b_c) ⊙ exp(f·logs_c)          ycond: linear_zeros(y_onehot, 2C)
    μ = h[:, :C],  ℓ = h[:, C:]               (per sample and channel; constant over pixels)

Both terms start at zero (a standard normal). As a bijector that prior is the standardisation
(:class:`GlowTop`), like :class:`~rawflow.bijectors.split.Split` is the split prior's::

    forward:  u = (z − μ) / σ,   σ = exp(ℓ),     logdet     = −H·W·Σ_c ℓ_c       (per sample)
    inverse:  z = μ + σ ⊙ u,                      logdet_inv = +H·W·Σ_c ℓ_c

so ``log N(u; 0, I) + logdet = log N(z; μ, σ²)``: openai's ``pz.logp(z)`` exactly (with ``learn_top``
and no context it is :class:`~rawflow.bijectors.split.GlowTopPrior`'s density). VJPs (``g_u``, ``gλ``
cotangents of ``u`` and the log-det; ``Σ`` over pixels; ``gh = [gμ, gℓ]: (N, 2C)`` then goes through
the two terms, giving the parameters' cotangents and the context's)::

    forward:  gz = g_u/σ,  gμ = −Σ g_u/σ,  gℓ = −Σ g_u ⊙ u − H·W·gλ
    inverse:  gu = g_z ⊙ σ, gμ = Σ g_z,   gℓ = Σ gu ⊙ u + H·W·gλ
    top:      gb = Σ_n gh ⊙ exp(f·logs),  glogs = f·Σ_n gh ⊙ h_top
    context:  LinearZerosᵀ(gh)  (see rawflow.nets.context)

:class:`ConditionalSplit` is Glow's split prior with the same class term added to its ``h``
(an option openai/glow's code does not use; the issue that asked for it calls it optional):
``h = ZeroConv2d(x₁) + LinearZeros(c)`` broadcast over the pixels, interleaved ``μ = h[:, 0::2]``,
``ℓ = h[:, 1::2]`` as in :class:`~rawflow.bijectors.split.Split`; its VJP adds the context's cotangent
``LinearZerosᵀ(Σ_{h,w} gh)``. Its ``factor``/``unfactor`` helpers take no context: use the bijector
methods.

:class:`MultiScalePrior` is the prior of a multi-scale flow's flat latent with :class:`GlowTop` on
its top part: what a class-conditional Glow (:func:`rawflow.models.architectures.class_conditional_glow`)
scores its latent with, so that the top latent before the class term stays visible to the
classifier head.
"""

from __future__ import annotations

import numpy as np

from .._array import namespace
from ..distributions.priors import Prior, StandardNormal
from ..nets.context import LinearZeros
from .bijector import Bijector, run_backward, run_forward, run_init, run_inverse
from .split import Split


def _context_features(name: str, context) -> int | None:
    if context is None:
        return None
    if isinstance(context, bool) or not isinstance(context, (int, np.integer)) or context < 1:
        raise ValueError(f"{name}: context must be None or a positive integer (the context's features, e.g. the "
                         f"number of classes for a one-hot label), got {context!r}")
    return int(context)


class GlowTop(Bijector):
    """Glow's top prior as a bijector ``z ↦ (z − μ)/σ`` over ``(N, C, H, W)`` (see the module doc).

    ``learn_top``: openai's ``--learntop`` term ``b ⊙ exp(3·logs)`` (params ``{"top": {"b", "logs"}}``);
    ``context=K``: openai's ``--ycond`` term ``LinearZeros(c)`` (params ``{"context": {"w", "b", "logs"}}``,
    ``w: (2C, K)``). At least one of them; both start at zero.
    """

    def __init__(self, channels: int, *, context: int | None = None, learn_top: bool = True,
                 logscale_factor: float = 3.0):
        if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels < 1:
            raise ValueError(f"GlowTop: channels must be a positive integer, got {channels!r}")
        k = _context_features("GlowTop", context)
        if k is None and not learn_top:
            raise ValueError("GlowTop: with learn_top=False and no context the prior has nothing to learn "
                             "(a standard normal needs no layer)")
        self.channels, self.learn_top = int(channels), bool(learn_top)
        self.logscale_factor = float(logscale_factor)
        self.event_shape = (self.channels, None, None)
        self.context_shape = None if k is None else (k,)
        self.embed = None if k is None else LinearZeros(k, 2 * self.channels, logscale_factor=logscale_factor)

    def __repr__(self) -> str:
        return (f"GlowTop({self.channels}, context={None if self.embed is None else self.embed.in_features}, "
                f"learn_top={self.learn_top})")

    def param_spec(self) -> dict:
        spec = {}
        if self.learn_top:
            spec["top"] = {"b": (2 * self.channels,), "logs": (2 * self.channels,)}
        if self.embed is not None:
            spec["context"] = self.embed.param_spec()
        return spec

    def _init(self, rng, z, context=None):
        xp = namespace(z)
        params = {}
        if self.learn_top:
            params["top"] = {"b": xp.zeros(2 * self.channels, dtype=z.dtype),
                             "logs": xp.zeros(2 * self.channels, dtype=z.dtype)}
        if self.embed is not None:
            params["context"] = self.embed.init(rng, context)
        return params

    # ------------------------------------------------------------------ h = [μ, ℓ]
    def _stats(self, params, z, context):
        """``(μ, ℓ, cache)``, each ``(N, C)``."""
        xp = namespace(z)
        n, c = z.shape[0], self.channels
        h = xp.zeros((n, 2 * c), dtype=z.dtype)
        top = embed = None
        if self.learn_top:
            scale = xp.exp(self.logscale_factor * params["top"]["logs"])
            h_top = params["top"]["b"] * scale
            h = h + h_top
            top = (scale, h_top)
        if self.embed is not None:
            h_c, embed = self.embed.apply(params["context"], context)
            h = h + h_c
        return h[:, :c], h[:, c:], (top, embed)

    def _stats_backward(self, params, cache, gmu, glogs):
        top, embed = cache
        gh = namespace(gmu).concatenate([gmu, glogs], axis=1)  # (N, 2C)
        gparams, gcontext = {}, None
        if top is not None:
            scale, h_top = top
            gparams["top"] = {"b": (gh * scale).sum(axis=0), "logs": self.logscale_factor * (gh * h_top).sum(axis=0)}
        if embed is not None:
            gcontext, gparams["context"] = self.embed.backward(params["context"], embed, gh)
        return gparams, gcontext

    def _out(self, g, gparams, gcontext):
        return (g, gparams) if self.context_shape is None else (g, gparams, gcontext)

    # ------------------------------------------------------------------ bijector
    def _forward(self, params, z, context=None):
        xp = namespace(z)
        mu, logs, stats = self._stats(params, z, context)
        sigma = xp.exp(logs)[:, :, None, None]
        u = (z - mu[:, :, None, None]) / sigma
        pixels = z.shape[2] * z.shape[3]
        return u, -(pixels * logs.sum(axis=1)), (u, sigma, stats)

    def _inverse(self, params, u, context=None):
        xp = namespace(u)
        mu, logs, stats = self._stats(params, u, context)
        sigma = xp.exp(logs)[:, :, None, None]
        pixels = u.shape[2] * u.shape[3]
        # +H·W·Σℓ: the exact negation of the forward's (the same ℓ from the same parameters and context).
        return mu[:, :, None, None] + sigma * u, pixels * logs.sum(axis=1), (u, sigma, stats)

    def _backward(self, params, cache, gu, glogdet):
        u, sigma, stats = cache
        gz = gu / sigma
        pixels = u.shape[2] * u.shape[3]
        gmu = -gz.sum(axis=(2, 3))
        glogs = -(gu * u).sum(axis=(2, 3)) - pixels * glogdet[:, None]
        return self._out(gz, *self._stats_backward(params, stats, gmu, glogs))

    def _inverse_backward(self, params, cache, gz, glogdet):
        u, sigma, stats = cache
        gu = gz * sigma
        pixels = u.shape[2] * u.shape[3]
        gmu = gz.sum(axis=(2, 3))
        glogs = (gu * u).sum(axis=(2, 3)) + pixels * glogdet[:, None]
        return self._out(gu, *self._stats_backward(params, stats, gmu, glogs))


class ConditionalSplit(Split):
    """Glow's split prior with a class (context) term: ``h = ZeroConv2d(x₁) + LinearZeros(c)`` (module doc).

    ``params = {"prior": ZeroConv2d params, "context": {"w": (2C₂, K), "b", "logs"}}``.
    """

    def __init__(self, channels: int, context: int, *, kernel: int = 3, logscale_factor: float = 3.0):
        super().__init__(channels, kernel=kernel, logscale_factor=logscale_factor)
        k = _context_features("ConditionalSplit", context)
        if k is None:
            raise ValueError("ConditionalSplit: needs a context size (use Split for none)")
        self.context_shape = (k,)
        self.embed = LinearZeros(k, 2 * self.factored, logscale_factor=logscale_factor)

    def __repr__(self) -> str:
        return f"ConditionalSplit({self.channels}, context={self.context_shape[0]})"

    def param_spec(self) -> dict:
        return {"prior": self.prior.param_spec(), "context": self.embed.param_spec()}

    def _init(self, rng, x, context=None):
        return {"prior": self.prior.init(rng, x[:, : self.kept]), "context": self.embed.init(rng, context)}

    def _stats(self, params, x1, context=None):
        h, net_cache = self.prior.apply(params["prior"], x1)
        h_c, embed_cache = self.embed.apply(params["context"], context)
        h = h + h_c[:, :, None, None]  # the class term is constant over the pixels
        return h[:, 0::2], h[:, 1::2], (net_cache, embed_cache)

    def _stats_no_cache(self, params, x1, context=None):
        # Split's no-cache statistics would drop the class term: take the full ones
        mu, logs, _ = self._stats(params, x1, context)
        return mu, logs

    def _stats_backward(self, params, cache, gmu, glogs):
        net_cache, embed_cache = cache
        gh = self._interleave(gmu, glogs)
        gx1, gprior = self.prior.backward(params["prior"], net_cache, gh)
        gcontext, gembed = self.embed.backward(params["context"], embed_cache, gh.sum(axis=(2, 3)))
        return gx1, {"prior": gprior, "context": gembed}, gcontext



class MultiScalePrior(Prior):
    """The prior of a multi-scale flow's flat latent ``z = [ε | vec(z_top)]`` with Glow's top prior.

    A :class:`~rawflow.bijectors.multiscale.MultiScale` flow whose splits standardise the factored
    parts puts them first (``ε``, scored under ``N(0, I)``) and its top latent last, shape
    ``top_shape = (C, H, W)``; this prior scores that top latent with ``top`` (a :class:`GlowTop`)::

        log π(z | c) = log N(ε; 0, I) + log N(u; 0, I) + logdet_top,   u = top(z_top; c)

    so with ``top = GlowTop(C, context=K)`` it is openai/glow's ``prior("prior", y_onehot)``, and the
    top latent the classifier head reads (:class:`~rawflow.models.classifier.ClassifierHead`) is ``z_top``
    itself, before any class information. Conditional when ``top`` is. ``params`` are ``top``'s.
    Sampling draws ``[ε | u] ~ N(0, T²I)`` and maps ``u`` through ``top``'s inverse.
    """

    def __init__(self, size: int, top_shape, top: GlowTop):
        if not isinstance(top, GlowTop):
            raise ValueError(f"MultiScalePrior: top must be a GlowTop, got {type(top).__name__}")
        try:
            self.top_shape = tuple(int(d) for d in top_shape)
        except (TypeError, ValueError):
            raise ValueError(f"MultiScalePrior: top_shape must be (C, H, W), got {top_shape!r}") from None
        if len(self.top_shape) != 3 or min(self.top_shape) < 1 or self.top_shape[0] != top.channels:
            raise ValueError(f"MultiScalePrior: top_shape {top_shape!r} must be (C, H, W) with C = {top.channels} "
                             "(the top prior's channels)")
        self.top_size = int(np.prod(self.top_shape))
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < self.top_size:
            raise ValueError(f"MultiScalePrior: size must be an integer ≥ the top latent's {self.top_size}, got {size!r}")
        super().__init__((int(size),))
        self.top, self.size = top, int(size)
        self.context_shape = top.context_shape
        self.base = StandardNormal((self.size,))

    def __repr__(self) -> str:
        return f"MultiScalePrior({self.size}, top_shape={self.top_shape}, top={self.top!r})"

    def param_spec(self) -> dict:
        return self.top.param_spec()

    def _cut(self, z):
        n, s = z.shape[0], self.size - self.top_size
        return z[:, :s], z[:, s:].reshape((n,) + self.top_shape)

    def _joined(self, eps, u):
        return namespace(eps, u).concatenate([eps, u.reshape(u.shape[0], self.top_size)], axis=1)

    def _init(self, rng, z, context=None):
        return run_init(self.top, rng, self._cut(z)[1], context)

    def _log_prob(self, params, z, context=None):
        eps, z_top = self._cut(z)
        u, logdet, top_cache = run_forward(self.top, params, z_top, context)
        lp, (joined,) = self.base._log_prob({}, self._joined(eps, u))
        return lp + logdet, (joined, top_cache)

    def _backward(self, params, cache, glp):
        joined, top_cache = cache
        g = -(glp[:, None] * joined)  # ∂ log N(·; 0, I)/∂[ε | u] = −[ε | u]
        geps, gu = self._cut(g)
        g_top, gparams, gcontext = run_backward(self.top, params, top_cache, gu, glp)
        gz = self._joined(geps, g_top)
        return (gz, gparams) if self.context_shape is None else (gz, gparams, gcontext)

    def _draw(self, rng, shape, temperature):
        return temperature * rng.standard_normal(shape)

    def _finish(self, params, draw, context=None):
        eps, u = self._cut(draw)
        z_top = run_inverse(self.top, params, u, context)[0]
        return self._joined(eps, z_top)
