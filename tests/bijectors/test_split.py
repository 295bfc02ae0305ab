"""Glow's split prior (Split) and learned top prior (GlowTopPrior)."""

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from harness import (
    _fd_scalar_grad,
    check_logdet,
    check_logdet_cancels,
    check_roundtrip,
    check_structure,
    randomize,
    rel_err,
)
from rawflow import tree
from rawflow.nets.conv import conv2d
from rawflow.bijectors.split import GlowTopPrior, Split
from support.image_checks import (
    EXP_ULPS,
    U32,
    assert_within,
    check_gradients_resolvable,
    fd_resolvable,
    float32_and_float64,
    in_float32_range,
    net_error_bounds,
    randomize_cnn,
)
from support.image_checks import check_complex_step

# Examples for the costly checks (finite differences): half the profile's, at least 6.
FEW = max(6, settings.default.max_examples // 2)

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@st.composite
def splits(draw, param_scale=(0.05, 1.0)):
    n, c = draw(st.integers(1, 2)), draw(st.integers(2, 4))
    h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    layer = Split(c)
    x = rng.normal(size=(n, c, h, w))
    return layer, randomize_cnn(layer.init(rng, x), rng, draw(st.floats(*param_scale))), x, rng


def assume_moderate_sigma(layer, params, x):
    """Finite-difference oracles only where σ = exp(ℓ) ∈ [e^−5, e^5]: their truncation error
    ``h²·f‴/6`` grows like ``(3ℓ)³`` through ``exp(3·logs)`` and ``exp(ℓ)`` (random draws reach
    ℓ ≈ 28, σ ≈ 1e12). The complex-step tests cover every draw."""
    _, _, (_, _, sigma) = layer.forward(params, x)
    assume(np.all(np.abs(np.log(sigma)) <= 5))


def cast(params, x, dtype):
    return tree.map(lambda a: a.astype(dtype), params), x.astype(dtype)


def kappa(layer, params, x):
    """Round-off amplification of the round trips: max(σ, 1/σ) (see the round-trip test)."""
    _, _, (_, _, sigma) = layer.forward(params, x)
    return float(max(1.0, np.max(sigma), np.max(1 / sigma)))


def reference_logp(params, x, kept):
    """``log N(x₂; μ, σ)`` written out from the definition, with its own convolution call."""
    p = params["prior"]
    h = conv2d(x[:, :kept], p["w"], p["b"])[0] * np.exp(3 * p["logs"])[None, :, None, None]
    mu, logs = h[:, 0::2], h[:, 1::2]
    u = (x[:, kept:] - mu) / np.exp(logs)
    return np.sum(-0.5 * u * u - logs - HALF_LOG_2PI, axis=(1, 2, 3)), np.abs(u * u / 2) + np.abs(logs) + HALF_LOG_2PI


@given(splits(), st.sampled_from([np.float32, np.float64]))
def test_roundtrip_both_directions(case, dtype):
    layer, params, x, _ = case
    params, x = cast(params, x, dtype)
    # forward then inverse: x₂' = μ + σ·fl((x₂ − μ)/σ) errs by ≤ u(4|x₂| + 3|μ|) ≤ u(7|x₂| + 3σ|ε|);
    # inverse then forward: ε' = fl(fl(μ + σε) − μ)/σ errs by ≤ u(3|ε| + 2|x₂|/σ + 2|μ|/σ).
    # With κ = max(σ, 1/σ) both are ≤ 5·eps·κ·max(‖x‖∞, ‖z‖∞) (u = eps/2, |μ| ≤ |x₂| + σ|ε|).
    check_roundtrip(layer, params, x, bound_ulps=5, kappa=kappa(layer, params, x))


@given(splits(), st.sampled_from([np.float32, np.float64]))
def test_logdets_cancel_exactly_and_kept_half_is_bit_identical(case, dtype):
    layer, params, x = case[:3]
    params, x = cast(params, x, dtype)
    check_logdet_cancels(layer, params, x, exact=True)
    z, logdet, _ = layer.forward(params, x)
    assert z.dtype == dtype and logdet.dtype == dtype
    kept, _ = layer.parts(z)
    assert np.array_equal(kept, x[:, : layer.kept])
    x_back, _, _ = layer.inverse(params, z)
    assert np.array_equal(x_back[:, : layer.kept], kept)


def split_float32_bounds(layer, p64, u64, g64, gl64, gx64, direction):
    """First-order bounds on |float32 − float64| for ``(out, logdet, gx, gparams)`` of a Split.

    ``δμ, δℓ`` from the ZeroConv2d's bound (test_cnn magnitudes), ``u = eps32/2``::

        δσ/σ = δℓ + 4u                                              (exp within 4 ulp)
        forward  ε = (x₂ − μ)/σ:   δε  = (u|x₂ − μ| + δμ)/σ + |ε|(δσ/σ + u)
        inverse  x₂ = μ + σε:      δx₂ = δμ + |σε|(δσ/σ + u) + u|x₂|
        log-det  ∓Σℓ:              δλ  = Σ δℓ + D·u·Σ|ℓ|
        VJPs: gx₂ = g_ε/σ (g_ε = gx₂·σ) within |·|(δσ/σ + u); gℓ = ∓g_ε·ε ∓ gλ within
        |g_ε|·δε + u|g_ε·ε| + u|gℓ| (forward) or δg_ε·|ε| + u|g_ε·ε| + u|gℓ| (inverse), then the
        ZeroConv2d's VJP bound with that cotangent error; the kept half adds one rounding ``u|gx₁|``.
    """
    u = U32
    k = layer.kept
    u1, u2, g1, g2 = u64[:, :k], u64[:, k:], g64[:, :k], g64[:, k:]
    h, _ = layer.prior.apply(p64["prior"], u1)
    dh = net_error_bounds(layer.prior, p64["prior"], u1)
    mu, logs, dmu, dlogs = h[:, 0::2], h[:, 1::2], dh[:, 0::2], dh[:, 1::2]
    sigma = np.exp(logs)
    dsig = dlogs + EXP_ULPS * u
    gl = gl64.reshape(-1, 1, 1, 1)
    dld = dlogs.sum(axis=(1, 2, 3)) + logs[0].size * u * np.abs(logs).sum(axis=(1, 2, 3))
    if direction == "forward":
        eps = (u2 - mu) / sigma
        dout2 = (u * np.abs(u2 - mu) + dmu) / sigma + np.abs(eps) * (dsig + u)
        gx2 = g2 / sigma
        dg2 = np.abs(gx2) * (dsig + u)
        gmu, dgmu = -gx2, dg2
        glogs = -(g2 * eps) - gl
        dglogs = np.abs(g2) * dout2 + u * np.abs(g2 * eps) + u * np.abs(glogs)
    else:
        eps = u2
        x2 = mu + sigma * eps
        dout2 = dmu + np.abs(sigma * eps) * (dsig + u) + u * np.abs(x2)
        geps = g2 * sigma
        dg2 = np.abs(geps) * (dsig + u)
        gmu, dgmu = g2, np.zeros_like(g2)
        glogs = geps * eps + gl
        dglogs = dg2 * np.abs(eps) + u * np.abs(geps * eps) + u * np.abs(glogs)
    n, c2, hh, ww = gmu.shape
    gh = np.stack([gmu, glogs], axis=2).reshape(n, 2 * c2, hh, ww)
    dgh = np.stack([dgmu, dglogs], axis=2).reshape(n, 2 * c2, hh, ww)
    _, dg_in, dgp = net_error_bounds(layer.prior, p64["prior"], u1, gh, dgh)
    dout = np.concatenate([np.zeros_like(u1), dout2], axis=1)
    dgx = np.concatenate([dg_in + u * np.abs(gx64[:, :k]), dg2], axis=1)
    return dout, dld, dgx, {"prior": dgp}


@given(splits(), st.sampled_from(["forward", "inverse"]))
def test_float32_matches_float64_within_rounding_bounds(case, direction):
    layer, params, x, rng = case
    if direction == "inverse":
        x = layer.forward(params, x)[0]
    run = layer.forward if direction == "forward" else layer.inverse
    vjp = layer.backward if direction == "forward" else layer.inverse_backward
    r32, r64, (p64, x64, g64, gl64, _) = float32_and_float64(run, vjp, params, x, rng)
    assume(in_float32_range(run(p64, x64)[2][2], r64[0], r64[2], *[a for _, a in tree.leaves(r64[3])]))
    dout, dld, dgx, dgp = split_float32_bounds(layer, p64, x64, g64, gl64, r64[2], direction)
    assert_within(r32[0], r64[0], dout, "output")
    assert_within(r32[1], r64[1], dld, "log-det")
    assert_within(r32[2], r64[2], dgx, "input gradient")
    for path, leaf in tree.leaves(r64[3]):
        assert_within(tree.get(r32[3], path), leaf, tree.get(dgp, path), path)


@given(splits())
def test_logdet_matches_finite_difference_jacobian(case):
    layer, params, x, _ = case
    assume_moderate_sigma(layer, params, x)
    check_logdet(layer, params, x)


@given(splits())
@settings(max_examples=FEW)
def test_gradients_match_finite_differences(case):
    layer, params, x, rng = case
    assume_moderate_sigma(layer, params, x)
    check_gradients_resolvable(layer, params, x, rng, "forward")
    z, _, _ = layer.forward(params, x)
    check_gradients_resolvable(layer, params, z, rng, "inverse")


def complex_step_both_directions(layer, params, x, rng):
    for direction in ("forward", "inverse"):
        run = layer.forward if direction == "forward" else layer.inverse
        vjp = layer.backward if direction == "forward" else layer.inverse_backward
        u = x if direction == "forward" else layer.forward(params, x)[0]
        _, _, cache = run(params, u)
        check_complex_step(lambda p, v: run(p, v)[:2], lambda g, gl: vjp(params, cache, g, gl), params, u, rng)


@given(splits())
def test_gradients_match_complex_step(case):
    complex_step_both_directions(*case)


@given(splits(param_scale=(1.0, 2.0)))
@settings(max_examples=FEW)
def test_gradients_match_complex_step_at_extreme_scales(case):
    """σ spanning many decades: out of central differences' reach, not of the complex step's."""
    layer, params, x, _ = case
    _, _, (_, _, sigma) = layer.forward(params, x)
    assume(np.all((sigma > 1e-100) & (sigma < 1e100)))  # float64 range, not the maths, ends here
    complex_step_both_directions(*case)


@given(splits())
def test_structural_properties(case):
    check_structure(*case[:3], case[3])


@given(splits())
def test_factor_logp_is_glow_split_prior(case):
    layer, params, x, _ = case
    kept, logp, eps, _ = layer.factor(params, x)
    ref, terms = reference_logp(params, x, layer.kept)
    # Two evaluations of the same sum of D terms: each within γ_D·Σ|terms| (plus the ε round-off).
    bound = 8 * terms[0].size * np.finfo(float).eps * terms.sum(axis=(1, 2, 3))
    assert np.all(np.abs(logp - ref) <= bound)
    assert np.array_equal(kept, x[:, : layer.kept]) and eps.shape == (x.shape[0], layer.factored) + x.shape[2:]
    x_back, logp_back, eps_back, _ = layer.unfactor(params, kept, eps)
    assert eps_back is eps
    assert np.all(np.abs(logp_back - logp) <= bound)
    np.testing.assert_allclose(x_back, x, rtol=0, atol=64 * np.finfo(float).eps * kappa(layer, params, x))


def test_fresh_split_scores_under_standard_normal():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 3, 4))
    layer = Split(5)
    assert (layer.kept, layer.factored) == (2, 3)
    params = layer.init(rng, x)
    kept, logp, eps, _ = layer.factor(params, x)
    assert np.array_equal(eps, x[:, 2:])
    x2 = x[:, 2:]
    np.testing.assert_allclose(logp, np.sum(-0.5 * x2 * x2 - HALF_LOG_2PI, axis=(1, 2, 3)), rtol=1e-14)


