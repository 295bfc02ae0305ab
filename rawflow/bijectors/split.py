"""Glow's multi-scale split (``split2d``) and learned top prior (``learn_top``), NCHW.

**Split.** ``x: (N, C, H, W)`` is cut along channels into the kept half ``x₁ = x[:, :C₁]``,
``C₁ = ⌊C/2⌋`` (Glow's ``z[..., :n_z // 2]``), and the factored-out half ``x₂ = x[:, C₁:]`` (``C₂ = C − C₁``
channels). ``x₂`` is scored under a Gaussian whose parameters come from the kept half::

    h = ZeroConv2d(x₁)            (C₁ → 2C₂ channels, 3×3, zero-initialised; see rawflow.nets.cnn)
    μ = h[:, 0::2],  ℓ = h[:, 1::2],  σ = exp(ℓ)        (Glow's interleaved "cross" split of h)
    log p(x₂ | x₁) = Σ_{c,h,w} [ −ε²/2 − ℓ − log(2π)/2 ],    ε = (x₂ − μ) / σ

At init ``h ≡ 0``: the factored-out half is scored under ``N(0, I)``.

As a :class:`~rawflow.bijectors.bijector.Bijector` the split is the standardisation of the factored-out half,
a map of ``(N, C, H, W)`` onto itself with the output laid out as ``[x₁ | ε]`` along channels::

    forward:  z = [x₁, ε],           logdet     = −Σ ℓ          (per sample)
    inverse:  x = [z₁, μ + σ ⊙ ε],   logdet_inv = +Σ ℓ          (μ, ℓ from z₁ = x₁, bit-identical)

so ``log N(ε; 0, I) + logdet = log p(x₂ | x₁)``: scoring ``ε`` under a standard normal *is* Glow's
split prior. In this form every bijector check applies (round trip, Jacobian log-det, VJPs).
VJPs (``g₁, g_ε`` cotangents of the output's parts, ``gλ`` of the log-det; ``gμ, gℓ`` are
interleaved back into ``gh`` and sent through the ZeroConv2d's VJP, which adds to ``g₁``)::

    forward:  gx₂ = g_ε / σ,   gμ = −g_ε / σ,   gℓ = −g_ε ⊙ ε − gλ,    gx₁ = g₁ + ZeroConv2dᵀ(gh)
    inverse:  gε  = gx₂ ⊙ σ,   gμ = gx₂,        gℓ = gx₂ ⊙ σ ⊙ ε + gλ, gz₁ = gx₁ + ZeroConv2dᵀ(gh)

**Multi-scale interface** (what a Glow model calls; thin wrappers around the bijector methods)::

    kept, logp, eps, cache = split.factor(params, x)             # logp = log p(x₂ | x₁): (N,)
    gx, gparams = split.factor_backward(params, cache, gkept, glogp, geps=None)
    x, logp, eps, cache = split.unfactor(params, kept, eps)      # x₂ = μ + σ ⊙ ε
    x, logp, eps, cache = split.unfactor(params, kept, rng=rng, temperature=T)   # ε ~ N(0, T²I)
    gkept, geps, gparams = split.unfactor_backward(params, cache, gx, glogp)

with ``logp = logdet + log N(ε; 0, I)`` in both directions, hence the extra cotangent
``−glogp ⊙ ε`` on ``ε``. ``unfactor``'s ``logp`` is the density of ``x₂`` under the untempered
conditional ``N(μ, σ²)`` (what ``factor`` returns at that point). ``eps`` is Glow's ``eps`` (the
standardised factored-out latent), which Glow's reverse pass consumes. Glow's ``split2d`` also squeezes
the kept half afterwards; here that is a separate :class:`~rawflow.bijectors.squeeze.Squeeze`.

**Top prior.** :class:`GlowTopPrior` is Glow's ``learn_top``: ``h = Conv2dZeros(0)`` over the top
latent's shape, ``μ = h[:, :C]``, ``ℓ = h[:, C:]`` (first/second half, unlike the split's interleaving).
With zero padding a convolution of zeros is exactly its bias, so ``h = b ⊙ exp(3·logs)`` per channel,
constant over pixels; the convolution weights would receive identically zero gradient and are
omitted. ``params = {"b": (2C,), "logs": (2C,)}`` — the ``bias`` and ``logs`` of the PyTorch ports'
``learn_top`` — zero at init (standard normal). (TensorFlow Glow's edge-padding channel would make
border pixels differ; not reproduced.)
"""

