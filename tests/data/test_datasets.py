"""2-D toy densities: shapes, determinism, geometry, and the exact eight-Gaussians density."""

import math

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from rawflow.data.datasets import (
    DATASETS,
    EIGHT_GAUSSIANS_RADIUS,
    EIGHT_GAUSSIANS_STD,
    checkerboard,
    circles,
    eight_gaussians,
    eight_gaussians_log_prob,
    make_2d,
    pinwheel,
    spirals,
    two_moons,
)

EPS64 = np.finfo(np.float64).eps


@pytest.mark.parametrize("name", sorted(DATASETS))
@pytest.mark.parametrize("n", [1, 7, 1000])
def test_shape_dtype_determinism(name, n):
    x = make_2d(name, n, np.random.default_rng(0))
    assert x.shape == (n, 2) and x.dtype == np.float64 and np.all(np.isfinite(x))
    assert np.array_equal(x, make_2d(name, n, np.random.default_rng(0)))
    if n > 1:
        assert not np.array_equal(x, make_2d(name, n, np.random.default_rng(1)))


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_order_is_shuffled(name):
    # Slices must be i.i.d. samples (train/test splits by slicing): both halves look alike.
    x = make_2d(name, 20000, np.random.default_rng(2))
    a, b = x[:10000], x[10000:]
    np.testing.assert_allclose(a.mean(axis=0), b.mean(axis=0), atol=0.1)
    np.testing.assert_allclose(a.std(axis=0), b.std(axis=0), rtol=0.05)


def test_eight_gaussians_log_prob_matches_scipy_mixture():
    rng = np.random.default_rng(0)
    x = np.concatenate([eight_gaussians(50, rng), rng.uniform(-5, 5, (50, 2))])
    angles = np.arange(8) * np.pi / 4
    centres = EIGHT_GAUSSIANS_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    comps = np.stack([stats.multivariate_normal(c, EIGHT_GAUSSIANS_STD**2 * np.eye(2)).logpdf(x) for c in centres])
    ref = logsumexp(comps, axis=0) - math.log(8)
    np.testing.assert_allclose(eight_gaussians_log_prob(x), ref, rtol=64 * EPS64, atol=64 * EPS64)


def test_eight_gaussians_density_integrates_to_one_and_matches_samples():
    # Riemann sum on a grid covering ±(r + 8σ): the truncated mass is < 1e-14, the rule's error on
    # a smooth, rapidly decaying integrand with step σ/10 is far below 1e-9.
    lim = EIGHT_GAUSSIANS_RADIUS + 8 * EIGHT_GAUSSIANS_STD
    h = EIGHT_GAUSSIANS_STD / 10
    g = np.arange(-lim, lim + h / 2, h)
    xx, yy = np.meshgrid(g, g)
    p = np.exp(eight_gaussians_log_prob(np.stack([xx.ravel(), yy.ravel()], axis=1)))
    assert abs(p.sum() * h * h - 1) < 1e-9
    x = eight_gaussians(100_000, np.random.default_rng(1))
    # E‖x‖² = r² + 2σ²; the sample mean's standard error is ≈ 0.004 here.
    assert abs((x**2).sum(axis=1).mean() - (EIGHT_GAUSSIANS_RADIUS**2 + 2 * EIGHT_GAUSSIANS_STD**2)) < 0.02
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=0.02)


def test_eight_gaussians_log_prob_rejects_bad_shapes():
    with pytest.raises(ValueError, match="eight_gaussians_log_prob"):
        eight_gaussians_log_prob(np.zeros((3, 3)))


def test_two_moons_geometry():
    x = two_moons(20000, np.random.default_rng(0), noise=0.0)
    d_outer = np.abs(np.hypot(x[:, 0], x[:, 1]) - 1)          # circle of radius 1 about (0, 0)
    d_inner = np.abs(np.hypot(x[:, 0] - 1, x[:, 1] - 0.5) - 1)  # circle of radius 1 about (1, 0.5)
    assert np.all(np.minimum(d_outer, d_inner) <= 4 * EPS64)
    outer = d_outer < d_inner
    assert outer.sum() == 10000
    assert np.all(x[outer, 1] >= 0) and np.all(x[~outer, 1] <= 0.5)