def fd_factor_check(layer, params, x, rng, rtol=1e-7):
    kept, logp, eps, cache = layer.factor(params, x)
    gk, gl, ge = rng.normal(size=kept.shape), rng.normal(size=logp.shape), rng.normal(size=eps.shape)
    gx, gp = layer.factor_backward(params, cache, gk, gl, ge)
    x, params = x.copy(), tree.map(lambda a: a.copy(), params)

    def objective():
        k, lp, e, _ = layer.factor(params, x)
        return float(np.sum(gk * k) + np.sum(gl * lp) + np.sum(ge * e))

    scale = float(np.sum(np.abs(gk * kept)) + np.sum(np.abs(gl * logp)) + np.sum(np.abs(ge * eps)))
    assume(fd_resolvable([gx] + [a for _, a in tree.leaves(gp)], scale))

    errors = {"input": rel_err(gx, _fd_scalar_grad(objective, x))}
    for path, leaf in tree.leaves(params):
        errors[path] = rel_err(tree.get(gp, path), _fd_scalar_grad(objective, leaf))
    assert all(e <= rtol for e in errors.values()), errors
    return errors


def fd_unfactor_check(layer, params, x, rng, rtol=1e-7):
    kept, _, eps, _ = layer.factor(params, x)
    kept, eps = kept.copy(), eps.copy()
    xr, logp, _, cache = layer.unfactor(params, kept, eps)
    gx, gl = rng.normal(size=xr.shape), rng.normal(size=logp.shape)
    gk, ge, gp = layer.unfactor_backward(params, cache, gx, gl)
    params = tree.map(lambda a: a.copy(), params)

    def objective():
        xx, lp, _, _ = layer.unfactor(params, kept, eps)
        return float(np.sum(gx * xx) + np.sum(gl * lp))

    scale = float(np.sum(np.abs(gx * xr)) + np.sum(np.abs(gl * logp)))
    assume(fd_resolvable([gk, ge] + [a for _, a in tree.leaves(gp)], scale))

    errors = {
        "kept": rel_err(gk, _fd_scalar_grad(objective, kept)),
        "eps": rel_err(ge, _fd_scalar_grad(objective, eps)),
    }
    for path, leaf in tree.leaves(params):
        errors[path] = rel_err(tree.get(gp, path), _fd_scalar_grad(objective, leaf))
    assert all(e <= rtol for e in errors.values()), errors
    return errors