from __future__ import annotations

import math

import numpy as np

from .._array import Array, namespace
from .._checks import check_array, check_positive_finite, check_rng, check_vector, open_cache
from .bijector import Bijector
from ..nets.cnn import ZeroConv2d
from ..nets.mlp import apply_no_cache
from ..distributions.priors import Prior

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _row_sum(a: Array) -> Array:
    return a.sum(axis=tuple(range(1, a.ndim)))


def _per_row(g: Array, like: Array) -> Array:
    return g.reshape((g.shape[0],) + (1,) * (like.ndim - 1))


def _std_normal_logp(eps: Array) -> Array:
    """``log N(ε; 0, I)`` per sample: ``−Σε²/2 − D·log(2π)/2``."""
    return -0.5 * _row_sum(eps * eps) - math.prod(eps.shape[1:]) * _HALF_LOG_2PI


class Split(Bijector):
    """Glow's split prior as a bijector ``[x₁, x₂] ↦ [x₁, (x₂ − μ(x₁)) / σ(x₁)]``; see the module doc.

    ``params = {"prior": {"w", "b", "logs"}}`` (the :class:`~rawflow.nets.cnn.ZeroConv2d`).
    """

    def __init__(self, channels: int, *, kernel: int = 3, logscale_factor: float = 3.0):
        if not (isinstance(channels, (int, np.integer)) and channels >= 2):
            raise ValueError(f"Split: needs an integer number of channels ≥ 2, got {channels!r}")
        self.channels = int(channels)
        self.kept = self.channels // 2
        self.factored = self.channels - self.kept
        self.event_shape = (self.channels, None, None)
        self.prior = ZeroConv2d(self.kept, 2 * self.factored, kernel, logscale_factor=logscale_factor)

    def __repr__(self) -> str:
        return f"Split({self.channels})"

    # ------------------------------------------------------------------ layout helpers
    def parts(self, z: Array) -> tuple[Array, Array]:
        """``[x₁ | ε] → (x₁, ε)`` by slicing along channels (exact)."""
        return z[:, : self.kept], z[:, self.kept :]

    def join(self, kept: Array, eps: Array) -> Array:
        """``(x₁, ε) → [x₁ | ε]`` along channels (exact)."""
        return namespace(kept, eps).concatenate([kept, eps], axis=1)

    def param_spec(self) -> dict:
        return {"prior": self.prior.param_spec()}

    def _stats(self, params, x1, context=None):
        """``(μ, ℓ, cache)`` from the kept half (and, in :class:`~rawflow.bijectors.conditional_prior.ConditionalSplit`,
        the context): ``h = ZeroConv2d(x₁)``, interleaved."""
        h, net_cache = self.prior.apply(params["prior"], x1)
        return h[:, 0::2], h[:, 1::2], net_cache

    def _stats_no_cache(self, params, x1, context=None):
        """``(μ, ℓ)`` of :meth:`_stats`, bit for bit, without the network's cache."""
        h = apply_no_cache(self.prior, params["prior"], x1)  # a prior network without the method: apply's values
        return h[:, 0::2], h[:, 1::2]

    def _stats_backward(self, params, net_cache, gmu, glogs):
        """``(gx₁, gparams, gcontext)``; ``gcontext`` is ``None`` here (no context)."""
        gx1, gprior = self.prior.backward(params["prior"], net_cache, self._interleave(gmu, glogs))
        return gx1, {"prior": gprior}, None

    @staticmethod
    def _interleave(gmu, glogs):
        xp = namespace(gmu)
        n, c2, hh, ww = gmu.shape
        return xp.stack([gmu, glogs], axis=2).reshape(n, 2 * c2, hh, ww)  # re-interleave: [μ₀, ℓ₀, μ₁, ℓ₁, ...]

    @staticmethod
    def _out(g, gparams, gcontext):
        return (g, gparams) if gcontext is None else (g, gparams, gcontext)

    # ------------------------------------------------------------------ bijector
    def _init(self, rng, x, context=None):
        return {"prior": self.prior.init(rng, x[:, : self.kept])}

    def _forward(self, params, x, context=None):
        xp = namespace(x)
        x1, x2 = self.parts(x)
        mu, logs, net_cache = self._stats(params, x1, context)
        sigma = xp.exp(logs)
        eps = (x2 - mu) / sigma
        return self.join(x1, eps), -_row_sum(logs), (net_cache, eps, sigma)

    def _inverse(self, params, z, context=None):
        xp = namespace(z)
        z1, eps = self.parts(z)
        mu, logs, net_cache = self._stats(params, z1, context)
        sigma = xp.exp(logs)
        # +Σℓ is the exact negation of the forward's −Σℓ (same ℓ, since z₁ = x₁ bit for bit).
        return self.join(z1, mu + sigma * eps), _row_sum(logs), (net_cache, eps, sigma)

    def _forward_no_cache(self, params, x, context=None):
        xp = namespace(x)
        x1, x2 = self.parts(x)
        mu, logs = self._stats_no_cache(params, x1, context)
        return self.join(x1, (x2 - mu) / xp.exp(logs)), -_row_sum(logs)

    def _inverse_no_cache(self, params, z, context=None):
        xp = namespace(z)
        z1, eps = self.parts(z)
        mu, logs = self._stats_no_cache(params, z1, context)
        return self.join(z1, mu + xp.exp(logs) * eps), _row_sum(logs)

    def _backward(self, params, cache, gz, glogdet):
        net_cache, eps, sigma = cache
        g1, geps = self.parts(gz)
        gx2 = geps / sigma
        glogs = -(geps * eps) - _per_row(glogdet, eps)
        gx1, gparams, gcontext = self._stats_backward(params, net_cache, -gx2, glogs)
        return self._out(self.join(g1 + gx1, gx2), gparams, gcontext)

    def _inverse_backward(self, params, cache, gx, glogdet):
        net_cache, eps, sigma = cache
        g1, gx2 = self.parts(gx)
        geps = gx2 * sigma
        glogs = geps * eps + _per_row(glogdet, eps)
        gz1, gparams, gcontext = self._stats_backward(params, net_cache, gx2, glogs)
        return self._out(self.join(g1 + gz1, geps), gparams, gcontext)

    # ------------------------------------------------------------------ multi-scale interface
    def factor(self, params: dict, x: Array):
        """``(kept, logp, eps, cache)``: kept half, ``log p(x₂ | x₁): (N,)``, standardised ``x₂``."""
        z, logdet, cache = self.forward(params, x)
        kept, eps = self.parts(z)
        return kept, logdet + _std_normal_logp(eps), eps, cache

    def _eps_of(self, cache, method: str) -> Array:
        """``ε`` from a cache of this layer (checked: the VJP checks it again against its cotangent)."""
        return open_cache(self, f"{self.name}.{method}", cache, None, "z", "factor or unfactor")[1]

    def factor_backward(self, params: dict, cache, gkept: Array, glogp: Array, geps: Array | None = None):
        """VJP of :meth:`factor`: ``(gx, gparams)``; ``geps`` defaults to zero."""
        eps = self._eps_of(cache, "factor_backward")
        check_array(self.name, gkept, "kept-half cotangent", (self.kept, None, None))
        check_vector(self.name, glogp, "log-prob cotangent", eps.shape[0], eps.dtype)
        g_eps = -(_per_row(glogp, eps) * eps)
        if geps is not None:
            check_array(self.name, geps, "eps cotangent", (self.factored, None, None))
            if geps.shape != eps.shape:
                raise self._error(f"eps cotangent has shape {tuple(geps.shape)}, eps has {tuple(eps.shape)}")
            g_eps = geps + g_eps
        if gkept.shape[0] != eps.shape[0] or gkept.shape[2:] != eps.shape[2:]:
            raise self._error(f"kept-half cotangent shape {tuple(gkept.shape)} does not match eps {tuple(eps.shape)}")
        return self.backward(params, cache, self.join(gkept, g_eps), glogp)

    def sample_eps(self, kept: Array, rng: np.random.Generator, temperature: float = 1.0) -> Array:
        """``ε ~ N(0, T²I)`` shaped like the factored-out half; host draw moved to ``kept``'s namespace."""
        check_positive_finite(self.name, temperature, "temperature")
        check_rng(self.name, rng)
        check_array(self.name, kept, "kept half", (self.kept, None, None))
        n, _, h, w = kept.shape
        draw = temperature * rng.standard_normal((n, self.factored, h, w))
        return namespace(kept).asarray(draw, dtype=kept.dtype)

    def unfactor(self, params: dict, kept: Array, eps: Array | None = None, *,
                 rng: np.random.Generator | None = None, temperature: float = 1.0):
        """``(x, logp, eps, cache)``: rebuild ``x`` from the kept half and ``ε`` (drawn if not given)."""
        self._check_array(kept, (self.kept, None, None), "kept half")
        if eps is None:
            if rng is None:
                raise self._error("unfactor needs eps or an rng to sample it")
            eps = self.sample_eps(kept, rng, temperature)
        elif rng is not None:
            raise self._error("pass eps or rng to unfactor, not both")
        self._check_array(eps, (self.factored, None, None), "eps")
        if eps.shape[0] != kept.shape[0] or eps.shape[2:] != kept.shape[2:]:
            raise self._error(f"eps shape {tuple(eps.shape)} does not match kept half {tuple(kept.shape)}")
        x, logdet_inv, cache = self.inverse(params, self.join(kept, eps))
        return x, _std_normal_logp(eps) - logdet_inv, eps, cache

    def unfactor_backward(self, params: dict, cache, gx: Array, glogp: Array):
        """VJP of :meth:`unfactor` (with ``eps`` an input): ``(gkept, geps, gparams)``."""
        eps = self._eps_of(cache, "unfactor_backward")
        check_vector(self.name, glogp, "log-prob cotangent", eps.shape[0], eps.dtype)
        gz, gparams = self.inverse_backward(params, cache, gx, -glogp)
        gkept, geps = self.parts(gz)
        return gkept, geps - _per_row(glogp, eps) * eps, gparams


