"""Priors: log-densities against scipy.stats, gradients against complex step and central
differences, float32 against float64, sampling (shapes, dtype, temperature) and input errors."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from harness import FD_STEP, rel_err
from rawflow import tree
from rawflow.distributions.priors import DiagonalGaussian, StandardLogistic, StandardNormal, Uniform

EPS64 = np.finfo(np.float64).eps
EPS32 = np.finfo(np.float32).eps
CS_STEP = 1e-30


def scipy_terms(prior, params, z):
    """Per-element log-densities ``(N, *event)`` from scipy.stats (the reference)."""
    if isinstance(prior, StandardNormal):
        return stats.norm.logpdf(z)
    if isinstance(prior, StandardLogistic):
        return stats.logistic.logpdf(z)
    if isinstance(prior, DiagonalGaussian):
        return stats.norm.logpdf(z, loc=params["mean"], scale=np.exp(params["log_std"]))
    if isinstance(prior, Uniform):
        return stats.uniform.logpdf(z, loc=prior.low, scale=prior.high - prior.low)
    raise AssertionError(prior)


@st.composite
def prior_cases(draw, kinds=("normal", "logistic", "diag")):
    kind = draw(st.sampled_from(kinds))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    event = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)))
    n = draw(st.integers(1, 4))
    z = rng.normal(scale=draw(st.floats(0.1, 5.0)), size=(n,) + event)
    prior = {"normal": StandardNormal, "logistic": StandardLogistic, "diag": DiagonalGaussian}[kind](event)
    params = prior.init(rng, z)
    params = tree.map(lambda a: rng.normal(scale=0.7, size=a.shape), params)
    return prior, params, z, rng


def objective(prior, params, z, glp):
    lp, _ = prior.log_prob(params, z)
    return (glp * lp).sum()


def cs_grad(prior, params, z, glp, target):
    """Complex-step gradient of ``Σ glp·log π`` w.r.t. ``z`` (target None) or a parameter path."""
    zc = z.astype(complex)
    pc = tree.map(lambda a: a.astype(complex), params)
    value = zc if target is None else tree.get(pc, target)
    grad = np.zeros(value.shape)
    flat, gflat = value.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        flat[i] += 1j * CS_STEP
        gflat[i] = objective(prior, pc, zc, glp).imag / CS_STEP
        flat[i] -= 1j * CS_STEP
    return grad


def fd_grad(prior, params, z, glp, target):
    z = z.copy()
    params = tree.map(lambda a: a.copy(), params)
    value = z if target is None else tree.get(params, target)
    grad = np.zeros(value.shape)
    flat, gflat = value.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        v0 = flat[i]
        h = FD_STEP * max(1.0, abs(v0))
        flat[i] = v0 + h
        up = objective(prior, params, z, glp)
        flat[i] = v0 - h
        down = objective(prior, params, z, glp)
        flat[i] = v0
        gflat[i] = (up - down) / (2 * h)
    return grad


# ---------------------------------------------------------------------------- log-density vs scipy
@given(prior_cases())
def test_log_prob_matches_scipy_float64(case):
    prior, params, z, _ = case
    lp, _ = prior.log_prob(params, z)
    terms = scipy_terms(prior, params, z)
    ref = terms.reshape(len(z), -1).sum(axis=1)
    # Both sides sum D rounded terms in different orders: |Δ| ≤ (D + 4)·eps·Σ|terms| per sample.
    d = terms[0].size
    bound = (d + 4) * EPS64 * np.abs(terms).reshape(len(z), -1).sum(axis=1)
    assert lp.shape == (len(z),) and lp.dtype == np.float64
    assert np.all(np.abs(lp - ref) <= bound), (lp - ref, bound)


@given(prior_cases())
def test_log_prob_float32_matches_float64(case):
    prior, params, z, _ = case
    z32 = z.astype(np.float32)
    p32 = tree.map(lambda a: a.astype(np.float32), params)
    lp32, _ = prior.log_prob(p32, z32)
    # Reference: the float64 log-density at the *rounded* float32 inputs (isolates arithmetic error).
    p_back = tree.map(lambda a: a.astype(np.float64), p32)
    lp64, _ = prior.log_prob(p_back, z32.astype(np.float64))
    terms = scipy_terms(prior, p_back, z32.astype(np.float64))
    bound = 16 * EPS32 * np.abs(terms).reshape(len(z), -1).sum(axis=1)
    assert lp32.dtype == np.float32
    assert np.all(np.abs(lp32 - lp64) <= bound)


def test_uniform_log_prob_matches_scipy_inside_and_outside():
    prior = Uniform((2,), low=-1.0, high=3.0)
    z = np.array([[0.0, 0.5], [-1.0, 3.0], [3.5, 0.0], [0.0, -1.0 - 1e-12], [2.9, -0.99]])
    lp, _ = prior.log_prob({}, z)
    ref = stats.uniform.logpdf(z, loc=-1, scale=4).sum(axis=1)
    assert np.array_equal(lp, ref), (lp, ref)
    assert lp[0] == -2 * math.log(4.0) and lp[2] == -np.inf
    lp32, _ = prior.log_prob({}, z.astype(np.float32))
    assert lp32.dtype == np.float32


# ---------------------------------------------------------------------------- gradients
@given(prior_cases())
def test_gradients_match_complex_step(case):
    prior, params, z, rng = case
    glp = rng.normal(size=len(z))
    lp, cache = prior.log_prob(params, z)
    gz, gparams = prior.backward(params, cache, glp)
    assert tree.structure(gparams) == tree.structure(params)
    cs = cs_grad(prior, params, z, glp, None)
    if isinstance(prior, StandardLogistic):
        # The oracle's imaginary part is h·(σ(−z) − σ(z)) summed from two O(h) terms, so near
        # z = 0 it carries ~eps·|glp| absolute cancellation error that the tanh form avoids:
        # measure relative to the size of those terms, max(|cs|, |glp|).
        errors = {"z": np.max(np.abs(gz - cs)) / max(np.max(np.abs(cs)), np.max(np.abs(glp)))}
    else:
        errors = {"z": rel_err(gz, cs)}
    for path, _ in tree.leaves(params):
        errors[path] = rel_err(tree.get(gparams, path), cs_grad(prior, params, z, glp, path))
    assert max(errors.values()) <= 1e-13, errors


@given(prior_cases())
def test_gradients_match_finite_differences(case):
    prior, params, z, rng = case
    glp = rng.normal(size=len(z))
    lp, cache = prior.log_prob(params, z)
    gz, gparams = prior.backward(params, cache, glp)
    errors = {"z": rel_err(gz, fd_grad(prior, params, z, glp, None))}
    for path, _ in tree.leaves(params):
        errors[path] = rel_err(tree.get(gparams, path), fd_grad(prior, params, z, glp, path))
    assert max(errors.values()) <= 1e-7, errors


@given(prior_cases())
def test_gradients_float32_match_float64(case):
    prior, params, z, rng = case
    glp = rng.normal(size=len(z))
    z32, p32, g32 = z.astype(np.float32), tree.map(lambda a: a.astype(np.float32), params), glp.astype(np.float32)
    z64, p64, g64 = (z32.astype(np.float64), tree.map(lambda a: a.astype(np.float64), p32),
                     g32.astype(np.float64))
    gz32, gp32 = prior.backward(p32, prior.log_prob(p32, z32)[1], g32)
    gz64, gp64 = prior.backward(p64, prior.log_prob(p64, z64)[1], g64)
    assert gz32.dtype == np.float32
    assert rel_err(gz32, gz64) <= 1e-6
    for path, leaf in tree.leaves(gp64):
        got = tree.get(gp32, path)
        assert got.dtype == np.float32
        # Parameter gradients are batch sums of signed terms: bound by the sum of their magnitudes.
        terms = np.abs(_grad_terms(prior, p64, z64, g64, path))
        assert np.all(np.abs(got - leaf) <= 16 * EPS32 * terms), path


def _grad_terms(prior, params, z, glp, path):
    """Σ over the batch of |per-element gradient terms| for a DiagonalGaussian parameter."""
    u = (z - params["mean"]) * np.exp(-params["log_std"])
    g = glp.reshape((-1,) + (1,) * (z.ndim - 1))
    per = np.abs(g * u * np.exp(-params["log_std"])) if path == "mean" else np.abs(g) * (u * u + 1)
    return prior._reduce(per)


def test_zero_cotangent_gives_zero_gradients():
    rng = np.random.default_rng(0)
    for prior in (StandardNormal((3,)), StandardLogistic((3,)), DiagonalGaussian((3,)), Uniform((3,))):
        z = rng.uniform(size=(4, 3))
        params = prior.init(rng, z)
        gz, gp = prior.backward(params, prior.log_prob(params, z)[1], np.zeros(4))
        assert not np.any(gz) and all(not np.any(a) for _, a in tree.leaves(gp))


def test_uniform_gradient_is_zero_inside():
    prior = Uniform((2,), low=0.0, high=1.0)
    z = np.random.default_rng(1).uniform(size=(5, 2))
    gz, gp = prior.backward({}, prior.log_prob({}, z)[1], np.ones(5))
    assert gp == {} and np.array_equal(gz, np.zeros_like(z))


def test_free_axes_broadcast_parameters_and_gradients():
    """``event_shape`` with ``None``: DiagonalGaussian shares its parameters along the free axes."""
    rng = np.random.default_rng(2)
    prior = DiagonalGaussian((2, None))
    z = rng.normal(size=(3, 2, 4))
    params = prior.init(rng, z)
    assert params["mean"].shape == (2, 1)
    params = tree.map(lambda a: rng.normal(scale=0.5, size=a.shape), params)
    lp, cache = prior.log_prob(params, z)
    ref = stats.norm.logpdf(z, loc=params["mean"], scale=np.exp(params["log_std"])).sum(axis=(1, 2))
    np.testing.assert_allclose(lp, ref, rtol=16 * EPS64)
    glp = rng.normal(size=3)
    gz, gp = prior.backward(params, cache, glp)
    for path, _ in tree.leaves(params):
        assert rel_err(tree.get(gp, path), cs_grad(prior, params, z, glp, path)) <= 1e-13
    # the same prior scores any size on the free axis
    assert prior.log_prob(params, rng.normal(size=(2, 2, 7)))[0].shape == (2,)
    with pytest.raises(ValueError, match="shape="):
        prior.sample(params, rng, 3)
    assert prior.sample(params, rng, 3, shape=(2, 5)).shape == (3, 2, 5)


# ---------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sample_scale_follows_temperature(dtype, temperature):
    n = 200_000
    like = np.zeros(1, dtype=dtype)
    rng = np.random.default_rng(3)
    normal = StandardNormal((2,)).sample({}, rng, n, temperature, like=like)
    logistic = StandardLogistic((2,)).sample({}, rng, n, temperature, like=like)
    assert normal.shape == (n, 2) and normal.dtype == dtype and logistic.dtype == dtype
    # Std of the sample std for n draws ≈ σ/√(2n) ≈ 0.0016σ (normal); 1 % is > 6 of those.
    np.testing.assert_allclose(normal.std(axis=0), temperature, rtol=0.01)
    np.testing.assert_allclose(logistic.std(axis=0), temperature * math.pi / math.sqrt(3), rtol=0.01)

    prior = DiagonalGaussian((2,))
    params = {"mean": np.array([1.0, -2.0], dtype=dtype), "log_std": np.array([0.0, math.log(3.0)], dtype=dtype)}
    z = prior.sample(params, rng, n, temperature)
    assert z.dtype == dtype
    np.testing.assert_allclose(z.mean(axis=0), [1.0, -2.0], atol=0.03 * temperature)
    np.testing.assert_allclose(z.std(axis=0), temperature * np.array([1.0, 3.0]), rtol=0.01)


def test_sample_is_reproducible_and_defaults_to_float64():
    prior = StandardNormal((3,))
    a = prior.sample({}, np.random.default_rng(7), 4)
    b = prior.sample({}, np.random.default_rng(7), 4)
    assert a.dtype == np.float64 and np.array_equal(a, b)
    assert prior.sample({}, np.random.default_rng(7), 0).shape == (0, 3)


def test_uniform_sampling_and_temperature():
    prior = Uniform((2,), low=1.0, high=3.0)
    z = prior.sample({}, np.random.default_rng(0), 1000)
    assert z.min() >= 1.0 and z.max() <= 3.0
    assert np.all(np.isfinite(prior.log_prob({}, z)[0]))
    with pytest.raises(ValueError, match="Uniform.*temperature"):
        prior.sample({}, np.random.default_rng(0), 3, temperature=0.5)


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("prior", [StandardNormal((3,)), StandardLogistic((3,)), DiagonalGaussian((3,)),
                                   Uniform((3,))], ids=lambda p: p.name)
def test_bad_input_raises_value_error_naming_the_prior(prior):
    rng = np.random.default_rng(0)
    z = rng.uniform(size=(4, 3))
    params = prior.init(rng, z)
    bad_inputs = [
        z[:, :2],                               # wrong event size
        z[0],                                   # missing batch axis
        np.ones((4, 3), dtype=np.int64),        # not floating point
        np.where(np.eye(4, 3) > 0, np.nan, z),  # NaN
        [[0.0, 0.0, 0.0]],                      # not an array
    ]
    for bad in bad_inputs:
        with pytest.raises(ValueError, match=prior.name):
            prior.log_prob(params, bad)
    if params:
        with pytest.raises(ValueError, match=f"{prior.name}.*dtype"):
            prior.log_prob(params, z.astype(np.float32))
    _, cache = prior.log_prob(params, z)
    with pytest.raises(ValueError, match=prior.name):
        prior.backward(params, cache, np.ones(3))
    for n, t in [(-1, 1.0), (2.5, 1.0), (2, 0.0), (2, -1.0), (2, float("nan"))]:
        with pytest.raises(ValueError, match=prior.name):
            prior.sample(params, rng, n, t)


def test_bad_construction():
    with pytest.raises(ValueError, match="Uniform"):
        Uniform((2,), low=1.0, high=1.0)
    with pytest.raises(ValueError, match="StandardNormal"):
        StandardNormal((0,))
    with pytest.raises(ValueError, match="DiagonalGaussian"):
        DiagonalGaussian((2,)).log_prob({"mean": np.zeros(3), "log_std": np.zeros(3)}, np.zeros((1, 2)))


def test_check_finite_false_scores_overflowed_latents():
    # A flow model passes check_finite=False: an overflowed latent scores −∞, reported by the loss.
    z = np.array([[np.inf, 0.0], [0.0, 1.0]])
    lp, _ = StandardNormal((2,)).log_prob({}, z, check_finite=False)
    assert lp[0] == -np.inf and np.isfinite(lp[1])
    lp, _ = Uniform((2,)).log_prob({}, z, check_finite=False)
    assert lp[0] == -np.inf and lp[1] == 0
    with pytest.raises(ValueError, match="StandardNormal.*NaN or Inf"):
        StandardNormal((2,)).log_prob({}, z)


@pytest.mark.parametrize("prior", [StandardNormal((3,)), DiagonalGaussian((3,))])
def test_gaussian_log_prob_overflows_only_where_its_value_does(prior):
    """Issue 14, item 5: ``Σz²/2`` is a float up to ``|z| ≈ 1.9e154`` though ``z²`` overflows past
    1.3e154; the priors rescale those samples (and only those: other rows are bit for bit the
    plain sum). Beyond that the log-density is below −1.8e308 and −inf is its float."""
    params = prior.init(np.random.default_rng(0), np.zeros((1, 3)))
    z = np.array([[1.5e154, 0.0, 0.0], [1e154, 1e154, 1.0], [3e154, 0.0, 0.0], [0.5, -1.0, 2.0]])
    with np.errstate(over="ignore"):
        lp, _ = prior.log_prob(params, z)
    c = 1.5 * math.log(2 * math.pi)
    assert lp[0] == pytest.approx(-(0.5 * 1.5e154) * 1.5e154 - c, rel=4e-16)
    assert lp[1] == pytest.approx(-1e308 - 0.5 - c, rel=4e-16)
    assert lp[2] == -np.inf
    assert lp[3] == -0.5 * (0.25 + 1.0 + 4.0) - 3 * (0.5 * math.log(2 * math.pi))
