"""openai/glow's class-conditional priors: GlowTop (``--learntop`` + ``--ycond`` top prior as a
bijector), ConditionalSplit (the split prior with a class term) and MultiScalePrior (a multi-scale
flow's flat latent with GlowTop on its top part).

The maths against openai's definition written out here, the exactness checks through
``ContextAsInput`` (context cotangent against the complex step), and the reductions to the
unconditional layers when the class terms are zero.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import check_gradients, rel_err
from rawflow import tree
from rawflow.bijectors.conditional import ContextAsInput
from rawflow.bijectors.conditional_prior import ConditionalSplit, GlowTop, MultiScalePrior
from rawflow.bijectors.split import GlowTopPrior, Split
from rawflow.check import check_bijector
from rawflow.distributions.priors import StandardNormal
from rawflow.nets.conv import conv2d
from support.image_checks import check_complex_step, randomize_cnn

FEW = max(6, settings.default.max_examples // 2)
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def rows(x, c):
    return np.concatenate([x.reshape(x.shape[0], -1), c], axis=1)


def one_hot(y, k):
    return np.eye(k)[y]


@st.composite
def tops(draw, param_scale=(0.05, 0.6)):
    n, ch = draw(st.integers(1, 3), label="n"), draw(st.integers(1, 3))
    h, w, k = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    learn_top = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    layer = GlowTop(ch, context=k, learn_top=learn_top)
    z, c = rng.normal(size=(n, ch, h, w)), rng.normal(size=(n, k))
    params = randomize_cnn(layer.init(rng, z, context=c), rng, draw(st.floats(*param_scale)))
    return layer, params, z, c, rng


def openai_top_logp(params, z, onehot, learn_top=True):
    """openai/glow ``prior()``: h = conv2d_zeros(0) + linear_zeros(y); log N(z; h[:C], exp(h[C:]))."""
    ch = z.shape[1]
    h = np.zeros((z.shape[0], 2 * ch))
    if learn_top:
        h = h + params["top"]["b"] * np.exp(3 * params["top"]["logs"])
    if "context" in params:
        p = params["context"]
        h = h + (onehot @ p["w"].T + p["b"]) * np.exp(3 * p["logs"])
    mean, logs = h[:, :ch, None, None], h[:, ch:, None, None]
    u = (z - mean) / np.exp(logs)
    return np.sum(-0.5 * u * u - logs - HALF_LOG_2PI, axis=(1, 2, 3))


@settings(max_examples=FEW)
@given(tops())
def test_glow_top_passes_check_bijector(case):
    layer, params, z, c, _ = case
    report = check_bijector(ContextAsInput(layer, z.shape[1:]), params, rows(z, c), second_order=False,
                            fd_columns=16)
    assert report, report.failure_report()


@given(tops(param_scale=(0.05, 0.3)))
def test_glow_top_gradients_match_finite_differences(case):
    layer, params, z, c, rng = case
    j = ContextAsInput(layer, z.shape[1:])
    check_gradients(j, params, rows(z, c), rng, "forward")
    u = j.forward(params, rows(z, c))[0]
    check_gradients(j, params, u, rng, "inverse")


@given(tops(), st.integers(0, 2**31))
def test_glow_top_is_openai_ycond_prior(case, seed):
    layer, params, z, _, _ = case
    k = layer.context_shape[0]
    onehot = one_hot(np.random.default_rng(seed).integers(0, k, z.shape[0]), k)
    u, logdet, _ = layer.forward(params, z, context=onehot)
    lp = StandardNormal(z.shape[1:]).log_prob({}, u)[0] + logdet
    ref = openai_top_logp(params, z, onehot, layer.learn_top)
    terms = np.sum(np.abs(u * u) / 2 + HALF_LOG_2PI, axis=(1, 2, 3)) + np.abs(logdet)
    assert np.all(np.abs(lp - ref) <= 32 * np.finfo(float).eps * terms)


def test_unconditional_glow_top_is_glow_top_prior_and_ycond_starts_as_standard_normal():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 3, 2, 2))
    top = GlowTop(3)
    params = tree.map(lambda a: rng.normal(scale=0.3, size=a.shape), top.init(rng, z))
    u, logdet, _ = top.forward(params, z)
    lp = StandardNormal((3, 2, 2)).log_prob({}, u)[0] + logdet
    ref = GlowTopPrior(3).log_prob(params["top"], z)[0]
    assert rel_err(lp, ref) <= 1e-15
    cond = GlowTop(3, context=5)
    c = one_hot(rng.integers(0, 5, 4), 5)
    fresh = cond.init(rng, z, context=c)
    assert all(not np.any(a) for _, a in tree.leaves(fresh))
    u0, ld0, _ = cond.forward(fresh, z, context=c)
    assert np.array_equal(u0, z) and not np.any(ld0)


def test_glow_top_saturated_scales_round_trip_within_their_conditioning():
    """Log-stds of ±20 (σ from 2e-9 to 5e8): the round trips stay within a few ulp of the
    conditioning-weighted size, the log-dets cancel exactly, every gradient meets the complex step."""
    rng = np.random.default_rng(1)
    layer = GlowTop(2, context=2, learn_top=True)
    z, c = rng.normal(size=(3, 2, 2, 2)), one_hot(np.array([0, 1, 1]), 2)
    params = layer.init(rng, z, context=c)
    params["context"]["b"] = np.array([0.1, -0.2, 20.0, -20.0])  # ℓ ≈ ±20 for the two channels
    params["context"]["w"] = rng.normal(scale=0.1, size=(4, 2))
    report = check_bijector(ContextAsInput(layer, (2, 2, 2)), params, rows(z, c), second_order=False)
    assert report, report.failure_report()


@pytest.mark.parametrize("bad, message", [
    (dict(context=0), "GlowTop: context must be None or a positive integer"),
    (dict(learn_top=False), "nothing to learn"),
])
def test_glow_top_constructor_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        GlowTop(3, **bad)


# ---------------------------------------------------------------------------- conditional split
@st.composite
def cond_splits(draw):
    n, ch, k = draw(st.integers(1, 2)), draw(st.integers(2, 4)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    layer = ConditionalSplit(ch, k)
    x, c = rng.normal(size=(n, ch, h, w)), rng.normal(size=(n, k))
    params = randomize_cnn(layer.init(rng, x, context=c), rng, draw(st.floats(0.05, 0.6)))
    return layer, params, x, c, rng


@settings(max_examples=FEW)
@given(cond_splits())
def test_conditional_split_passes_check_bijector(case):
    layer, params, x, c, _ = case
    report = check_bijector(ContextAsInput(layer, x.shape[1:]), params, rows(x, c), second_order=False,
                            fd_columns=16)
    assert report, report.failure_report()


@given(cond_splits())
def test_conditional_split_is_split_plus_the_class_term(case):
    layer, params, x, c, rng = case
    kept = layer.kept
    p, q = params["prior"], params["context"]
    h = conv2d(x[:, :kept], p["w"], p["b"])[0] * np.exp(3 * p["logs"])[None, :, None, None]
    h = h + ((c @ q["w"].T + q["b"]) * np.exp(3 * q["logs"]))[:, :, None, None]
    mu, logs = h[:, 0::2], h[:, 1::2]
    eps = (x[:, kept:] - mu) / np.exp(logs)
    z, logdet, _ = layer.forward(params, x, context=c)
    assert rel_err(z[:, kept:], eps) <= 1e-13 and np.array_equal(z[:, :kept], x[:, :kept])
    assert rel_err(logdet, -logs.sum(axis=(1, 2, 3))) <= 1e-13
    # with the class term at zero it is Split, bit for bit
    zero = dict(params, context=tree.map(np.zeros_like, params["context"]))
    plain = Split(layer.channels)
    assert np.array_equal(layer.forward(zero, x, context=c)[0], plain.forward({"prior": params["prior"]}, x)[0])


def test_conditional_split_complex_step_of_every_quantity():
    rng = np.random.default_rng(2)
    layer = ConditionalSplit(3, 2)
    x, c = rng.normal(size=(2, 3, 2, 3)), rng.normal(size=(2, 2))
    params = randomize_cnn(layer.init(rng, x, context=c), rng, 0.4)
    j = ContextAsInput(layer, (3, 2, 3))
    w = rows(x, c)
    for direction in ("forward", "inverse"):
        run = j.forward if direction == "forward" else j.inverse
        vjp = j.backward if direction == "forward" else j.inverse_backward
        u = w if direction == "forward" else j.forward(params, w)[0]
        _, _, cache = run(params, u)
        check_complex_step(lambda p, a: run(p, a)[:2], lambda g, gl: vjp(params, cache, g, gl), params, u, rng)


# ---------------------------------------------------------------------------- MultiScalePrior
def multiscale_prior(k=3, learn_top=True):
    return MultiScalePrior(20, (2, 2, 2), GlowTop(2, context=k, learn_top=learn_top))


def test_multiscale_prior_is_standard_normal_on_eps_and_the_top_prior_on_the_top():
    rng = np.random.default_rng(3)
    prior = multiscale_prior()
    z, c = rng.normal(size=(4, 20)), one_hot(rng.integers(0, 3, 4), 3)
    params = tree.map(lambda a: rng.normal(scale=0.3, size=a.shape), prior.init(rng, z, context=c))
    lp, _ = prior.log_prob(params, z, context=c)
    ref = (np.sum(-0.5 * z[:, :12] ** 2 - HALF_LOG_2PI, axis=1)
           + openai_top_logp(params, z[:, 12:].reshape(4, 2, 2, 2), c))
    assert rel_err(lp, ref) <= 1e-14


def test_multiscale_prior_gradients_meet_the_complex_step():
    rng = np.random.default_rng(4)
    prior = multiscale_prior()
    z, c = rng.normal(size=(3, 20)), rng.normal(size=(3, 3))
    params = tree.map(lambda a: rng.normal(scale=0.3, size=a.shape), prior.init(rng, z, context=c))
    glp = rng.normal(size=3)
    _, cache = prior.log_prob(params, z, context=c)
    gz, gp, gc = prior.backward(params, cache, glp)
    h = 1e-20
    targets = [("z", z, gz), ("c", c, gc)] + [(p, tree.get(params, p), tree.get(gp, p)) for p, _ in tree.leaves(params)]
    for name, value, grad in targets:
        v = rng.normal(size=value.shape)
        zc, cc = z.astype(complex), c.astype(complex)
        pc = tree.map(lambda a: a.astype(complex), params)
        if name == "z":
            zc = zc + 1j * h * v
        elif name == "c":
            cc = cc + 1j * h * v
        else:
            pc = tree.set(pc, name, tree.get(pc, name) + 1j * h * v)
        cs = float(np.sum(glp * prior.log_prob(pc, zc, context=cc)[0]).imag / h)
        assert abs(cs - np.sum(grad * v)) <= 1e-13 * max(1.0, np.sum(np.abs(grad * v))), name


def test_multiscale_prior_sampling_maps_the_top_draws_through_the_class_means():
    prior = multiscale_prior(k=2, learn_top=False)
    rng = np.random.default_rng(5)
    params = prior.init(rng, np.zeros((1, 20)), context=np.zeros((1, 2)))
    params["context"]["b"] = np.array([0.0, 0.0, 0.0, 0.0])
    params["context"]["w"] = np.array([[1.0, -1.0], [2.0, 0.0], [0.0, 0.0], [0.0, 0.0]])  # μ_c of class 0 / 1
    c = one_hot(np.array([0, 1]), 2)
    draw = prior.sample(params, np.random.default_rng(6), 2, temperature=0.5, context=c)
    eps = 0.5 * np.random.default_rng(6).standard_normal((2, 20))
    mean = np.array([[1.0, 2.0], [-1.0, 0.0]])[:, :, None, None]
    expected = np.concatenate([eps[:, :12], (eps[:, 12:].reshape(2, 2, 2, 2) + mean).reshape(2, 8)], axis=1)
    assert rel_err(draw, expected) <= 1e-15
    with pytest.raises(ValueError, match="MultiScalePrior: context has 1 rows but the input has 2"):
        prior.sample(params, rng, 2, context=c[:1])
    with pytest.raises(ValueError, match="MultiScalePrior: is conditional and needs context="):
        prior.sample(params, rng, 2)
