"""``rawflow check --stress``: every layer at the points where implementations break.

Each case is judged by :func:`~rawflow.check.precise.check_precise`: float64 and float32 results
against the layer's own code at 60 digits, with the bar ``C·eps·T`` (``T`` the term size, the
conditioning bound of each entry; ``C`` = :data:`~rawflow.check.precise.C_PRECISE`), the oracle's own
precision and VJP maths, and the round trips and exact log-det cancellation at the point.
The families (``rawflow check --stress --list``):

* ``linear``: :class:`LULinear` with ``cond(W)`` ≈ 1e6, 1e9, 1e12 (one ``log|s|`` pushed down), the
  point ``log_scale = −18`` (``cond ≈ 3e8``), a 1×1 convolution; :class:`DenseLinear` with integer
  unimodular weights of ``cond`` ≈ 1e6 … 1e12 (exact in float32, so both precisions see the same
  matrix). Inverse points are generic ``z`` (so ``x = W⁻¹z`` is huge), not ``f(x)``.
* ``scales``: the elementwise affine transform as a layer of its raw conditioner output ``h``
  (:class:`TransformLayer`), every scale map, ``|h|`` up to 30, vectors and images, mixed-magnitude
  rows; affine couplings whose scale outputs sit at ``|h|`` ∈ [10, 30].
* ``logit``: inputs near 0 and 1 (``1e-30``, ``1 − 2⁻²⁴``; ``1 − 2⁻⁵⁰`` in float64), latents up to
  ``|z| = 40``, ``α`` = 0 and 0.05.
* ``batch``: every registered case (:mod:`rawflow.check.registry`) with a batch of 1 and with
  mixed-magnitude rows (``×1e-6, ×1, ×8``).
* ``model``: small whole models (:class:`ModelLayer`: ``log p(x)`` and its gradient for every
  parameter) at mixed-magnitude points, and ``log p`` far from the data (:func:`check_log_prob`:
  finite and within the bound wherever the exact value is a float64, ``−inf`` with a warning where
  it is not, never NaN).
* ``kernels``: the fused Numba kernels (``backend="numba"``: coupling transforms, couplings,
  ActNorm) at the same points, against the reference's oracle and bounds. The CUDA paths are
  stressed by the test suite (``tests/kernels/``), under the numba-cuda simulator and the CUDA C
  CPU emulator, through :class:`KernelTransformLayer`.

Everything is seeded: a case is the same on every machine.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Callable, NamedTuple

import numpy as np

from .. import tree
from .._array import to_numpy
from ..bijectors.actnorm import ActNorm
from ..bijectors.coupling import AdditiveTransform, AffineCoupling, AffineTransform
from ..bijectors.linear import DenseLinear, LULinear
from ..bijectors.logit import Logit
from . import registry
from .precise import DPS, PreciseProbe, check_precise
from .records import Report, compare, verdict
from .registry import randomize


class StressCase(NamedTuple):
    """``x`` is the forward point; ``z`` the inverse point (``None``: ``f(x)``); ``variants`` other
    implementations judged against the reference's oracle; ``options`` go to :func:`check_precise`."""

    name: str
    family: str
    layer: object
    params: dict
    x: np.ndarray | None
    z: np.ndarray | None = None
    variants: dict | None = None
    options: dict = {}


def _f32(a) -> np.ndarray:
    """Rounded to float32 and back: the stress points are the same in both precisions."""
    return np.asarray(a, dtype=np.float64).astype(np.float32).astype(np.float64)


# ---------------------------------------------------------------------- ill-conditioned weights
def lu_params(layer: LULinear, cond: float, rng: np.random.Generator, shape=(3, 4), scale: float = 0.2):
    """``(params, x)`` for ``layer`` near its random-rotation init, with one ``log|s|`` pushed down
    until ``cond₂(W)`` is within 10 % of ``cond`` (float32-representable parameters)."""
    x = _f32(rng.normal(size=shape))
    params = tree.map(lambda a: a + rng.normal(scale=scale, size=a.shape), layer.init(rng, x))
    k = int(rng.integers(layer.features))
    log_s = params["log_scale"].copy()
    for _ in range(8):
        p = tree.map(_f32, dict(params, log_scale=log_s))
        have = float(np.linalg.cond(layer.weight(p)))
        if abs(math.log(have / cond)) < 0.1:
            break
        log_s[k] -= math.log(cond / have)
    return tree.map(_f32, dict(params, log_scale=log_s)), x


