"""Hypothesis strategies for testing rawflow layers and other implementations against them.

Hypothesis is a test-only dependency: this module imports it, ``import rawflow`` never does.

* shapes: :func:`batch_sizes`, :func:`vector_shapes`, :func:`image_shapes`;
* layers with parameters: :func:`couplings`, :func:`chains`, :func:`layer_cases` (one of the
  registered families; :func:`register` adds one) — each draws a ``Case(name, layer, params, x)``
  with every parameter leaf randomised and a float64 input;
* hard inputs: :func:`lu_factors` (near-singular LU factors of a 1×1-conv weight, as arrays) and
  :func:`saturated_scales` / :func:`saturated_couplings` (raw conditioner outputs in the saturated
  range of each scale map);
* stress points (issue 14; each draws a :class:`~rawflow.check.stress.StressCase` for
  :func:`rawflow.check.stress.check_case`, which runs :func:`rawflow.check.check_precise` on it
  and on its ``variants``): :func:`ill_conditioned_lu`, :func:`ill_conditioned_dense`
  (``cond(W)`` 1e6 … 1e12, exact in float32), :func:`stress_transforms` (``|h|`` up to 30 for any
  scale map, mixed-magnitude rows), :func:`logit_edges` (inputs near 0 and 1, latents up to
  ``|z| = 40``), :func:`mixed_magnitudes`, and :func:`stress_cases` (the built-in stress points).

Example::

    from hypothesis import given
    from rawflow import testing
    from rawflow.check import check_bijector
    from rawflow.check.stress import check_case

    @given(testing.layer_cases())
    def test_every_layer(case):
        assert check_bijector(case.layer, case.params, case.x)

    @given(testing.ill_conditioned_lu())            # needs mpmath (the [precise] extra)
    def test_near_singular(case):
        assert check_case(case)                     # vs 60 digits, each result against eps·T
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
from hypothesis import strategies as st

from .bijectors.chain import Chain
from .check import stress as _stress
from .check.registry import SATURATED_H, Case, randomize
from .bijectors.coupling import AdditiveCoupling, AffineCoupling, AffineTransform
from .bijectors.linear import DenseLinear, LULinear
from .bijectors.logit import Logit
from .bijectors.partition import Partition

SCALE_MAPS = ("exp", "bounded", "sigmoid")
ACTIVATIONS = ("relu", "tanh", "leaky_relu")

__all__ = [
    "ACTIVATIONS",
    "LUFactors",
    "SCALE_MAPS",
    "batch_sizes",
    "chains",
    "couplings",
    "ill_conditioned_dense",
    "ill_conditioned_lu",
    "image_shapes",
    "layer_cases",
    "logit_edges",
    "lu_factors",
    "mixed_magnitudes",
    "register",
    "saturated_couplings",
    "saturated_scales",
    "seeds",
    "stress_cases",
    "stress_transforms",
    "vector_shapes",
]


# ---------------------------------------------------------------------- shapes
def seeds() -> st.SearchStrategy[int]:
    return st.integers(0, 2**31 - 1)


def batch_sizes(min_n: int = 1, max_n: int = 4) -> st.SearchStrategy[int]:
    return st.integers(min_n, max_n)


def vector_shapes(min_n: int = 1, max_n: int = 4, min_d: int = 2, max_d: int = 6) -> st.SearchStrategy[tuple]:
    """``(N, D)``."""
    return st.tuples(batch_sizes(min_n, max_n), st.integers(min_d, max_d))


def image_shapes(
    min_n: int = 1, max_n: int = 2, channels=(1, 4), max_side: int = 6, even: bool = True
) -> st.SearchStrategy[tuple]:
    """``(N, C, H, W)``; ``even`` keeps H and W even (squeeze and checkerboards need it)."""
    side = st.integers(1, max_side // 2).map(lambda k: 2 * k) if even else st.integers(1, max_side)
    return st.tuples(batch_sizes(min_n, max_n), st.integers(*channels), side, side)


# ---------------------------------------------------------------------- layers
@st.composite
def partitions(draw, features: int) -> Partition:
    """A half split (either way round) or a random scattered mask."""
    if draw(st.booleans()):
        return Partition.half(features, flip=draw(st.booleans()))
    rng = np.random.default_rng(draw(seeds()))
    copied = draw(st.integers(1, features - 1))
    return Partition(rng.permutation(np.arange(features) < copied))


@st.composite
def conditional_couplings(draw, max_d: int = 6, max_k: int = 3, param_scale=(0.05, 0.8)) -> Case:
    """A conditional affine or additive coupling (``c`` appended to its MLP's input) with random
    parameters, as :class:`~rawflow.bijectors.conditional.ContextAsInput` on ``[x | c]`` rows: every
    check of :func:`~rawflow.check.check_bijector` then covers the context's cotangent too."""
    from .bijectors.conditional import ContextAsInput
    from .bijectors.conditional_coupling import ConditionalAdditiveCoupling, ConditionalAffineCoupling

    n, d = draw(vector_shapes(max_d=max_d))
    k = draw(st.integers(1, max_k))
    kwargs = dict(partition=draw(partitions(d)), hidden=tuple(draw(st.lists(st.integers(1, 6), max_size=2))),
                  activation=draw(st.sampled_from(ACTIVATIONS)))
    if draw(st.booleans()):
        scale = draw(st.sampled_from(SCALE_MAPS))
        layer, name = ConditionalAffineCoupling(d, k, scale=scale, **kwargs), f"cond-affine-{scale}"
    else:
        layer, name = ConditionalAdditiveCoupling(d, k, **kwargs), "cond-additive"
    rng = np.random.default_rng(draw(seeds()))
    x, c = rng.normal(size=(n, d)), rng.normal(size=(n, k))
    params = randomize(layer.init(rng, x, context=c), rng, draw(st.floats(*param_scale)))
    return Case(name, ContextAsInput(layer), params, np.concatenate([x, c], axis=1))


@st.composite
def couplings(draw, kind: str | None = None, scale: str | None = None, max_d: int = 6,
              param_scale=(0.05, 0.8)) -> Case:
    """An additive or affine coupling (any scale map, activation, partition) with random parameters."""
    kind = kind or draw(st.sampled_from(["additive", "affine"]))
    n, d = draw(vector_shapes(max_d=max_d))
    hidden = tuple(draw(st.lists(st.integers(1, 6), min_size=0, max_size=2)))
    activation = draw(st.sampled_from(ACTIVATIONS))
    partition = draw(partitions(d))
    kwargs = dict(partition=partition, hidden=hidden, activation=activation)
    if kind == "affine":
        scale = scale or draw(st.sampled_from(SCALE_MAPS))
        layer = AffineCoupling(d, scale=scale, **kwargs)
        name = f"affine-{scale}-{activation}"
    else:
        layer = AdditiveCoupling(d, **kwargs)
        name = f"additive-{activation}"
    rng = np.random.default_rng(draw(seeds()))
    x = rng.normal(size=(n, d))
    params = randomize(layer.init(rng, x), rng, draw(st.floats(*param_scale)))
    return Case(name, layer, params, x)


@st.composite
def chains(draw, max_depth: int = 3, max_d: int = 5, reconstruct: bool | None = None) -> Case:
    """A chain of alternating couplings (cached or reconstructing backward) with random parameters."""
    n, d = draw(vector_shapes(max_n=3, max_d=max_d))
    depth = draw(st.integers(1, max_depth))
    recon = draw(st.booleans()) if reconstruct is None else reconstruct
    layers = []
    for k in range(depth):
        activation = draw(st.sampled_from(ACTIVATIONS))
        if draw(st.booleans()):
            layers.append(AffineCoupling(d, scale=draw(st.sampled_from(SCALE_MAPS)), flip=bool(k % 2),
                                         hidden=(4,), activation=activation))
        else:
            layers.append(AdditiveCoupling(d, flip=bool(k % 2), hidden=(4,), activation=activation))
    layer = Chain(layers, reconstruct=recon)
    rng = np.random.default_rng(draw(seeds()))
    x = rng.normal(size=(n, d))
    params = randomize(layer.init(rng, x), rng, draw(st.floats(0.05, 0.5)))
    return Case(f"chain-{depth}-{'reconstruct' if recon else 'cached'}", layer, params, x)


# ---------------------------------------------------------------------- hard inputs
class LUFactors(NamedTuple):
    """``W = P · L · (U + diag(sign · exp(log_abs_s)))`` (Glow's LU-parametrised 1×1 conv weight)."""

    perm: np.ndarray  # (C,) permutation: P = I[perm]
    lower: np.ndarray  # (C, C) unit lower triangular
    upper: np.ndarray  # (C, C) strictly upper triangular
    log_abs_s: np.ndarray  # (C,)
    sign: np.ndarray  # (C,) ±1

    def weight(self) -> np.ndarray:
        c = self.lower.shape[0]
        p = np.eye(c)[self.perm]
        return p @ self.lower @ (self.upper + np.diag(self.sign * np.exp(self.log_abs_s)))


@st.composite
def lu_factors(draw, channels: int | None = None, near_singular: bool = True, min_log_s: float = -20.0,
               offdiag: float = 1.0) -> LUFactors:
    """LU factors as arrays; with ``near_singular`` at least one ``log|s|`` is very negative.

    The very negative entries are drawn from ``[min_log_s, −8]`` (``|s|`` down to ``e^-20 ≈ 2e-9``),
    the others from ``[−1, 1]``; off-diagonal entries of ``L`` and ``U`` from ``[−offdiag, offdiag]``.
    ``cond(W)`` is then huge, which is what round-trip bounds scaled by a condition estimate must
    survive and what an inverse built by triangular solves must get right.
    """
    c = channels or draw(st.integers(2, 6))
    rng = np.random.default_rng(draw(seeds()))
    lower = np.tril(rng.uniform(-offdiag, offdiag, (c, c)), -1) + np.eye(c)
    upper = np.triu(rng.uniform(-offdiag, offdiag, (c, c)), 1)
    log_abs_s = rng.uniform(-1.0, 1.0, c)
    if near_singular:
        k = draw(st.integers(1, max(1, c // 2)))
        idx = rng.choice(c, size=k, replace=False)
        log_abs_s[idx] = rng.uniform(min_log_s, -8.0, k)
    sign = np.where(rng.random(c) < 0.5, -1.0, 1.0)
    perm = rng.permutation(c)
    return LUFactors(perm, lower, upper, log_abs_s, sign)


def saturated_scales(scale: str, shape: tuple) -> st.SearchStrategy[np.ndarray]:
    """Raw conditioner outputs ``h`` (the scale half) in the saturated range of ``scale``.

    * ``exp``: ``|h| ∈ [4, 8]`` either sign — scales from ``e^-8`` to ``e^8``;
    * ``sigmoid``: ``u = h + 2 ∈ ±[6, 12]`` — ``s = sigmoid(u)`` tiny, or within ``e^-6`` of 1;
    * ``bounded`` (``c = 2``): ``|h| ∈ [6, 12]`` — ``tanh(h/c)`` within ``1e-2 … 1e-5`` of ±1.
    """
    if scale not in SATURATED_H:
        raise ValueError(f"unknown scale map {scale!r}; use one of {sorted(SATURATED_H)}")
    lo, hi = SATURATED_H[scale]
    shift = -2.0 if scale == "sigmoid" else 0.0

    @st.composite
    def draw_h(draw):
        rng = np.random.default_rng(draw(seeds()))
        mag = rng.uniform(lo, hi, size=shape)
        sign = np.where(rng.random(size=shape) < 0.5, -1.0, 1.0)
        return sign * mag + shift

    return draw_h()


@st.composite
def saturated_couplings(draw, scale: str | None = None, max_d: int = 5) -> Case:
    """An affine coupling whose scale outputs lie in the saturated range for every sample.

    The scale rows of the conditioner's last layer are shrunk (×0.02) and their biases drawn from
    :func:`saturated_scales`, so ``h_s`` stays within ~0.1 of the saturated range for any input.
    """
    scale = scale or draw(st.sampled_from(SCALE_MAPS))
    n, d = draw(vector_shapes(max_n=3, max_d=max_d))
    layer = AffineCoupling(d, scale=scale, hidden=(4,), activation=draw(st.sampled_from(ACTIVATIONS)))
    rng = np.random.default_rng(draw(seeds()))
    x = rng.normal(size=(n, d))
    params = randomize(layer.init(rng, x), rng, 0.5)
    c = layer.partition.size_b
    h = draw(saturated_scales(scale, (c,)))
    last = params["net"]["1"]
    # shrink the scale rows so that h_s stays within ~0.1 of its saturated bias for any input
    last["w"] = np.concatenate([last["w"][:c] * 0.02, last["w"][c:]])
    last["b"] = np.concatenate([h, last["b"][c:]])
    return Case(f"saturated-{scale}", layer, params, x)


# ---------------------------------------------------------------------- stress points (issue 14)
def _f32(a):
    return np.asarray(a, dtype=np.float64).astype(np.float32).astype(np.float64)


def _log_uniform(draw, lo: float, hi: float) -> float:
    return float(10.0 ** draw(st.floats(np.log10(lo), np.log10(hi))))


@st.composite
def ill_conditioned_lu(draw, cond=(1e6, 1e12), channels=None, spatial=None) -> "_stress.StressCase":
    """An :class:`LULinear` with ``cond₂(W)`` log-uniform in ``cond``, a forward point ``x`` and a
    generic inverse point ``z`` (so ``x = W⁻¹z`` is huge); float32-representable. ``options`` carry
    the round trips' ``κ`` (the project's ``8·eps·cond(W)`` bar for the 1×1 conv round trip)."""
    spatial = draw(st.sampled_from([0, 2])) if spatial is None else spatial
    c = channels or draw(st.integers(2, 5 if spatial == 0 else 3))
    seed = draw(seeds())
    rng = np.random.default_rng(seed)
    layer = LULinear(c, spatial=spatial, seed=seed)
    shape = (draw(batch_sizes(1, 3)), c) + ((2, 2) if spatial else ())
    params, x = _stress.lu_params(layer, _log_uniform(draw, *cond), rng, shape=shape)
    return _stress._linear(f"lu-{c}{'-image' if spatial else ''}", layer, params, x, rng)


@st.composite
def ill_conditioned_dense(draw, cond=(1e6, 1e12), channels=None) -> "_stress.StressCase":
    """A :class:`DenseLinear` whose weight has ``cond₂`` log-uniform in ``cond`` and entries exact in
    float32 (:func:`rawflow.check.stress.dense_weight`), with points as :func:`ill_conditioned_lu`."""
    c = channels or draw(st.integers(2, 5))
    seed = draw(seeds())
    rng = np.random.default_rng(seed)
    layer = DenseLinear(c, seed=seed)
    x = _f32(rng.normal(size=(draw(batch_sizes(1, 3)), c)))
    params = {"weight": _stress.dense_weight(c, _log_uniform(draw, *cond), rng)}
    return _stress._linear(f"dense-{c}", layer, params, x, rng)


@st.composite
def mixed_magnitudes(draw, shape: tuple, lo: float = 1e-6, hi: float = 8.0) -> np.ndarray:
    """A float32-representable batch of ``shape`` whose rows are scaled log-uniformly in ``[lo, hi]``
    (the first row by ``lo``, the last by ``hi``, so every batch mixes both ends)."""
    rng = np.random.default_rng(draw(seeds()))
    n = shape[0]
    scales = 10.0 ** rng.uniform(np.log10(lo), np.log10(hi), n)
    scales[0], scales[-1] = lo, (hi if n > 1 else lo)
    return _f32(rng.normal(size=shape) * scales.reshape((n,) + (1,) * (len(shape) - 1)))


@st.composite
def stress_transforms(draw, scale: str | None = None, max_h: float = 30.0, image: bool | None = None):
    """The affine transform as a layer of its raw conditioner output (:class:`TransformLayer`) with
    ``|h_s|`` up to ``max_h`` either sign (``u = h + 2`` for ``sigmoid``), ordinary shifts, and
    mixed-magnitude rows; ``variants`` holds the fused Numba kernel of the same map, which
    :func:`rawflow.check.stress.check_case` judges against the reference's oracle."""
    scale = scale or draw(st.sampled_from(SCALE_MAPS))
    image = draw(st.booleans()) if image is None else image
    n = draw(batch_sizes(1, 3))
    shape = (n, draw(st.integers(1, 3)), 2, draw(st.integers(1, 3))) if image else (n, draw(st.integers(1, 5)))
    rng = np.random.default_rng(draw(seeds()))
    mags = rng.uniform(0.0, max_h, shape)
    mags.flat[0] = max_h
    hs = np.where(rng.random(shape) < 0.5, -1.0, 1.0) * mags - (2.0 if scale == "sigmoid" else 0.0)
    h = _f32(np.concatenate([hs, rng.normal(size=shape)], axis=1))
    x = draw(mixed_magnitudes(shape))
    return _stress.StressCase(f"transform-{scale}", "scales", _stress.TransformLayer(AffineTransform(scale)),
                              {"h": h}, x, variants={"numba": _stress.TransformLayer(AffineTransform(scale, backend="numba"))},
                              options=dict(_stress._NO_ROUNDTRIP))


@st.composite
def logit_edges(draw, alpha=None, max_z: float = 40.0):
    """A :class:`Logit` with inputs near 0 and 1 (down to ``1e-30`` and up to ``1 − 2⁻²⁴``) and an
    inverse point with latents up to ``|z| = max_z``; round trips only for ``α > 0`` (see
    :func:`rawflow.check.stress.logit_cases`)."""
    alpha = draw(st.sampled_from([0.0, 0.05])) if alpha is None else alpha
    d = draw(st.integers(1, 4))
    n = draw(batch_sizes(1, 3))
    rng = np.random.default_rng(draw(seeds()))
    eps = 10.0 ** rng.uniform(-30, -1, (n, d))
    x = _f32(np.where(rng.random((n, d)) < 0.5, eps, 1 - np.maximum(eps, 2.0**-24)))
    z = _f32(np.where(rng.random((n, d)) < 0.5, -1.0, 1.0) * rng.uniform(0, max_z, (n, d)))
    return _stress.StressCase(f"logit-alpha{alpha:g}", "logit", Logit((d,), alpha=alpha), {}, x, z,
                              options={} if alpha else {"roundtrip": False})


def stress_cases(families: list[str] | None = None) -> st.SearchStrategy:
    """One of the built-in stress points (:func:`rawflow.check.stress.cases`)."""
    return st.sampled_from(_stress.cases(families))


# ---------------------------------------------------------------------- registry of strategies
_STRATEGIES: dict[str, Callable[[], st.SearchStrategy[Case]]] = {
    "coupling": couplings,
    "chain": chains,
    "saturated": saturated_couplings,
    "conditional": conditional_couplings,
}


def register(family: str, strategy: Callable[[], st.SearchStrategy[Case]]) -> None:
    """Add (or replace) a family: ``strategy()`` must return a strategy of :class:`Case`."""
    _STRATEGIES[family] = strategy


def layer_cases(families: list[str] | None = None) -> st.SearchStrategy[Case]:
    """A case from one of the registered families (all by default)."""
    chosen = list(_STRATEGIES) if not families else list(families)
    unknown = [f for f in chosen if f not in _STRATEGIES]
    if unknown:
        raise ValueError(f"unknown family {unknown}; registered: {sorted(_STRATEGIES)}")
    return st.one_of([_STRATEGIES[f]() for f in chosen])
