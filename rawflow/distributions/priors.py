"""Priors ``π(z)`` over the latent space, with hand-written log-density gradients.

A prior scores a batch ``z: (N, *event_shape)`` with ``log π(z): (N,)`` (summed over the event axes)
and supplies the VJP of that score, so a flow model's NLL gradient needs no autograd::

    params = prior.init(rng, z)                        # {} when nothing is learned
    lp, cache = prior.log_prob(params, z)              # lp: (N,)
    gz, gparams = prior.backward(params, cache, glp)   # glp: (N,) cotangent of lp
    z = prior.sample(params, rng, n, temperature=1.0, like=None)

Per element (``u = z`` for the standard priors)::

    StandardNormal    log π = −u²/2 − log(2π)/2                d/du = −u
    StandardLogistic  log π = −softplus(u) − softplus(−u)      d/du = −tanh(u/2)     (NICE)
    DiagonalGaussian  u = (z − μ)·exp(−ℓ), log π = −u²/2 − ℓ − log(2π)/2
                      d/dz = −u·exp(−ℓ),  d/dμ = u·exp(−ℓ),  d/dℓ = u² − 1
    Uniform[lo, hi]   log π = −log(hi − lo) inside, −∞ outside; zero gradient

``event_shape`` entries may be ``None`` (any size, e.g. ``(C, None, None)`` for images); the
learned arrays of :class:`DiagonalGaussian` then have size 1 on those axes and broadcast.
Sampling draws from the NumPy ``Generator`` on the host (reproducible on every backend) and moves the
draw to the namespace and dtype of ``like`` (or of the learned parameters) with ``xp.asarray``.
``temperature`` ``T`` scales the standard deviation (Gaussians) or the scale (logistic).
All log-densities are analytic in ``z`` and the parameters (complex-step safe).

A **conditional prior** (``context_shape = (K,)``, e.g. Glow's class-conditional top prior
:class:`~rawflow.bijectors.conditional_prior.MultiScalePrior`) takes ``context=`` in ``init``,
``log_prob`` and ``sample``, checked as a conditional layer's (:mod:`rawflow.bijectors.bijector`), and
its ``backward`` returns ``(gz, gparams, gcontext)``. The priors in this file take no context.
"""

from __future__ import annotations

import math
import operator
from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