def dense_weight(channels: int, cond: float, rng: np.random.Generator) -> np.ndarray:
    """A ``(C, C)`` weight with ``cond₂ ≈ cond`` whose entries are exact in float32.

    An integer matrix of determinant ±1 (the block ``[[k, k+1], [k−1, k]]``, ``cond ≈ 4k²``, mixed
    with unit-triangular integer factors) scaled by a power of two: a float32 rounding of a generic
    ill-conditioned matrix would move its smallest singular value by ``eps32·‖W‖`` and leave
    ``cond ≲ 1e7``. Entries stay below 2²⁴.
    """
    if channels < 2:
        raise ValueError("dense_weight: needs at least 2 channels")

    def build(k):
        a = np.eye(channels)
        a[:2, :2] = [[k, k + 1], [k - 1, k]]
        mix = np.random.default_rng(seed)
        up = np.triu(mix.integers(-1, 2, (channels, channels)), 1) + np.eye(channels)
        lo = np.tril(mix.integers(-1, 2, (channels, channels)), -1) + np.eye(channels)
        perm = np.eye(channels)[mix.permutation(channels)]
        return perm @ lo @ a @ up

    seed = int(rng.integers(2**31))
    lo_k, hi_k = 1, 2**21
    while hi_k - lo_k > 1:
        mid = (lo_k + hi_k) // 2
        lo_k, hi_k = (mid, hi_k) if np.linalg.cond(build(mid)) < cond else (lo_k, mid)
    a = build(hi_k)
    if np.abs(a).max() >= 2**24 or not 0.5 < np.linalg.cond(a) / cond < 2:
        raise ValueError(f"dense_weight: cond {cond:g} needs entries beyond float32's integers")
    return a * 2.0 ** -math.ceil(math.log2(np.abs(a).max()))


def _linear(name, layer, params, x, rng) -> StressCase:
    """A linear stress case: the inverse at a generic ``z`` (so ``x = W⁻¹z`` is huge); round trips
    against the project's bar for the 1×1 conv round trip, ``ulps·eps·cond(W)·max(‖x‖∞, ‖z‖∞)``: at these
    conditions the exact preimage of a rounded ``z`` lies ``eps·cond(W)`` away from ``x``, which
    the componentwise bound (taken at ``x``) does not see, and GEPP's factors may grow."""
    w = layer.weight(params) if isinstance(layer, LULinear) else params["weight"]
    kappa = float(np.linalg.cond(w))
    return StressCase(name, "linear", layer, params, x, _f32(rng.normal(size=x.shape)), options={"kappa": kappa})


def linear_cases() -> list[StressCase]:
    cases = []
    for i, cond in enumerate((1e6, 1e9, 1e12)):
        rng = np.random.default_rng(100 + i)
        layer = LULinear(4, seed=10 + i)
        params, x = lu_params(layer, cond, rng)
        cases.append(_linear(f"lu-cond{cond:.0e}", layer, params, x, rng))
    # the point of issue 14: log_scale = −18 on a perturbed rotation (cond(W) ≈ 1e8 … 3e8)
    rng = np.random.default_rng(64)
    layer = LULinear(4, seed=5)
    params = tree.map(lambda a: a + rng.normal(scale=0.3, size=a.shape), layer.init(rng, np.zeros((1, 4))))
    params["log_scale"][1] = -18.0
    x = rng.normal(size=(3, 4))
    cases.append(_linear("lu-log-scale-18", layer, tree.map(_f32, params), _f32(x), rng))
    rng = np.random.default_rng(104)
    layer = LULinear(3, spatial=2, seed=14)
    params, x = lu_params(layer, 1e9, rng, shape=(2, 3, 2, 2))
    cases.append(_linear("lu-1x1conv-cond1e9", layer, params, x, rng))
    for i, cond in enumerate((1e6, 1e9, 1e12)):
        rng = np.random.default_rng(110 + i)
        layer = DenseLinear(4, seed=20 + i)
        params = {"weight": dense_weight(4, cond, rng)}
        x = _f32(rng.normal(size=(3, 4)))
        cases.append(_linear(f"dense-cond{cond:.0e}", layer, params, x, rng))
    rng = np.random.default_rng(113)
    layer = DenseLinear(3, spatial=2, seed=23)
    x = _f32(rng.normal(size=(2, 3, 2, 2)))
    cases.append(_linear("dense-1x1conv-cond1e12", layer, {"weight": dense_weight(3, 1e12, rng)}, x, rng))
    return cases


