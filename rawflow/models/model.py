"""A flow model: a bijector (data → latent) and a prior on the latent.

Change of variables, with ``z = f(x)`` the bijector's forward::

    log p(x) = log π(f(x)) + log|det ∂f/∂x|

Training minimises the mean negative log-likelihood over a batch ``x: (N, *event)``::

    L = −(1/N) Σ_n [log π(z_n) + logdet_n]

whose gradient is one hand-written pass: forward through the bijector, the prior's log-prob, then
the prior's VJP with ``glp = −1/N`` (giving ``gz``) and the bijector's VJP with cotangents
``(gz, glogdet = −1/N)``. Generation runs the bijector's inverse on prior draws (the lecture
note's generator ``G = f⁻¹``). Parameters are ``{"flow": bijector params, "prior": prior params}``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .. import tree as _tree
from .._array import Array, namespace
from ..bijectors.bijector import Bijector
from ..bijectors.chain import _shapes_compatible
from ..distributions.priors import Prior


class FlowModel:
    def __init__(self, bijector: Bijector, prior: Prior):
        if not isinstance(bijector, Bijector):
            raise ValueError(f"FlowModel: bijector must be a Bijector, got {type(bijector).__name__}")
        if not isinstance(prior, Prior):
            raise ValueError(f"FlowModel: prior must be a Prior, got {type(prior).__name__}")
        if not _shapes_compatible(bijector.out_event_shape, prior.event_shape):
            raise ValueError(
                f"FlowModel: the bijector outputs event shape {bijector.out_event_shape} but the "
                f"prior is over {prior.event_shape}"
            )
        self.bijector = bijector
        self.prior = prior

    @property
    def event_shape(self) -> tuple:
        return self.bijector.event_shape

    def __repr__(self) -> str:
        return f"FlowModel({type(self.bijector).__name__}, {self.prior!r})"

    def init(self, rng: np.random.Generator, x: Array) -> dict:
        """Parameters from an example batch (data-dependent layers initialise from it)."""
        flow = self.bijector.init(rng, x)
        z = self.bijector.forward(flow, x)[0]
        return {"flow": flow, "prior": self.prior.init(rng, z)}

    def log_prob(self, params: dict, x: Array) -> Array:
        """``log p(x): (N,)``; never NaN for a finite ``x``.

        Each piece stays finite wherever its exact value is a float (an exp-scale coupling takes
        ``x_b·s`` in log space when ``s = exp(h)`` overflows; the Gaussian priors' ``Σz²/2`` is
        rescaled before it overflows). A sample whose latent or log-det still leaves the range (far
        from the data, where ``log p`` is typically below ``−1e308``) gets ``−inf``, never the
        ``NaN`` of ``inf − inf``, and a ``RuntimeWarning`` says how many samples did (a prior's own
        ``−inf`` at a finite latent, outside a uniform's support, is exact and not reported). That report
        follows the caller's NumPy policy for overflow, as NumPy's own overflow warnings do:
        silent under ``np.errstate(over="ignore")`` (the training loop's, which reports a
        non-finite loss itself), ``FloatingPointError`` under ``over="raise"``.
        """
        policy = np.geterr()["over"]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # reported below instead
            z, logdet, _ = self.bijector.forward(params["flow"], x)
            lp, _ = self.prior.log_prob(params["prior"], z, check_finite=False)
            out = lp + logdet
        xp = namespace(out)
        # the flow left the range (latent or log-det), or inf − inf: not the prior's own −inf
        # (zero density outside a uniform's support is exact and passes unreported)
        flat = z.reshape(z.shape[0], math.prod(z.shape[1:]))  # no -1: a batch may be empty
        bad = ~(xp.isfinite(logdet) & xp.isfinite(flat).all(axis=1)) | xp.isnan(out)
        if bool(bad.any()):
            message = (f"FlowModel.log_prob: {int(bad.sum())} of {out.shape[0]} sample(s) leave the float range "
                       f"of {out.dtype} inside the flow (a latent or log-det overflows: far from the data); "
                       "their log-density is returned as -inf")
            if policy == "raise":
                raise FloatingPointError(message)
            if policy != "ignore":
                warnings.warn(message, RuntimeWarning, stacklevel=2)
            out = xp.where(bad, xp.asarray(-xp.inf, dtype=out.dtype), out)
        return out

    def nll(self, params: dict, x: Array) -> float:
        """Mean negative log-likelihood over the batch (nats per sample)."""
        return -float(self.log_prob(params, x).mean())

    def nll_and_grad(self, params: dict, x: Array) -> tuple[float, dict]:
        """``(L, grads)``: mean NLL (a Python float) and its gradient, with the structure of params."""
        z, logdet, cache = self.bijector.forward(params["flow"], x)
        lp, prior_cache = self.prior.log_prob(params["prior"], z, check_finite=False)
        loss = -float((lp + logdet).mean())
        xp = namespace(z)
        g = xp.full(z.shape[0], -1.0 / z.shape[0], dtype=z.dtype)  # ∂L/∂lp_n = ∂L/∂logdet_n = −1/N
        gz, gprior = self.prior.backward(params["prior"], prior_cache, g)
        # Unchecked VJP: x was validated by forward and the cotangents are built here with the
        # right shape and dtype; a non-finite gz (a diverged flow) must reach the caller's loss check.
        _, gflow = self.bijector._backward(params["flow"], cache, gz, g)
        return loss, {"flow": gflow, "prior": gprior}

    def encode(self, params: dict, x: Array) -> Array:
        """``z = f(x)``."""
        return self.bijector.forward(params["flow"], x)[0]

    def decode(self, params: dict, z: Array) -> Array:
        """``x = f⁻¹(z)``."""
        return self.bijector.inverse(params["flow"], z)[0]

    def sample(
        self,
        params: dict,
        rng: np.random.Generator,
        n: int,
        temperature: float = 1.0,
        like: Array | None = None,
        shape=None,
    ) -> Array:
        """``n`` samples ``x = f⁻¹(z)``, ``z ~ π`` at temperature ``T``.

        Draws land in ``like``'s namespace/dtype, else that of the first parameter leaf; ``shape``
        is the concrete latent event shape where the prior's has free (``None``) axes.
        """
        if like is None:
            like = next((a for _, a in _tree.leaves(params)), None)
        z = self.prior.sample(params["prior"], rng, n, temperature, like=like, shape=shape)
        return self.decode(params, z)

    def interpolate(self, params: dict, x0: Array, x1: Array, steps: int = 8) -> Array:
        """Decode the straight line between ``z0 = f(x0)`` and ``z1 = f(x1)`` in latent space.

        ``x0, x1: (M, *event)`` (pairs row by row); returns ``(steps, M, *event)`` with
        ``out[k] = f⁻¹((1 − t_k)·z0 + t_k·z1)``, ``t_k = k/(steps − 1)``: the lecture note's
        translation between two sets of images. The end points reproduce ``x0`` and ``x1`` to
        round-off.
        """
        if isinstance(steps, bool) or int(steps) != steps or steps < 2:
            raise ValueError(f"FlowModel.interpolate: steps must be an integer ≥ 2, got {steps!r}")
        if tuple(x0.shape) != tuple(x1.shape):
            raise ValueError(f"FlowModel.interpolate: x0 {tuple(x0.shape)} and x1 {tuple(x1.shape)} differ in shape")
        z0, z1 = self.encode(params, x0), self.encode(params, x1)
        xp = namespace(z0)
        frames = []
        for k in range(int(steps)):
            t = k / (steps - 1)
            frames.append(self.decode(params, (1 - t) * z0 + t * z1))
        return xp.stack(frames)
