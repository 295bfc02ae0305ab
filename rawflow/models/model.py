"""A flow model: a bijector (data → latent) and a prior on the latent.

Change of variables, with ``z = f(x)`` the bijector's forward::

    log p(x) = log π(f(x)) + log|det ∂f/∂x|

Training minimises the mean negative log-likelihood over a batch ``x: (N, *event)``::

    L = −(1/N) Σ_n [log π(z_n) + logdet_n]

whose gradient is one hand-written pass: forward through the bijector, the prior's log-prob, then
the prior's VJP with ``glp = −1/N`` (giving ``gz``) and the bijector's VJP with cotangents
``(gz, glogdet = −1/N)``. Generation runs the bijector's inverse on prior draws (the lecture
note's generator ``G = f⁻¹``). Parameters are ``{"flow": bijector params, "prior": prior params}``.

Every method checks its arguments once, as a layer does (:mod:`rawflow.bijectors.bijector`):
``params`` against :meth:`FlowModel.param_spec` (paths are named from the model's root, e.g.
``'flow/3/net/0/w'``), inputs, generators and counts; then it runs the bijector's and the prior's
unchecked methods. An empty batch (``N = 0``) gives empty log-probabilities, latents and samples;
the mean NLL of an empty batch is undefined and raises ``ValueError``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .. import tree as _tree
from .._array import Array, namespace
from .._checks import check_array, check_count, check_positive_finite, check_rng
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

    def param_spec(self) -> dict:
        """``{"flow": the bijector's spec, "prior": the prior's}``; every method checks against it."""
        return {"flow": self.bijector.param_spec(), "prior": self.prior.param_spec()}

    # ------------------------------------------------------------------ checks
    def _check(self, params, x: Array, event_shape: tuple, what: str, method: str) -> None:
        check_array(f"FlowModel.{method}", x, what, event_shape)
        _tree.check(f"FlowModel.{method}", params, self.param_spec(), x.dtype)

    def _check_batch(self, x: Array, method: str) -> None:
        """The input checks of :meth:`nll_and_grad` without the parameter tree's (for a training
        loop whose parameters only an optimiser step has touched since they were checked)."""
        check_array(f"FlowModel.{method}", x, "input", self.event_shape)
        self._not_empty(x, method)

    def _not_empty(self, x: Array, method: str) -> None:
        if x.shape[0] == 0:
            raise ValueError(f"FlowModel.{method}: the mean NLL of an empty batch (N = 0) is undefined")

    def init(self, rng: np.random.Generator, x: Array) -> dict:
        """Parameters from an example batch (data-dependent layers initialise from it)."""
        if rng is not None:
            check_rng("FlowModel.init", rng)
        check_array("FlowModel.init", x, "input", self.event_shape)
        if x.shape[0] == 0 and self.bijector.data_dependent:
            raise ValueError(f"FlowModel.init: the flow's data-dependent init needs a non-empty example batch, "
                             f"got shape {tuple(x.shape)}")
        flow = self.bijector.init(rng, x)
        z = self.bijector._forward(flow, x)[0]
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
        self._check(params, x, self.event_shape, "input", "log_prob")
        return self._log_prob(params, x, stacklevel=3)

    def _log_prob(self, params: dict, x: Array, stacklevel: int = 2) -> Array:
        """:meth:`log_prob` without the argument checks (``stacklevel`` points its warning at the caller)."""
        policy = np.geterr()["over"]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # reported below instead
            z, logdet = self.bijector._forward_no_cache(params["flow"], x)
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
                warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)
            out = xp.where(bad, xp.asarray(-xp.inf, dtype=out.dtype), out)
        return out

    def nll(self, params: dict, x: Array) -> float:
        """Mean negative log-likelihood over the batch (nats per sample)."""
        self._check(params, x, self.event_shape, "input", "nll")
        self._not_empty(x, "nll")
        return -float(self._log_prob(params, x, stacklevel=3).mean())

    def nll_and_grad(self, params: dict, x: Array) -> tuple[float, dict]:
        """``(L, grads)``: mean NLL (a Python float) and its gradient, with the structure of params."""
        self._check(params, x, self.event_shape, "input", "nll_and_grad")
        self._not_empty(x, "nll_and_grad")
        return self._nll_and_grad(params, x)

    def _nll_and_grad(self, params: dict, x: Array) -> tuple[float, dict]:
        """:meth:`nll_and_grad` without the argument checks (for callers that made them)."""
        z, logdet, cache = self.bijector._forward(params["flow"], x)
        lp, prior_cache = self.prior._log_prob(params["prior"], z)
        loss = -float((lp + logdet).mean())
        xp = namespace(z)
        g = xp.full(z.shape[0], -1.0 / z.shape[0], dtype=z.dtype)  # ∂L/∂lp_n = ∂L/∂logdet_n = −1/N
        # Unchecked VJPs: the cotangents are built here with the right shape and dtype; a
        # non-finite gz (a diverged flow) must reach the caller's loss check.
        gz, gprior = self.prior._backward(params["prior"], prior_cache, g)
        _, gflow = self.bijector._backward(params["flow"], cache, gz, g)
        return loss, {"flow": gflow, "prior": gprior}

    def encode(self, params: dict, x: Array) -> Array:
        """``z = f(x)``."""
        self._check(params, x, self.event_shape, "input", "encode")
        return self.bijector._forward_no_cache(params["flow"], x)[0]

    def decode(self, params: dict, z: Array) -> Array:
        """``x = f⁻¹(z)``."""
        self._check(params, z, self.bijector.out_event_shape, "latent input", "decode")
        return self.bijector._inverse_no_cache(params["flow"], z)[0]

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
        check_rng("FlowModel.sample", rng)
        check_count("FlowModel.sample", n, "number of samples")
        check_positive_finite("FlowModel.sample", temperature, "temperature")
        if like is not None:
            check_array("FlowModel.sample", like, "like", None, finite=False)
        _tree.check("FlowModel.sample", params, self.param_spec(), None if like is None else like.dtype)
        if like is None:
            like = next((a for _, a in _tree.leaves(params)), None)
        z = self.prior.sample(params["prior"], rng, n, temperature, like=like, shape=shape)
        # params were checked above and the prior's draw is finite: decode without checking again
        return self.bijector._inverse_no_cache(params["flow"], z)[0]

    def interpolate(self, params: dict, x0: Array, x1: Array, steps: int = 8) -> Array:
        """Decode the straight line between ``z0 = f(x0)`` and ``z1 = f(x1)`` in latent space.

        ``x0, x1: (M, *event)`` (pairs row by row); returns ``(steps, M, *event)`` with
        ``out[k] = f⁻¹((1 − t_k)·z0 + t_k·z1)``, ``t_k = k/(steps − 1)``: the lecture note's
        translation between two sets of images. The end points reproduce ``x0`` and ``x1`` to
        round-off.
        """
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 2:
            raise ValueError(f"FlowModel.interpolate: steps must be an integer ≥ 2, got {steps!r}")
        self._check(params, x0, self.event_shape, "x0", "interpolate")
        check_array("FlowModel.interpolate", x1, "x1", self.event_shape)
        if tuple(x0.shape) != tuple(x1.shape):
            raise ValueError(f"FlowModel.interpolate: x0 {tuple(x0.shape)} and x1 {tuple(x1.shape)} differ in shape")
        z0, z1 = self.encode(params, x0), self.encode(params, x1)
        xp = namespace(z0)
        frames = []
        for k in range(int(steps)):
            t = k / (steps - 1)
            frames.append(self.decode(params, (1 - t) * z0 + t * z1))
        return xp.stack(frames)