# ---------------------------------------------------------------------- saturated scales
class TransformLayer:
    """An elementwise coupling transform as a layer: input ``x_b``, parameters ``{"h": h}``.

    ``h`` is the raw conditioner output (``(N, 2·C_b, …)`` for the affine transform: ``[h_s, t]``),
    so the stress points can put it anywhere, and its gradient is the VJP's ``gh``.
    """

    def __init__(self, transform, name: str | None = None):
        self.transform = transform
        self.name = name or f"{type(transform).__name__}({getattr(transform, 'scale', '')})"

    def forward(self, params, x):
        return self.transform.forward(x, params["h"])

    def inverse(self, params, z):
        return self.transform.inverse(z, params["h"])

    def backward(self, params, cache, gz, glogdet):
        gx, gh = self.transform.backward(cache, gz, glogdet)
        return gx, {"h": gh}

    def inverse_backward(self, params, cache, gx, glogdet):
        gz, gh = self.transform.inverse_backward(cache, gx, glogdet)
        return gz, {"h": gh}


class KernelTransformLayer(TransformLayer):
    """A coupling-kernel module (``affine_forward``, ``affine_inverse``, ``affine_backward``,
    ``affine_inverse_backward``: :mod:`rawflow.kernels`' interface) as a layer of ``{"h": h}``.

    ``to_device`` / ``to_host`` move arrays (a GPU or an emulator); ``launch`` holds keyword
    arguments of every kernel call (``threads=``, ``blocks=``). The cache is the host ``x_b``.
    """

    def __init__(self, api, scale, *, to_device=None, to_host=None, name: str | None = None, **launch):
        self.api, self.scale, self.launch = api, scale, launch
        self.dev = to_device or (lambda a: a)
        self.host = to_host or (lambda a: np.asarray(a))
        self.name = name or f"{getattr(api, '__name__', type(api).__name__)}({scale})"

    def _call(self, fn, *arrays):
        out = getattr(self.api, fn)(*(self.dev(np.ascontiguousarray(a)) for a in arrays), self.scale, **self.launch)
        return tuple(self.host(o) for o in out)

    def forward(self, params, x):
        y, ld = self._call("affine_forward", x, params["h"])
        return y, ld, x

    def inverse(self, params, z):
        x, ld = self._call("affine_inverse", z, params["h"])
        return x, ld, x

    def backward(self, params, cache, gz, glogdet):
        gx, gh = self._call("affine_backward", cache, params["h"], gz, glogdet)
        return gx, {"h": gh}

    def inverse_backward(self, params, cache, gx, glogdet):
        gz, gh = self._call("affine_inverse_backward", cache, params["h"], gx, glogdet)
        return gz, {"h": gh}


#: The round-trip bound (:class:`~rawflow.check.conditioning.Conditioning`) propagates roundings
#: through the input Jacobian only; a transform's shift ``t`` is a parameter here, so ``z − t``
#: rounds by ``eps·|t|`` that the bound does not see. Couplings (``t`` from the copied input) keep
#: their round trips.
_NO_ROUNDTRIP = {"roundtrip": False}

#: raw conditioner outputs of the stress points: saturated ranges of each map, up to |h| = 30
STRESS_H = (1.0, 10.0, 20.0, 30.0)
#: row scales of a mixed-magnitude batch
MIXED = (1e-6, 1.0, 8.0)


def transform_points(scale: str, shape=(3, 4), seed: int = 0):
    """``(x_b, h)`` for the affine transform: ``|h_s|`` cycling through :data:`STRESS_H` with both
    signs (``u = h + 2`` for ``sigmoid``), shifts of ordinary size, rows at :data:`MIXED` scales."""
    rng = np.random.default_rng(seed)
    n, c = shape[0], shape[1]
    mags = np.resize(np.array(STRESS_H), (n, c) + tuple(shape[2:]))
    mags = mags * rng.uniform(0.9, 1.0, mags.shape)
    signs = np.where(rng.random(mags.shape) < 0.5, -1.0, 1.0)
    hs = signs * mags - (2.0 if scale == "sigmoid" else 0.0)
    t = rng.normal(size=hs.shape)
    rows = np.resize(np.array(MIXED), n).reshape((n,) + (1,) * (len(shape) - 1))
    x = rng.normal(size=shape) * rows
    return _f32(x), _f32(np.concatenate([hs, t], axis=1))