def test_circles_geometry():
    x = circles(1001, np.random.default_rng(0), noise=0.0, factor=0.3)
    r = np.hypot(x[:, 0], x[:, 1])
    assert np.sum(np.isclose(r, 1.0)) == 501 and np.sum(np.isclose(r, 0.3)) == 500


def test_checkerboard_lies_on_dark_squares():
    x = checkerboard(5000, np.random.default_rng(0))
    assert np.all(np.abs(x) <= 4)
    # squares of side 2: the parity of (⌊x₁/2⌋ + ⌊x₂/2⌋) is the same for every point
    parity = (np.floor(x[:, 0] / 2) + np.floor(x[:, 1] / 2)) % 2
    assert np.all(parity == parity[0])
    counts = np.histogram2d(x[:, 0], x[:, 1], bins=4, range=[[-4, 4], [-4, 4]])[0]
    assert np.sum(counts > 0) == 8 and counts[counts > 0].min() > 500


def test_pinwheel_and_spirals_are_centred_and_balanced():
    x = pinwheel(5000, np.random.default_rng(0), arms=5)
    angle = np.arctan2(x[:, 1], x[:, 0])
    hist = np.histogram(angle, bins=5, range=(-np.pi, np.pi))[0]
    assert hist.min() > 500
    s = spirals(4001, np.random.default_rng(0))
    np.testing.assert_allclose(s.mean(axis=0), 0, atol=0.1)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_sizes(bad):
    with pytest.raises(ValueError, match="two_moons"):
        two_moons(bad, np.random.default_rng(0))


def test_bad_name_and_rng():
    with pytest.raises(ValueError, match="make_2d.*unknown.*two_moons"):
        make_2d("moons", 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="circles.*Generator"):
        circles(10, 0)
    with pytest.raises(ValueError, match="circles.*factor"):
        circles(10, np.random.default_rng(0), factor=1.5)


def test_checkerboard_log_prob_is_uniform_on_its_squares():
    from rawflow.data.datasets import TRUE_LOG_PROB, checkerboard_log_prob

    assert TRUE_LOG_PROB["checkerboard"] is checkerboard_log_prob
    x = checkerboard(20_000, np.random.default_rng(0))
    np.testing.assert_array_equal(checkerboard_log_prob(x), -math.log(32))  # every sample on the support
    # cell centres: dark where ⌊x/2⌋ sums to an even number; outside [−4, 4)² nothing
    c = np.arange(-3.0, 4.0, 2.0)
    xx, yy = np.meshgrid(c, c, indexing="ij")
    grid = np.stack([xx.ravel(), yy.ravel()], axis=1)
    dark = np.mod(np.floor(grid / 2).sum(axis=1), 2) == 0
    lp = checkerboard_log_prob(grid)
    assert dark.sum() == 8 and np.all(lp[dark] == -math.log(32)) and np.all(lp[~dark] == -np.inf)
    assert checkerboard_log_prob(np.array([[4.0, 0.5], [-4.5, -3.5]])).tolist() == [-np.inf, -np.inf]
    # the density integrates to one: 8 squares of area 4, 1/32 each (a midpoint rule is exact here)
    h = 0.05
    g = np.arange(-4 + h / 2, 4, h)
    gx, gy = np.meshgrid(g, g)
    p = np.exp(checkerboard_log_prob(np.stack([gx.ravel(), gy.ravel()], axis=1)))
    assert abs(p.sum() * h * h - 1) < 1e-12
    with pytest.raises(ValueError, match="checkerboard_log_prob"):
        checkerboard_log_prob(np.zeros((3, 3)))