from .. import tree as _tree
from .._array import Array, namespace, softplus
from .._checks import (Cache, MissingRng, check_array, check_context, check_count, check_positive_finite,
                       check_rng, check_vector, open_cache)

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class Prior(ABC):
    """Base class: validation and the sampling plumbing; subclasses provide the maths.

    Subclasses implement ``_log_prob(params, z) -> (lp, cache)``, ``_backward``, ``_draw`` (a host
    draw of the standardised variable at temperature ``T``), :meth:`param_spec` (the shapes of
    the learned parameters; ``{}`` when nothing is learned), and optionally ``_init`` and
    ``_finish`` (location/scale of learned priors). The public methods check every argument as a
    layer does (:mod:`rawflow.bijectors.bijector`): parameters against :meth:`param_spec`, the
    cache returned by ``log_prob`` (wrapped in a :class:`~rawflow._checks.Cache`), the cotangent.
    """

    event_shape: tuple = ()
    #: ``(K,)`` for a conditional prior, ``None`` for one that takes no context (see the module doc)
    context_shape: tuple | None = None

    def __init__(self, event_shape: Sequence[int | None]):
        try:
            shape = tuple(None if d is None else int(d) for d in event_shape)
        except TypeError:
            raise ValueError(f"{type(self).__name__}: event_shape must be a sequence, got {event_shape!r}")
        if any(d is not None and d < 1 for d in shape):
            raise ValueError(f"{type(self).__name__}: event_shape entries must be positive, got {shape}")
        self.event_shape = shape

    @property
    def name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        return f"{self.name}(event_shape={self.event_shape})"

    def param_spec(self) -> dict:
        """Shapes of the learned parameters (``{}`` when nothing is learned). The default,
        :data:`rawflow.tree.ANY`, is for user priors that declare none."""
        return _tree.ANY

    # ------------------------------------------------------------------ public, validated
    def init(self, rng: np.random.Generator | None, z: Array, *, context: Array | None = None) -> dict:
        """Learned parameters in ``z``'s dtype and namespace (``{}`` when nothing is learned)."""
        if rng is None:
            rng = MissingRng(self.name)
        else:
            check_rng(self.name, rng)
        self._check_array(z, "input")
        c = check_context(self.name, self.context_shape, context, z)
        params = self._init(rng, z) if c is None else self._init(rng, z, c)
        _tree.check(self.name, params, self.param_spec(), z.dtype, what="initialised parameter")
        return params

    def log_prob(self, params: dict, z: Array, *, check_finite: bool = True, context: Array | None = None):
        """``(lp, cache)`` with ``lp = log π(z): (N,)`` (``log π(z | c)`` for a conditional prior).

        ``check_finite=False`` lets non-finite latents through (their log-density is then
        ``−∞``/NaN): a flow model uses it, since an overflowing latent is a numerical outcome of
        the flow's parameters, reported by the loss, not a bad input.
        """
        self._check_call(params, z, check_finite)
        if context is None and self.context_shape is None:
            lp, cache = self._log_prob(params, z)
        else:
            lp, cache = self._log_prob(params, z, check_context(self.name, self.context_shape, context, z))
        return lp, Cache(self, z.shape, lp.shape, z.dtype, cache)

    def backward(self, params: dict, cache, glp: Array):
        """VJP of ``log_prob``: ``(gz, gparams)`` given the cotangent ``glp: (N,)``
        (``(gz, gparams, gcontext)`` for a conditional prior)."""
        value = open_cache(self, self.name, cache, None, "z", "log_prob")
        check_vector(self.name, glp, "log-prob cotangent", cache.z_shape[0], cache.dtype)
        self._check_params(params, cache.dtype)
        return self._backward(params, value, glp)

    def sample(
        self,
        params: dict,
        rng: np.random.Generator,
        n: int,
        temperature: float = 1.0,
        like: Array | None = None,
        shape: Sequence[int] | None = None,
        *,
        context: Array | None = None,
    ) -> Array:
        """``n`` draws ``z: (n, *event_shape)`` (from ``π(z | c)``, one context row per draw, for a
        conditional prior).

        ``shape`` gives the concrete event shape where ``event_shape`` has ``None`` entries. The draw
        lands in ``like``'s namespace/dtype, else the parameters', else the context's, else NumPy float64.
        """
        n = check_count(self.name, n, "number of samples")
        temperature = check_positive_finite(self.name, temperature, "temperature")
        check_rng(self.name, rng)
        if like is not None:
            check_array(self.name, like, "like", None, finite=False)
        self._check_params(params, None if like is None else like.dtype)
        event = self._concrete_shape(shape)
        ref = like if like is not None else next((a for _, a in _tree.leaves(params)), context)
        if self.context_shape is not None or context is not None:
            context = check_context(self.name, self.context_shape, context, ref, n=n)
        draw = self._draw(rng, (n,) + event, temperature)
        if ref is not None:
            draw = namespace(ref).asarray(draw, dtype=ref.dtype)
        return self._finish(params, draw) if context is None else self._finish(params, draw, context)

    # ------------------------------------------------------------------ to implement
    def _init(self, rng, z):
        return {}

    @abstractmethod
    def _log_prob(self, params, z):
        ...

    @abstractmethod
    def _backward(self, params, cache, glp):
        ...

    @abstractmethod
    def _draw(self, rng, shape, temperature):
        """Host draw of the *standardised* variable, already scaled by the temperature."""

    def _finish(self, params, eps):
        """Map a standardised draw to the prior (location/scale for learned priors)."""
        return eps

    # ------------------------------------------------------------------ helpers
    def _error(self, message: str) -> ValueError:
        return ValueError(f"{self.name}: {message}")

    def _concrete_shape(self, shape) -> tuple:
        if shape is None:
            if any(d is None for d in self.event_shape):
                raise self._error(
                    f"event_shape {self.event_shape} has free axes; pass shape= to sample"
                )
            return self.event_shape
        try:
            shape = tuple(operator.index(d) for d in shape)
        except TypeError:
            raise self._error(f"sample shape must be a sequence of integers, got {shape!r}") from None
        if len(shape) != len(self.event_shape) or any(
            e is not None and e != d for d, e in zip(shape, self.event_shape)
        ) or any(d < 1 for d in shape):
            raise self._error(f"sample shape {shape} does not match event_shape {self.event_shape}")
        return shape

    def _check_array(self, z, what: str, check_finite: bool = True) -> None:
        check_array(self.name, z, what, self.event_shape, finite=check_finite)

    def _check_params(self, params, dtype) -> None:
        _tree.check(self.name, params, self.param_spec(), dtype)

    def _check_call(self, params, z, check_finite: bool = True) -> None:
        self._check_array(z, "input", check_finite)
        self._check_params(params, z.dtype)