def _saturated_coupling(scale: str, seed: int, backend: str = "reference"):
    """An affine coupling (D = 4) whose scale outputs sit at ``|h|`` ∈ [10, 30] for every sample."""
    rng = np.random.default_rng(seed)
    layer = AffineCoupling(4, scale=scale, hidden=(4,), activation="tanh", backend=backend)
    x = _f32(rng.normal(size=(3, 4)) * np.array(MIXED)[:, None])
    params = randomize(layer.init(rng, x), rng, 0.5)
    c = layer.partition.size_b
    last = params["net"]["1"]
    mags = rng.uniform(10.0, 30.0, c) * np.where(np.arange(c) % 2 == 0, -1.0, 1.0)
    last["w"] = np.concatenate([last["w"][:c] * 0.01, last["w"][c:]])
    last["b"] = np.concatenate([mags - (2.0 if scale == "sigmoid" else 0.0), last["b"][c:]])
    return layer, tree.map(_f32, params), x


def scale_cases() -> list[StressCase]:
    cases = []
    for i, scale in enumerate(("exp", "bounded", "sigmoid")):
        for j, shape in enumerate(((3, 4), (2, 2, 2, 3))):
            x, h = transform_points(scale, shape, seed=200 + 10 * i + j)
            kind = "vector" if len(shape) == 2 else "image"
            cases.append(StressCase(f"transform-{scale}-{kind}", "scales",
                                    TransformLayer(AffineTransform(scale)), {"h": h}, x, options=_NO_ROUNDTRIP))
        layer, params, x = _saturated_coupling(scale, 220 + i)
        cases.append(StressCase(f"coupling-{scale}-saturated", "scales", layer, params, x))
    return cases


# ---------------------------------------------------------------------- logit
def logit_cases() -> list[StressCase]:
    near = np.array([[1e-30, 1e-8, 0.5, 1 - 2.0**-24, 1 - 2.0**-20]])
    z_big = np.array([[10.0, 20.0, 30.0, 36.0, -36.0], [-10.0, -20.0, -30.0, 40.0, -40.0]])
    cases = []
    for alpha in (0.0, 0.05):
        layer = Logit((5,), alpha=alpha)
        x = np.concatenate([near, near[:, ::-1]])
        # α = 0: sigmoid(z) rounds to 1 once z ≳ 16.6 (float32) / 36.7 (float64), so the inverse
        # returns x = 1 (the correctly rounded value), outside the forward's domain (0, 1): a round
        # trip from x = 1 − 2⁻²⁴ (float32) ends in a ValueError. No round trips for α = 0 here.
        options = {} if alpha else {"roundtrip": False}
        cases.append(StressCase(f"logit-alpha{alpha:g}", "logit", layer, {}, x, z_big, options=options))
    layer = Logit((3,), alpha=0.0)
    x64 = np.array([[1e-300, 1 - 2.0**-50, 1 - 2.0**-53]])
    cases.append(StressCase("logit-alpha0-float64-edge", "logit", layer, {}, x64, None,
                            options={"dtypes": ("float64",), "roundtrip": False}))
    return cases


# ---------------------------------------------------------------------- every registered case
def _mixed(case: registry.Case) -> np.ndarray:
    x = np.asarray(case.x, dtype=np.float64)
    if isinstance(case.layer, Logit):  # inputs must stay in [0, 1): near 0, middle, near 1
        return np.stack([np.full(x.shape[1:], 1e-7), x[1 % len(x)], np.full(x.shape[1:], 1 - 2.0**-23)])
    rows = np.resize(np.array(MIXED), x.shape[0]).reshape((x.shape[0],) + (1,) * (x.ndim - 1))
    return x * rows


def batch_cases() -> list[StressCase]:
    cases = []
    for c in registry.cases():
        opts = {k: v for k, v in c.options.items() if k in ("dtypes",)}
        cases.append(StressCase(f"{c.name}@n1", "batch", c.layer, c.params, c.x[:1], options=opts))
        cases.append(StressCase(f"{c.name}@mixed", "batch", c.layer, c.params, _mixed(c), options=opts))
    return cases


# ---------------------------------------------------------------------- whole models
class ModelLayer:
    """A :class:`~rawflow.models.model.FlowModel` as a forward-only layer: ``forward(params, x) =
    (z, log p(x), cache)``, ``backward`` its VJP for the input and every parameter of the flow and
    the prior. Glue only: the bijector's and the prior's own (unchecked) methods do the maths, so
    the precise oracle evaluates the model's code itself."""

    def __init__(self, model, name: str | None = None):
        self.model = model
        self.name = name or repr(model)
        self.event_shape = model.event_shape

    def _forward(self, params, x):
        z, logdet, cache = self.model.bijector._forward(params["flow"], x)
        lp, prior_cache = self.model.prior._log_prob(params["prior"], z)
        return z, lp + logdet, (cache, prior_cache)

    def _backward(self, params, cache, gz, glp):
        flow_cache, prior_cache = cache
        gz_prior, gprior = self.model.prior._backward(params["prior"], prior_cache, glp)
        gx, gflow = self.model.bijector._backward(params["flow"], flow_cache, gz + gz_prior, glp)
        return gx, {"flow": gflow, "prior": gprior}

    forward, backward = _forward, _backward

    def inverse(self, params, z):
        raise ValueError(f"{self.name}: a model's log-density is checked forward only (directions=('forward',))")

    inverse_backward = inverse


