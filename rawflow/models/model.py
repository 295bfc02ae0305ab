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

**Conditional models** ``p(x | y)``. When the bijector or the prior is conditional
(:mod:`rawflow.bijectors.bijector`), every method takes ``y``: the context ``(N, K)`` that the
conditional parts receive (nflows' and zuko's conditional flows). With ``classes=K`` the model is
class-conditional (openai/glow's ``--ycond``): ``y`` holds integer labels ``(N,)`` in ``[0, K)`` (the
one place rawflow takes integers), turned into one-hot rows in ``x``'s dtype, or ``(N, K)`` float
rows directly (a blend of classes, as a translation between classes decodes). An optional
:class:`~rawflow.models.classifier.ClassifierHead` on the top latent adds openai's ``weight_y``
cross-entropy to the training objective::

    L = −(1/N) Σ_n [log π(z_n | c_n) + logdet_n] + weight_y·D·(1/N) Σ_n CE(head(z_n), c_n)

(openai's ``bits_x + weight_y·bits_y`` times ``D·ln 2``; ``D`` the dimensions of ``x``). The head's
parameters are ``params["classifier"]``. ``log_prob`` is always ``log p(x | y)`` alone.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .. import tree as _tree
from .._array import Array, namespace
from .._checks import array_problem, check_array, check_context, check_count, check_positive_finite, check_rng
from ..bijectors.bijector import (Bijector, common_context, run_backward, run_forward, run_forward_no_cache,
                                  run_inverse, run_inverse_no_cache)
from ..bijectors.chain import _shapes_compatible
from ..distributions.priors import Prior
from .classifier import cross_entropy, one_hot


class FlowModel:
    def __init__(self, bijector: Bijector, prior: Prior, *, classes: int | None = None, classifier=None,
                 weight_y: float = 0.0):
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
        context = common_context("FlowModel", [bijector, prior])
        if classes is not None:
            if isinstance(classes, bool) or not isinstance(classes, (int, np.integer)) or classes < 2:
                raise ValueError(f"FlowModel: classes must be an integer ≥ 2, got {classes!r}")
            classes = int(classes)
            if context is not None and context != (classes,):
                raise ValueError(f"FlowModel: the flow and prior take a context of shape {context}, not the one-hot "
                                 f"label of {classes} classes")
            context = (classes,)
        elif classifier is not None:
            raise ValueError("FlowModel: a classifier head needs classes=")
        if classifier is not None and getattr(classifier, "n_classes", None) != classes:
            raise ValueError(f"FlowModel: the classifier head predicts {getattr(classifier, 'n_classes', None)} "
                             f"classes, the model has {classes}")
        if isinstance(weight_y, bool) or not isinstance(weight_y, (int, float, np.integer, np.floating)) \
                or not (math.isfinite(weight_y) and weight_y >= 0):
            raise ValueError(f"FlowModel: weight_y must be a finite number ≥ 0, got {weight_y!r}")
        if weight_y > 0 and classifier is None:
            raise ValueError("FlowModel: weight_y > 0 weighs a classifier's cross-entropy; pass classifier=")
        self.classes, self.classifier, self.weight_y = classes, classifier, float(weight_y)
        #: shape of one row of the context the model conditions on (``None``: unconditional)
        self.context_shape = context

    @property
    def event_shape(self) -> tuple:
        return self.bijector.event_shape

    def __repr__(self) -> str:
        extra = "" if self.classes is None else f", classes={self.classes}, weight_y={self.weight_y}"
        return f"FlowModel({type(self.bijector).__name__}, {self.prior!r}{extra})"

    def param_spec(self) -> dict:
        """``{"flow": the bijector's spec, "prior": the prior's}`` (and ``"classifier"``: the head's);
        every method checks against it."""
        spec = {"flow": self.bijector.param_spec(), "prior": self.prior.param_spec()}
        if self.classifier is not None:
            spec["classifier"] = self.classifier.param_spec()
        return spec

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

    def _context(self, y, like: Array, method: str, n: int | None = None) -> Array | None:
        """The context rows for ``y`` (module doc), in ``like``'s dtype and namespace; ``n`` rows
        (default ``like.shape[0]``)."""
        owner = f"FlowModel.{method}"
        rows = like.shape[0] if n is None else n
        if self.context_shape is None:
            return check_context(owner, None, y, like, what="y")
        if y is None:
            what = (f"integer labels (N,) in [0, {self.classes}) or (N, {self.classes}) rows" if self.classes
                    else f"a context of shape (N, {', '.join(map(str, self.context_shape))})")
            raise ValueError(f"{owner}: the model is conditional: pass y, {what}")
        if self.classes is not None and getattr(y, "ndim", None) == 1:
            problem = array_problem(y)
            if problem:
                raise ValueError(f"{owner}: y {problem}")
            if y.dtype.kind not in "iu":
                raise ValueError(f"{owner}: labels y must be integers, got dtype {y.dtype} (or pass (N, "
                                 f"{self.classes}) float rows)")
            if y.shape[0] != rows:
                raise ValueError(f"{owner}: y has {y.shape[0]} labels for {rows} samples")
            if rows and (int(y.min()) < 0 or int(y.max()) >= self.classes):
                raise ValueError(f"{owner}: labels must lie in [0, {self.classes}), got values from {int(y.min())} "
                                 f"to {int(y.max())}")
            xp = namespace(like)
            return one_hot(xp.asarray(y), self.classes, like.dtype, xp)
        return check_context(owner, self.context_shape, y, like, n=rows, what="y")

    def _parts(self, c):
        """The context for the bijector and for the prior (``None`` where they take none)."""
        return (None if self.bijector.context_shape is None else c), (None if self.prior.context_shape is None else c)

    def init(self, rng: np.random.Generator, x: Array, y=None) -> dict:
        """Parameters from an example batch (data-dependent layers initialise from it)."""
        if rng is not None:
            check_rng("FlowModel.init", rng)
        check_array("FlowModel.init", x, "input", self.event_shape)
        c = self._context(y, x, "init")
        if x.shape[0] == 0 and self.bijector.data_dependent:
            raise ValueError(f"FlowModel.init: the flow's data-dependent init needs a non-empty example batch, "
                             f"got shape {tuple(x.shape)}")
        cf, cp = self._parts(c)
        flow = self.bijector.init(rng, x, context=cf)
        z = run_forward(self.bijector, flow, x, cf)[0]
        params = {"flow": flow, "prior": self.prior.init(rng, z, context=cp)}
        if self.classifier is not None:
            params["classifier"] = self.classifier.init(rng, z)
        return params

    def log_prob(self, params: dict, x: Array, y=None) -> Array:
        """``log p(x): (N,)`` (``log p(x | y)`` for a conditional model); never NaN for a finite ``x``.

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
        return self._log_prob(params, x, self._context(y, x, "log_prob"), stacklevel=3)

    def _log_prob(self, params: dict, x: Array, c=None, stacklevel: int = 2) -> Array:
        """:meth:`log_prob` without the argument checks (``c``: the context rows; ``stacklevel`` points
        its warning at the caller)."""
        cf, cp = self._parts(c)
        policy = np.geterr()["over"]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # reported below instead
            z, logdet = run_forward_no_cache(self.bijector, params["flow"], x, cf)
            lp, _ = self.prior.log_prob(params["prior"], z, check_finite=False, context=cp)
            out = lp + logdet
        return self._flag_overflow(z, logdet, out, policy, stacklevel + 1)

    def _flag_overflow(self, z, logdet, out, policy, stacklevel):
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

    def nll(self, params: dict, x: Array, y=None) -> float:
        """Mean negative log-likelihood over the batch (nats per sample)."""
        self._check(params, x, self.event_shape, "input", "nll")
        self._not_empty(x, "nll")
        return -float(self._log_prob(params, x, self._context(y, x, "nll"), stacklevel=3).mean())

    def nll_and_grad(self, params: dict, x: Array, y=None, *, context_grad: bool = False):
        """``(L, grads)``: the training objective (a Python float) and its gradient, with the
        structure of params. ``L`` is the mean NLL, plus ``weight_y·D·`` the mean cross-entropy of the
        classifier head when the model has one and ``weight_y > 0`` (module doc).

        ``context_grad=True`` returns ``(L, grads, gy)`` with ``gy = ∂L/∂y`` for a model conditioned
        on a float context ``y: (N, K)`` (to backpropagate into the encoder that produced it).
        """
        self._check(params, x, self.event_shape, "input", "nll_and_grad")
        self._not_empty(x, "nll_and_grad")
        c = self._context(y, x, "nll_and_grad")
        if context_grad and (c is None or getattr(y, "ndim", 2) == 1):
            raise ValueError("FlowModel.nll_and_grad: context_grad needs a model conditioned on a float context y "
                             "(N, K), not labels or no context")
        loss, grads, gc = self._nll_and_grad(params, x, c, with_context=True)
        return (loss, grads, gc) if context_grad else (loss, grads)

    def _nll_and_grad(self, params: dict, x: Array, c=None, *, with_context: bool = False):
        """:meth:`nll_and_grad` without the argument checks (for callers that made them); ``c`` are
        the context rows. ``with_context`` adds ``∂L/∂c`` (``None`` for an unconditional model)."""
        cf, cp = self._parts(c)
        z, logdet, cache = run_forward(self.bijector, params["flow"], x, cf)
        if cp is None:
            lp, prior_cache = self.prior._log_prob(params["prior"], z)
        else:
            lp, prior_cache = self.prior._log_prob(params["prior"], z, cp)
        n = z.shape[0]
        loss = -float((lp + logdet).mean())
        xp = namespace(z)
        g = xp.full(n, -1.0 / n, dtype=z.dtype)  # ∂L/∂lp_n = ∂L/∂logdet_n = −1/N
        # Unchecked VJPs: the cotangents are built here with the right shape and dtype; a
        # non-finite gz (a diverged flow) must reach the caller's loss check.
        out = self.prior._backward(params["prior"], prior_cache, g)
        gz, gprior, gc = out if cp is not None else (*out, None)
        grads = {"prior": gprior}
        if self.classifier is not None:
            if self.weight_y > 0:
                weight = self.weight_y * math.prod(x.shape[1:])
                logits, head_cache = self.classifier.apply(params["classifier"], z)
                ce, glogits, gtarget = cross_entropy(logits, c)
                loss += weight * float(ce.mean())
                gz_head, grads["classifier"] = self.classifier.backward(params["classifier"], head_cache,
                                                                        (weight / n) * glogits)
                gz = gz + gz_head
                gc = (weight / n) * gtarget if gc is None else gc + (weight / n) * gtarget
            else:
                grads["classifier"] = _tree.map(xp.zeros_like, params["classifier"])
        _, grads["flow"], gc_flow = run_backward(self.bijector, params["flow"], cache, gz, g)
        if gc_flow is not None:
            gc = gc_flow if gc is None else gc + gc_flow
        grads = {k: grads[k] for k in self.param_spec()}  # the params' key order
        return (loss, grads, gc) if with_context else (loss, grads)

    def _flow_context(self, y, like: Array, method: str) -> Array | None:
        """The bijector's context for ``y``; ``y`` may be omitted where the bijector takes none (a
        class-conditional Glow's flow: only its prior sees the class)."""
        if y is None and self.bijector.context_shape is None:
            return None
        return self._parts(self._context(y, like, method))[0]

    def encode(self, params: dict, x: Array, y=None) -> Array:
        """``z = f(x)`` (``f(x; y)`` for a conditional flow; ``y`` is not needed where only the prior
        takes it)."""
        self._check(params, x, self.event_shape, "input", "encode")
        return run_forward_no_cache(self.bijector, params["flow"], x, self._flow_context(y, x, "encode"))[0]

    def decode(self, params: dict, z: Array, y=None) -> Array:
        """``x = f⁻¹(z)`` (``f⁻¹(z; y)`` for a conditional flow; ``y`` as in :meth:`encode`)."""
        self._check(params, z, self.bijector.out_event_shape, "latent input", "decode")
        return run_inverse_no_cache(self.bijector, params["flow"], z, self._flow_context(y, z, "decode"))[0]

    def sample(
        self,
        params: dict,
        rng: np.random.Generator,
        n: int,
        temperature: float = 1.0,
        like: Array | None = None,
        shape=None,
        *,
        y=None,
    ) -> Array:
        """``n`` samples ``x = f⁻¹(z)``, ``z ~ π`` at temperature ``T`` (``z ~ π(· | y)``, ``x = f⁻¹(z; y)``
        for a conditional model: ``y`` holds ``n`` labels or context rows).

        Draws land in ``like``'s namespace/dtype, else that of the first parameter leaf; ``shape``
        is the concrete latent event shape where the prior's has free (``None``) axes.
        """
        check_rng("FlowModel.sample", rng)
        n = check_count("FlowModel.sample", n, "number of samples")
        check_positive_finite("FlowModel.sample", temperature, "temperature")
        if like is not None:
            check_array("FlowModel.sample", like, "like", None, finite=False)
        _tree.check("FlowModel.sample", params, self.param_spec(), None if like is None else like.dtype)
        if like is None:
            like = next((a for _, a in _tree.leaves(params)), None)
        # the context rows take like's dtype and namespace (a model without parameters: the context's own)
        ref = like if like is not None else (y if getattr(y, "ndim", None) == 2 else np.empty(0))
        cf, cp = self._parts(self._context(y, ref, "sample", n=n))
        z = self.prior.sample(params["prior"], rng, n, temperature, like=like, shape=shape, context=cp)
        # params were checked above and the prior's draw is finite: decode without checking again
        return run_inverse_no_cache(self.bijector, params["flow"], z, cf)[0]

    def log_prob_per_class(self, params: dict, x: Array) -> Array:
        """``log p(x | k): (N, K)`` for every class ``k`` of a class-conditional model.

        With a uniform class prior, ``log p(k | x) = log p(x | k) − logsumexp_k log p(x | k)`` (the
        flow as a Bayes classifier) and the marginal ``log p(x) = logsumexp_k log p(x | k) − log K``.
        The flow runs once when only the prior takes the class (openai's ``--ycond``).
        """
        if self.classes is None:
            raise ValueError("FlowModel.log_prob_per_class: the model is not class-conditional (classes=None)")
        self._check(params, x, self.event_shape, "input", "log_prob_per_class")
        xp = namespace(x)
        cols = []
        if self.bijector.context_shape is None and self.prior.context_shape is not None:
            policy = np.geterr()["over"]
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                z, logdet, _ = run_forward(self.bijector, params["flow"], x, None)
                for k in range(self.classes):
                    c = one_hot(xp.full(x.shape[0], k), self.classes, x.dtype, xp)
                    lp = self.prior.log_prob(params["prior"], z, check_finite=False, context=c)[0]
                    cols.append(self._flag_overflow(z, logdet, lp + logdet, policy, 3))
        else:
            for k in range(self.classes):
                c = one_hot(xp.full(x.shape[0], k), self.classes, x.dtype, xp)
                cols.append(self._log_prob(params, x, c, stacklevel=3))
        return xp.stack(cols, axis=1)

    def classifier_logits(self, params: dict, x: Array, y=None) -> Array:
        """The classifier head's logits ``(N, K)`` from the top latent of ``f(x)``.

        Where the flow itself takes the class (``class_conditional_glow(split_prior=True)``), ``y``
        is the label the latent is computed with, as in training; the split priors only move the
        factored parts, so the top latent the head reads is the same for every ``y`` there.
        """
        if self.classifier is None:
            raise ValueError("FlowModel.classifier_logits: the model has no classifier head")
        self._check(params, x, self.event_shape, "input", "classifier_logits")
        z = run_forward(self.bijector, params["flow"], x, self._flow_context(y, x, "classifier_logits"))[0]
        return self.classifier.apply(params["classifier"], z)[0]

    def interpolate(self, params: dict, x0: Array, x1: Array, steps: int = 8, y0=None, y1=None) -> Array:
        """Decode the straight line between ``z0 = f(x0)`` and ``z1 = f(x1)`` in latent space.

        ``x0, x1: (M, *event)`` (pairs row by row); returns ``(steps, M, *event)`` with
        ``out[k] = f⁻¹((1 − t_k)·z0 + t_k·z1)``, ``t_k = k/(steps − 1)``: the lecture note's
        translation between two sets of images. The end points reproduce ``x0`` and ``x1`` to
        round-off. A conditional flow encodes each end with its own ``y`` and decodes frame ``k``
        with the blended context ``(1 − t_k)·c0 + t_k·c1``.
        """
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 2:
            raise ValueError(f"FlowModel.interpolate: steps must be an integer ≥ 2, got {steps!r}")
        self._check(params, x0, self.event_shape, "x0", "interpolate")
        check_array("FlowModel.interpolate", x1, "x1", self.event_shape)
        if tuple(x0.shape) != tuple(x1.shape):
            raise ValueError(f"FlowModel.interpolate: x0 {tuple(x0.shape)} and x1 {tuple(x1.shape)} differ in shape")
        f0, f1 = self._flow_context(y0, x0, "interpolate"), self._flow_context(y1, x1, "interpolate")
        z0 = run_forward(self.bijector, params["flow"], x0, f0)[0]
        z1 = run_forward(self.bijector, params["flow"], x1, f1)[0]
        xp = namespace(z0)
        frames = []
        for k in range(int(steps)):
            t = k / (steps - 1)
            ct = None if f0 is None else (1 - t) * f0 + t * f1
            frames.append(run_inverse(self.bijector, params["flow"], (1 - t) * z0 + t * z1, ct)[0])
        return xp.stack(frames)