@given(splits())
@settings(max_examples=FEW)
def test_factor_and_unfactor_vjps_match_finite_differences(case):
    layer, params, x, rng = case
    assume_moderate_sigma(layer, params, x)
    fd_factor_check(layer, params, x, rng)
    fd_unfactor_check(layer, params, x, rng)


def test_factor_backward_default_geps_is_zero():
    rng = np.random.default_rng(1)
    layer = Split(4)
    x = rng.normal(size=(2, 4, 3, 3))
    params = randomize_cnn(layer.init(rng, x), rng, 0.8)
    kept, logp, eps, cache = layer.factor(params, x)
    gk, gl = rng.normal(size=kept.shape), rng.normal(size=logp.shape)
    a = layer.factor_backward(params, cache, gk, gl)
    b = layer.factor_backward(params, cache, gk, gl, np.zeros_like(eps))
    assert np.array_equal(a[0], b[0])


def test_sampling_with_temperature():
    rng_p = np.random.default_rng(2)
    layer = Split(4)
    x = rng_p.normal(size=(2, 4, 4, 4))
    params = randomize_cnn(layer.init(rng_p, x), rng_p, 0.8)
    kept = x[:, :2]
    x1, lp1, e1, _ = layer.unfactor(params, kept, rng=np.random.default_rng(7))
    xh, lph, eh, _ = layer.unfactor(params, kept, rng=np.random.default_rng(7), temperature=0.5)
    assert np.array_equal(eh, 0.5 * e1)  # same draw, scaled by T (exact: a power of two)
    assert np.array_equal(x1[:, :2], kept) and np.array_equal(xh[:, :2], kept)
    # the sample's logp is the density under the untempered conditional, as factor() reports it
    _, lp_f, e_f, _ = layer.factor(params, xh)
    np.testing.assert_allclose(lp_f, lph, rtol=1e-13)
    e32 = layer.sample_eps(kept.astype(np.float32), np.random.default_rng(7))
    assert e32.dtype == np.float32 and e32.shape == (2, 2, 4, 4)