def _row_sum(a: Array) -> Array:
    return a.sum(axis=tuple(range(1, a.ndim)))


def _per_row(g: Array, like: Array) -> Array:
    return g.reshape((g.shape[0],) + (1,) * (like.ndim - 1))


def _half_sum_squares(u: Array) -> Array:
    """``Σ u²/2`` per sample, overflowing only where the sum itself does.

    The plain ``0.5·Σ u·u`` (used whenever it is finite, so results are unchanged) overflows once
    ``|u| > 1.3e154`` although ``u²/2`` is a float up to ``|u| = 1.9e154``; those samples are
    redone as ``(m·(Σ(u/m)²/2))·m`` with ``m = max|u|``, which overflows only past the range.
    """
    xp = namespace(u)
    out = 0.5 * _row_sum(u * u)
    fix = ~xp.isfinite(out)
    if not bool(fix.any()):
        return out
    m = xp.abs(u).reshape(u.shape[0], -1).max(axis=1)
    fix = fix & xp.isfinite(m)
    m = xp.where(fix, m, 1)
    v = u / _per_row(m, u)
    scaled = (m * (0.5 * _row_sum(v * v))) * m
    return xp.where(fix, scaled, out)


class StandardNormal(Prior):
    """``z ~ N(0, I)``: ``log π(z) = Σ(−z²/2) − D·log(2π)/2``; temperature ``T`` draws ``N(0, T²I)``."""

    def param_spec(self) -> dict:
        return {}

    def _log_prob(self, params, z):
        # Σ(z²)/2 + D·c, not Σ(z²/2 + c): one rounding of the constant per sample.
        d = math.prod(z.shape[1:])
        return -_half_sum_squares(z) - d * _HALF_LOG_2PI, (z,)

    def _backward(self, params, cache, glp):
        (z,) = cache
        return -_per_row(glp, z) * z, {}

    def _draw(self, rng, shape, temperature):
        return temperature * rng.standard_normal(shape)


class StandardLogistic(Prior):
    """NICE's prior: ``log π(z) = Σ −softplus(z) − softplus(−z)``; ``T`` scales the logistic scale."""

    def param_spec(self) -> dict:
        return {}

    def _log_prob(self, params, z):
        return -_row_sum(softplus(z) + softplus(-z)), (z,)

    def _backward(self, params, cache, glp):
        (z,) = cache
        # d/dz[−softplus(z) − softplus(−z)] = σ(−z) − σ(z) = −tanh(z/2); the tanh form has no
        # cancellation near z = 0, where the difference of two sigmoids loses the low bits.
        return -_per_row(glp, z) * namespace(z).tanh(z / 2), {}

    def _draw(self, rng, shape, temperature):
        return rng.logistic(0.0, temperature, size=shape)