def _model_case(name, model, seed, *, scale=0.3, image=False) -> StressCase:
    rng = np.random.default_rng(seed)
    shape = (3,) + tuple(model.event_shape)
    x = rng.uniform(size=shape) if image else rng.normal(size=shape)
    params = model.init(rng, x)
    params = tree.map(lambda a: a + rng.normal(scale=scale, size=a.shape), params)
    xm = x * np.array(MIXED).reshape((3,) + (1,) * (x.ndim - 1))
    return StressCase(name, "model", ModelLayer(model, name), tree.map(_f32, params), _f32(xm),
                      options={"directions": ("forward",), "structure": False})


def model_cases() -> list[StressCase]:
    from ..distributions.priors import StandardLogistic, StandardNormal
    from ..models.architectures import glow, nice, nice_images, realnvp
    from ..models.model import FlowModel

    return [
        _model_case("nice-logistic", FlowModel(nice(4, 2, hidden=(4,), activation="tanh"), StandardLogistic((4,))), 300),
        _model_case("realnvp-normal", FlowModel(realnvp(4, 3, hidden=(4,), activation="relu"), StandardNormal((4,))), 301),
        _model_case("nice-images", FlowModel(nice_images((1, 2, 2), 2, hidden=(3,)), StandardNormal((4,))), 302,
                    image=True),
        _model_case("glow-small", FlowModel(glow(1, 1, 2, (1, 4, 4)), StandardNormal((16,))), 303, scale=0.05,
                    image=True),
    ]


def far_model(seed: int = 0):
    """``(model, params)``: an exp-scale RealNVP (6 couplings, (32, 32) ReLU conditioners) whose
    scales grow quickly away from the origin (every weight ``N(0, 0.4²)``): at :data:`FAR` some
    points have a float64 ``log p``, most have one far below ``−1e308``, and before issue 14 three
    of them gave NaN."""
    from ..distributions.priors import StandardNormal
    from ..models.architectures import realnvp
    from ..models.model import FlowModel

    rng = np.random.default_rng(seed)
    model = FlowModel(realnvp(2, 6, hidden=(32, 32)), StandardNormal((2,)))
    params = randomize(model.init(rng, rng.normal(size=(4, 2))), rng, 0.4)
    return model, tree.map(_f32, params)


#: where ``log p`` is evaluated far from the data: 8 directions at radii 0.5 … 1e3
FAR = np.array([[r * math.cos(a), r * math.sin(a)] for r in (0.5, 1.0, 2.0, 5.0, 100.0, 1e3)
                for a in np.linspace(0, 2 * math.pi, 8, endpoint=False)])


def _log_prob_terms(model, params, x) -> float:
    """Term size of one sample's ``log p = log π(z) + logdet``: ``|log π| + |logdet|`` plus the
    first-order change under relative roundings of the input and the parameters,
    ``Σ|∂log p/∂w|·|w|`` (``max(|θ|, 1)`` for parameters, as :class:`~rawflow.check.analysis.Analysis`):
    one VJP instead of a complex-step column per parameter (a 6-coupling RealNVP has ~7000)."""
    z, logdet, cache = model.bijector.forward(params["flow"], x)
    lp, prior_cache = model.prior.log_prob(params["prior"], z, check_finite=False)
    gx, gp = ModelLayer(model)._backward(params, (cache, prior_cache), np.zeros_like(z), np.ones(1))
    total = abs(float(lp[0])) + abs(float(logdet[0])) + float(np.sum(np.abs(gx) * np.abs(x)))
    flat = dict(tree.leaves(params))
    for path, g in tree.leaves(gp):
        total += float(np.sum(np.abs(g) * np.maximum(np.abs(flat[path]), 1.0)))
    return total