def test_split_bad_inputs_raise():
    with pytest.raises(ValueError, match="Split: needs an integer number of channels ≥ 2"):
        Split(1)
    rng = np.random.default_rng(3)
    layer = Split(4)
    x = rng.normal(size=(1, 4, 2, 2))
    params = layer.init(rng, x)
    with pytest.raises(ValueError, match="Split: input has size 3 on axis 1"):
        layer.forward(params, x[:, :3])
    with pytest.raises(ValueError, match="Split: kept half has size 3 on axis 1"):
        layer.unfactor(params, x[:, :3], x[:, :2])
    with pytest.raises(ValueError, match="Split: eps has size 1 on axis 1"):
        layer.unfactor(params, x[:, :2], x[:, :1])
    with pytest.raises(ValueError, match="Split: eps shape"):
        layer.unfactor(params, x[:, :2], rng.normal(size=(1, 2, 2, 3)))
    with pytest.raises(ValueError, match="Split: unfactor needs eps or an rng"):
        layer.unfactor(params, x[:, :2])
    with pytest.raises(ValueError, match="Split: temperature"):
        layer.unfactor(params, x[:, :2], rng=rng, temperature=0.0)
    with pytest.raises(ValueError, match="Split: parameter 'prior/b' has dtype float32"):
        layer.forward(tree.map(lambda a: a.astype(np.float32), params), x)