class DiagonalGaussian(Prior):
    """``z ~ N(μ, diag(exp(2ℓ)))`` with learned ``{"mean": μ, "log_std": ℓ}`` (zeros at init).

    Parameter shape is ``event_shape`` with ``None`` axes as size 1 (shared along them).
    """

    @property
    def param_shape(self) -> tuple:
        return tuple(1 if d is None else d for d in self.event_shape)

    def _init(self, rng, z):
        xp = namespace(z)
        return {
            "mean": xp.zeros(self.param_shape, dtype=z.dtype),
            "log_std": xp.zeros(self.param_shape, dtype=z.dtype),
        }

    def param_spec(self) -> dict:
        return {"mean": self.param_shape, "log_std": self.param_shape}

    def _log_prob(self, params, z):
        xp = namespace(z)
        inv_std = xp.exp(-params["log_std"])
        u = (z - params["mean"]) * inv_std
        # Σℓ counted once per broadcast copy: ℓ broadcast to z's event shape before the sum.
        copies = math.prod(z.shape[1:]) // math.prod(self.param_shape)
        lp = -_half_sum_squares(u) - copies * params["log_std"].sum() - math.prod(z.shape[1:]) * _HALF_LOG_2PI
        return lp, (z, u, inv_std)

    def _backward(self, params, cache, glp):
        z, u, inv_std = cache
        g = _per_row(glp, z)
        gz = -(g * u) * inv_std
        gmean = self._reduce(-gz)
        glog_std = self._reduce(g * (u * u - 1))
        return gz, {"mean": gmean, "log_std": glog_std}

    def _reduce(self, a):
        """Sum a per-element gradient ``(N, *event)`` down to the parameter shape."""
        axes = (0,) + tuple(i + 1 for i, d in enumerate(self.event_shape) if d is None)
        return a.sum(axis=axes).reshape(self.param_shape)

    def _draw(self, rng, shape, temperature):
        return temperature * rng.standard_normal(shape)

    def _finish(self, params, eps):
        if not params:
            raise self._error("sample needs the learned params {'mean', 'log_std'}")
        xp = namespace(params["mean"])
        return params["mean"] + xp.exp(params["log_std"]) * eps


class Uniform(Prior):
    """``z ~ U[low, high]^D``: ``log π = −D·log(high − low)`` inside (closed box), ``−∞`` outside.

    The lecture note's 1-D example: ``π(z) = 1`` on ``[0, 1]``. The gradient is zero inside (and
    outside, where the log-density is the constant ``−∞``). Temperature other than 1 is undefined.
    """

    def __init__(self, event_shape, low: float = 0.0, high: float = 1.0):
        super().__init__(event_shape)
        low, high = float(low), float(high)
        if not (math.isfinite(low) and math.isfinite(high) and high > low):
            raise ValueError(f"Uniform: need finite low < high, got low={low}, high={high}")
        self.low, self.high = low, high

    def __repr__(self) -> str:
        return f"Uniform(event_shape={self.event_shape}, low={self.low}, high={self.high})"

    def param_spec(self) -> dict:
        return {}

    def _log_prob(self, params, z):
        xp = namespace(z)
        inside = ((z.real >= self.low) & (z.real <= self.high)).all(axis=tuple(range(1, z.ndim)))
        d = math.prod(z.shape[1:])
        log_density = xp.asarray(-d * math.log(self.high - self.low), dtype=z.dtype)
        lp = xp.where(inside, log_density, xp.asarray(-xp.inf, dtype=z.dtype))
        return lp, (z,)

    def _backward(self, params, cache, glp):
        (z,) = cache
        return namespace(z).zeros_like(z), {}

    def _draw(self, rng, shape, temperature):
        if temperature != 1.0:
            raise self._error(f"temperature must be 1 for a uniform prior, got {temperature}")
        return rng.uniform(self.low, self.high, size=shape)