def check_log_prob(model, params, x, *, dps: int = 30, name: str = "log_prob", c: float = 16) -> Report:
    """``model.log_prob`` at ``x`` (float64) against the exact value (mpmath, unbounded exponent).

    Per sample: where the exact ``log p`` is a float64 (``|log p| < 1.8e308``) the result must be
    finite and within ``c·eps·T`` (``T``: :func:`_log_prob_terms`); where
    it is not, ``−inf``; NaN never. Samples the oracle cannot evaluate either (an ``exp`` whose
    argument's exponent exceeds mpmath's integers) must be ``−inf``. A warning must count every
    ``−inf``.
    """
    x = np.asarray(x, dtype=np.float64)
    layer = ModelLayer(model, name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = np.asarray(to_numpy(model.log_prob(params, x)), dtype=np.float64)
    counted = [w for w in caught if issubclass(w.category, RuntimeWarning) and "log_prob" in str(w.message)]
    big = float(np.finfo(np.float64).max)
    status, exact = [], np.full(x.shape[0], np.nan)
    for i in range(x.shape[0]):
        probe = PreciseProbe(layer, params, x[i:i + 1], np.zeros((1,) + x.shape[1:]), np.ones(1), "forward", dps=dps)
        try:
            lp = probe.forward_only(probe.w0)[1][0]
        except (OverflowError, ValueError, MemoryError):
            status.append("beyond oracle")
            continue
        if abs(lp) < big:
            status.append("float")
            exact[i] = float(lp)
        else:
            status.append("beyond float64")
    status = np.array(status)
    fields = dict(layer=name, direction="forward", dtype="float64", oracle=f"mpmath {dps} digits", step=None)
    report = Report(meta={"layer": name, "points": int(x.shape[0])})
    nan = np.isnan(got)
    report.records.append(verdict(not nan.any(), check="log_prob", quantity="no NaN", n=int(got.size),
                                  note=f"{int(nan.sum())} NaN" if nan.any() else "", **fields))
    fin = status == "float"
    if fin.any():
        idx = np.flatnonzero(fin)
        T = np.array([_log_prob_terms(model, params, x[i:i + 1]) for i in idx])
        eps = float(np.finfo(np.float64).eps)
        rec = compare(got[idx], exact[idx], rtol=c * eps, scale=T, check="log_prob", quantity="representable: value",
                      scale_note="term size T of log p", **fields)
        if rec.worst_index is not None:
            rec.bound = float(eps * T[rec.worst_index[0]])
        report.records.append(rec)
    beyond = ~fin
    wrong = beyond & ~np.isneginf(got)
    report.records.append(verdict(not wrong.any(), check="log_prob", quantity="beyond float64: -inf",
                                  n=int(beyond.sum()),
                                  note=(f"{int(wrong.sum())} sample(s) beyond float64 not -inf" if wrong.any()
                                        else f"{int((status == 'beyond float64').sum())} beyond float64, "
                                        f"{int((status == 'beyond oracle').sum())} beyond the oracle"), **fields))
    n_inf = int(np.isneginf(got).sum())
    said = n_inf == 0 or any(f"{n_inf} of {x.shape[0]}" in str(w.message) for w in counted)
    report.records.append(verdict(said, check="log_prob", quantity="-inf counted in a warning", n=n_inf,
                                  note="" if said else f"{n_inf} -inf but warnings: {[str(w.message) for w in counted]}",
                                  **fields))
    return report


# ---------------------------------------------------------------------- fused kernels
def kernel_cases() -> list[StressCase]:
    cases = []
    for i, scale in enumerate(("exp", "bounded", "sigmoid")):
        for j, shape in enumerate(((3, 4), (2, 2, 2, 3), (1, 5))):
            x, h = transform_points(scale, shape, seed=400 + 10 * i + j)
            kind = ("vector", "image", "n1")[j]
            cases.append(StressCase(f"numba-transform-{scale}-{kind}", "kernels",
                                    TransformLayer(AffineTransform(scale)), {"h": h}, x,
                                    variants={"numba": TransformLayer(AffineTransform(scale, backend="numba"))},
                                    options=_NO_ROUNDTRIP))
        layer, params, x = _saturated_coupling(scale, 420 + i)
        numba_layer, _, _ = _saturated_coupling(scale, 420 + i, backend="numba")
        cases.append(StressCase(f"numba-coupling-{scale}-saturated", "kernels", layer, params, x,
                                variants={"numba": numba_layer}))
    rng = np.random.default_rng(430)
    x, h = _f32(rng.normal(size=(3, 4)) * np.array(MIXED)[:, None]), _f32(rng.normal(size=(3, 4)) * 30)
    cases.append(StressCase("numba-transform-additive", "kernels", TransformLayer(AdditiveTransform()), {"h": h}, x,
                            variants={"numba": TransformLayer(AdditiveTransform(backend="numba"))},
                            options=_NO_ROUNDTRIP))
    for spatial, shape in ((0, (3, 4)), (2, (3, 3, 2, 2))):
        rng = np.random.default_rng(440 + spatial)
        layer = ActNorm(shape[1], spatial=spatial)
        x = _f32(rng.normal(size=shape) * np.array(MIXED).reshape((3,) + (1,) * (len(shape) - 1)))
        params = {"bias": _f32(rng.normal(size=shape[1])), "log_scale": _f32(rng.uniform(-20, 20, shape[1]))}
        cases.append(StressCase(f"numba-actnorm-{'image' if spatial else 'vector'}", "kernels", layer, params, x,
                                variants={"numba": ActNorm(shape[1], spatial=spatial, backend="numba")}))
    return cases


# ---------------------------------------------------------------------- the run
#: (family, function returning its cases): the one list to extend
FAMILIES: list[tuple[str, Callable[[], list[StressCase]]]] = [
    ("linear", linear_cases),
    ("scales", scale_cases),
    ("logit", logit_cases),
    ("batch", batch_cases),
    ("model", model_cases),
    ("kernels", kernel_cases),
]


def families() -> list[str]:
    return [name for name, _ in FAMILIES]


def cases(families: list[str] | None = None) -> list[StressCase]:
    table = dict(FAMILIES)
    chosen = list(table) if not families else list(families)
    unknown = [f for f in chosen if f not in table]
    if unknown:
        raise ValueError(f"unknown stress family {unknown}; known: {list(table)}")
    return [c for fam in chosen for c in table[fam]()]


def check_case(case: StressCase, *, dtypes=("float64", "float32"), dps: int = DPS, seed: int = 0) -> Report:
    options = dict(case.options)
    want = tuple(np.dtype(d).name for d in options.pop("dtypes", dtypes))
    dtypes = tuple(d for d in want if d in {np.dtype(e).name for e in dtypes})
    variants = None
    if case.variants:
        variants = {"reference": case.layer, **case.variants}
    report = check_precise(case.layer, case.params, case.x, z=case.z, dtypes=dtypes, variants=variants,
                           dps=dps, seed=seed, name=case.name, **options)
    for r in report.records:
        r.note = (r.note + "; " if r.note else "") + f"family {case.family}"
    report.meta["family"] = case.family
    return report


def run_stress(families: list[str] | None = None, names: list[str] | None = None, *,
               dtypes=("float64", "float32"), dps: int = DPS, log=None) -> Report:
    """Every stress case of the chosen families (and, with ``model``, :func:`check_log_prob` on
    :func:`far_model`), as one report; ``log`` (a callable) receives one line per case."""
    report = Report(meta={"stress": True, "dtypes": list(dtypes), "dps": dps, "kinds": {"far-log-prob": "FlowModel"}})
    timings = {}
    for case in cases(families):
        if names and case.name not in names:
            continue
        report.meta["kinds"][case.name] = layer_kind(case.layer)
        started = time.perf_counter()
        sub = check_case(case, dtypes=dtypes, dps=dps)
        report.extend(sub)
        timings[case.name] = time.perf_counter() - started
        if log:
            log(f"{case.family:8s} {case.name:32s} {timings[case.name]:6.2f} s  {'ok' if sub.passed else 'FAIL'}")
    if (not families or "model" in families) and (not names or "far-log-prob" in names):
        started = time.perf_counter()
        model, params = far_model()
        sub = check_log_prob(model, params, FAR, name="far-log-prob")
        for r in sub.records:
            r.note = (r.note + "; " if r.note else "") + "family model"
        report.extend(sub)
        timings["far-log-prob"] = time.perf_counter() - started
        if log:
            log(f"{'model':8s} {'far-log-prob':32s} {timings['far-log-prob']:6.2f} s  {'ok' if sub.passed else 'FAIL'}")
    report.meta["seconds"] = timings
    return report


def layer_kind(layer) -> str:
    """The layer family a stress case belongs to, for the per-family table (``AffineCoupling(exp)``)."""
    if isinstance(layer, TransformLayer) and not isinstance(layer, KernelTransformLayer):
        layer = layer.transform
    if isinstance(layer, ModelLayer):
        return "FlowModel"
    scale = getattr(getattr(layer, "transform", layer), "scale", None)
    name = type(layer).__name__
    return f"{name}({scale.name})" if scale is not None and hasattr(scale, "name") else name


def layer_table(report: Report) -> str:
    """Per layer family (``layer_kind``; a kernel variant as ``… [numba]``) and dtype: the worst
    error in units of its conditioning bound ``eps·T``, and how many results exceed the bar."""
    kinds = report.meta.get("kinds", {})
    rows: dict[tuple, list] = {}
    for r in report.records:
        if r.check not in ("precise", "log_prob") or r.bound is None:
            continue
        case, _, variant = r.layer.partition("[")
        kind = kinds.get(case, "?") + (f" [{variant.rstrip(']')}]" if variant and variant != "reference]" else "")
        rows.setdefault((kind, r.dtype), []).append(r)
    lines = [f"{'layer family':34s} {'float64 err/(eps·T)':>20s} {'float32 err/(eps·T)':>20s} {'failed':>6s}"]
    for kind in sorted({k for k, _ in rows}):
        cells, failed = [], 0
        for dtype in ("float64", "float32"):
            recs = rows.get((kind, dtype), [])
            failed += sum(not r.passed for r in recs)
            eps = float(np.finfo(dtype).eps)
            cells.append(f"{max(r.max_rel_err for r in recs) / eps:20.3g}" if recs else f"{'-':>20s}")
        lines.append(f"{kind:34s} {cells[0]} {cells[1]} {failed:6d}")
    return "\n".join(lines)


def family_table(report: Report) -> str:
    """Per family and dtype: the worst error over its conditioning bound (``err / (eps·T)``), the
    case and quantity where it occurs, and how many results exceed the bar."""
    rows: dict[tuple, list] = {}
    for r in report.records:
        if r.check not in ("precise", "log_prob") or r.bound is None:
            continue
        fam = r.note.rsplit("family ", 1)[-1] if "family " in r.note else "-"
        rows.setdefault((fam, r.dtype), []).append(r)
    lines = [f"{'family':8s} {'dtype':8s} {'results':>7s} {'worst err/(eps·T)':>18s} {'failed':>6s}  worst at"]
    for (fam, dtype), recs in sorted(rows.items()):
        eps = float(np.finfo(dtype).eps)
        worst = max(recs, key=lambda r: r.max_rel_err)
        failed = sum(not r.passed for r in recs)
        lines.append(f"{fam:8s} {dtype:8s} {len(recs):7d} {worst.max_rel_err / eps:18.3g} {failed:6d}  "
                     f"{worst.layer} {worst.direction} {worst.quantity}")
    return "\n".join(lines)


def run_stress_cli(args) -> int:
    """``rawflow check --stress`` (arguments parsed by :mod:`rawflow.check.cli`): 0 pass, 1 fail, 2 usage."""
    import sys

    try:
        import mpmath  # noqa: F401  (only whether it is installed)
    except ImportError:
        print("rawflow check --stress needs mpmath: pip install 'rawflow[precise]'", file=sys.stderr)
        return 2
    unknown = sorted(set(args.family or ()) - set(families()))
    if unknown:
        print(f"rawflow check --stress: unknown stress family {unknown}; known: {families()}", file=sys.stderr)
        return 2
    chosen = cases(args.family)
    known = {c.name for c in chosen} | ({"far-log-prob"} if not args.family or "model" in args.family else set())
    if args.case and sorted(set(args.case) - known):
        print(f"rawflow check --stress: unknown case(s) {sorted(set(args.case) - known)}; see --list", file=sys.stderr)
        return 2
    if args.list:
        for c in chosen:
            if not args.case or c.name in args.case:
                print(f"{c.family:8s} {c.name:34s} {getattr(c.layer, 'name', type(c.layer).__name__)}")
        if "far-log-prob" in known and (not args.case or "far-log-prob" in args.case):
            print(f"{'model':8s} {'far-log-prob':34s} FlowModel.log_prob of far_model() at FAR (check_log_prob)")
        return 0
    wall, cpu = time.perf_counter(), time.process_time()
    report = run_stress(args.family, args.case, dtypes=args.dtype,
                        log=(lambda line: print(line, flush=True)) if args.full else None)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    report.meta.update(wall_seconds=wall, cpu_seconds=cpu)
    print(family_table(report))
    print()
    print(layer_table(report))
    print()
    if report.passed:
        print(f"all {len(report)} checks passed in {wall:.1f} s ({cpu:.1f} s CPU); bar {_bar()}")
    else:
        print(report.failure_report())
    if args.json:
        args.json.write_text(report.to_json(indent=1) + "\n")
    return 0 if report.passed else 1


def _bar() -> str:
    from .precise import C_PRECISE

    return f"|error| ≤ {C_PRECISE}·eps·T against mpmath at {DPS} digits"