# ---------------------------------------------------------------------------------- top prior
@st.composite
def tops(draw):
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    prior = GlowTopPrior(c)
    z = rng.normal(size=(n, c, h, w))
    params = randomize(prior.init(rng, z), rng, draw(st.floats(0.05, 0.5)))
    return prior, params, z, rng


@given(tops())
def test_top_prior_log_prob_matches_definition(case):
    prior, params, z, _ = case
    lp, _ = prior.log_prob(params, z)
    h = params["b"] * np.exp(3 * params["logs"])
    c = prior.channels
    mu, logs = h[:c][None, :, None, None], h[c:][None, :, None, None]
    u = (z - mu) / np.exp(logs)
    terms = -0.5 * u * u - logs - HALF_LOG_2PI
    bound = 8 * terms[0].size * np.finfo(float).eps * np.abs(terms).sum(axis=(1, 2, 3))
    assert np.all(np.abs(lp - terms.sum(axis=(1, 2, 3))) <= bound)


@given(tops())
@settings(max_examples=FEW)
def test_top_prior_gradients_match_finite_differences_and_complex_step(case):
    prior, params, z, rng = case
    lp, cache = prior.log_prob(params, z)
    glp = rng.normal(size=lp.shape)
    gz, gp = prior.backward(params, cache, glp)
    assert tree.structure(gp) == tree.structure(params)
    z, params = z.copy(), tree.map(lambda a: a.copy(), params)
    objective = lambda: float(np.sum(glp * prior.log_prob(params, z)[0]))  # noqa: E731
    assert rel_err(gz, _fd_scalar_grad(objective, z)) <= 1e-7
    for path, leaf in tree.leaves(params):
        assert rel_err(tree.get(gp, path), _fd_scalar_grad(objective, leaf)) <= 1e-7

    def run(p, u):
        return np.zeros_like(u), prior._log_prob(p, u)[0]  # the unchecked path accepts complex params

    check_complex_step(run, lambda g, gl: prior.backward(params, cache, gl), params, z, rng)


def test_fresh_top_prior_is_standard_normal_and_samples_with_temperature():
    rng = np.random.default_rng(4)
    prior = GlowTopPrior(3)
    z = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    params = prior.init(rng, z)
    assert tree.structure(params) == {"b": (6,), "logs": (6,)} and params["b"].dtype == np.float32
    lp, _ = prior.log_prob(params, z)
    np.testing.assert_allclose(lp, np.sum(-0.5 * z.astype(float) ** 2 - HALF_LOG_2PI, axis=(1, 2, 3)), rtol=1e-6)
    p64 = randomize(prior.init(rng, z.astype(float)), rng, 0.3)
    s1 = prior.sample(p64, np.random.default_rng(9), 2, shape=(3, 2, 2))
    s2 = prior.sample(p64, np.random.default_rng(9), 2, temperature=0.5, shape=(3, 2, 2))
    h = p64["b"] * np.exp(3 * p64["logs"])
    mu = h[:3][None, :, None, None]
    np.testing.assert_allclose(s2 - mu, 0.5 * (s1 - mu), rtol=1e-13, atol=1e-15)


def test_top_prior_bad_inputs_raise():
    with pytest.raises(ValueError, match="GlowTopPrior: channels"):
        GlowTopPrior(0)
    prior = GlowTopPrior(2)
    rng = np.random.default_rng(5)
    z = rng.normal(size=(1, 2, 2, 2))
    params = prior.init(rng, z)
    with pytest.raises(ValueError, match="GlowTopPrior: input has size 3 on axis 1"):
        prior.log_prob(params, rng.normal(size=(1, 3, 2, 2)))
    with pytest.raises(ValueError, match="GlowTopPrior: parameter 'logs' is missing"):
        prior.log_prob({"b": params["b"]}, z)