class GlowTopPrior(Prior):
    """Glow's ``learn_top`` prior over ``(N, C, H, W)``: per channel ``N(μ_c, exp(2ℓ_c))``.

    ``h = b ⊙ exp(3·logs): (2C,)``, ``μ = h[:C]``, ``ℓ = h[C:]``; ``u = (z − μ)/σ``::

        log π(z) = Σ_{c,h,w} [−u²/2 − ℓ_c − log(2π)/2]
        gz = −glp·u/σ,   gμ_c = Σ_{n,h,w} glp·u/σ,   gℓ_c = Σ_{n,h,w} glp·(u² − 1)
        gb = gh ⊙ exp(3·logs),   glogs = 3·gh ⊙ h
    """

    def __init__(self, channels: int, logscale_factor: float = 3.0):
        if not (isinstance(channels, (int, np.integer)) and channels >= 1):
            raise ValueError(f"GlowTopPrior: channels must be a positive integer, got {channels!r}")
        super().__init__((int(channels), None, None))
        self.channels = int(channels)
        self.logscale_factor = float(logscale_factor)

    def __repr__(self) -> str:
        return f"GlowTopPrior({self.channels})"

    def _init(self, rng, z):
        xp = namespace(z)
        return {"b": xp.zeros(2 * self.channels, dtype=z.dtype), "logs": xp.zeros(2 * self.channels, dtype=z.dtype)}

    def param_spec(self) -> dict:
        return {"b": (2 * self.channels,), "logs": (2 * self.channels,)}

    def _stats(self, params):
        xp = namespace(params["b"])
        scale = xp.exp(self.logscale_factor * params["logs"])
        h = params["b"] * scale
        c = self.channels
        return h[:c].reshape(1, c, 1, 1), h[c:].reshape(1, c, 1, 1), h, scale

    def _log_prob(self, params, z):
        xp = namespace(z)
        mu, logs, h, scale = self._stats(params)
        sigma = xp.exp(logs)
        u = (z - mu) / sigma
        pixels = z.shape[2] * z.shape[3]
        lp = _std_normal_logp(u) - pixels * logs.sum()
        return lp, (z, u, sigma, h, scale)

    def _backward(self, params, cache, glp):
        z, u, sigma, h, scale = cache
        xp = namespace(z)
        g = _per_row(glp, z)
        gz = -(g * u) / sigma
        gmu = -gz.sum(axis=(0, 2, 3))
        glogs = (g * (u * u - 1)).sum(axis=(0, 2, 3))
        gh = xp.concatenate([gmu, glogs])
        return gz, {"b": gh * scale, "logs": self.logscale_factor * gh * h}

    def _draw(self, rng, shape, temperature):
        return temperature * rng.standard_normal(shape)

    def _finish(self, params, eps):
        if not params:
            raise self._error("sample needs the learned params {'b', 'logs'}")
        xp = namespace(params["b"])
        mu, logs, _, _ = self._stats(params)
        return mu + xp.exp(logs) * eps
