import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness import (
    check_gradients,
    check_logdet,
    check_logdet_cancels,
    check_roundtrip,
    check_structure,
    randomize,
    rel_err,
)
from rawflow import AdditiveCoupling, AffineCoupling, Partition, tree

SCALES = ["exp", "bounded", "sigmoid"]


@st.composite
def couplings(draw, kind=None):
    kind = kind or draw(st.sampled_from(["additive", "affine"]))
    n = draw(st.integers(1, 4))
    d = draw(st.integers(2, 6))
    hidden = tuple(draw(st.lists(st.integers(1, 6), min_size=0, max_size=2)))
    activation = draw(st.sampled_from(["relu", "tanh", "leaky_relu"]))
    seed = draw(st.integers(0, 2**31))
    param_scale = draw(st.floats(0.05, 0.8))
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):
        mask = rng.permutation(np.arange(d) < draw(st.integers(1, d - 1)))
        partition = Partition(mask)
    else:
        partition = Partition.half(d, flip=draw(st.booleans()))
    kwargs = dict(partition=partition, hidden=hidden, activation=activation)
    if kind == "affine":
        layer = AffineCoupling(d, scale=draw(st.sampled_from(SCALES)), **kwargs)
    else:
        layer = AdditiveCoupling(d, **kwargs)
    x = rng.normal(size=(n, d))
    params = randomize(layer.init(rng, x), rng, param_scale)
    return layer, params, x, rng


def kappa(layer, params, x):
    """Round-off amplification of the inverse: 1 / min s over the batch (1 for additive)."""
    _, _, (_, tcache) = layer.forward(params, x)
    if tcache is None:
        return 1.0
    return max(1.0, float(np.max(1 / tcache[1])))


@given(couplings())
def test_roundtrip_both_directions_float64(case):
    layer, params, x, _ = case
    # y = x·s + t, x' = (y − t)/s: |x' − x| ≤ eps(5|x| + |y|/s) to first order, i.e. ≤ 6 in these units.
    check_roundtrip(layer, params, x, bound_ulps=6, kappa=kappa(layer, params, x))


@given(couplings())
def test_roundtrip_both_directions_float32(case):
    layer, params, x, _ = case
    p32 = tree.map(lambda a: a.astype(np.float32), params)
    x32 = x.astype(np.float32)
    check_roundtrip(layer, p32, x32, bound_ulps=6, kappa=kappa(layer, p32, x32))


@given(couplings(), st.sampled_from([np.float32, np.float64]))
def test_logdets_cancel_exactly_and_copied_half_is_bit_identical(case, dtype):
    layer, params, x, _ = case
    params = tree.map(lambda a: a.astype(dtype), params)
    x = x.astype(dtype)
    check_logdet_cancels(layer, params, x, exact=True)
    z, _, _ = layer.forward(params, x)
    xa, _ = layer.partition.split(x)
    za, _ = layer.partition.split(z)
    assert np.array_equal(xa, za)
    x_back, _, _ = layer.inverse(params, z)
    assert np.array_equal(layer.partition.split(x_back)[0], xa)


@given(couplings())
def test_logdet_matches_finite_difference_jacobian(case):
    layer, params, x, _ = case
    check_logdet(layer, params, x)


@given(couplings())
def test_gradients_forward_match_finite_differences(case):
    layer, params, x, rng = case
    check_gradients(layer, params, x, rng, "forward")


@given(couplings())
def test_gradients_inverse_match_finite_differences(case):
    layer, params, x, rng = case
    z, _, _ = layer.forward(params, x)
    check_gradients(layer, params, z, rng, "inverse")


@given(couplings())
def test_structural_properties(case):
    layer, params, x, rng = case
    check_structure(layer, params, x, rng)


@pytest.mark.parametrize("scale", ["exp", "bounded"])
def test_fresh_affine_coupling_is_identity(scale):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 6))
    layer = AffineCoupling(6, scale=scale)
    z, logdet, _ = layer.forward(layer.init(rng, x), x)
    assert np.array_equal(z, x) and not np.any(logdet)


def test_fresh_sigmoid_coupling_is_glow_contraction():
    # sigmoid(0 + 2) ≠ 1: Glow's map starts as a fixed contraction by sigmoid(2), not the identity.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 6))
    layer = AffineCoupling(6, scale="sigmoid")
    z, logdet, _ = layer.forward(layer.init(rng, x), x)
    eps = np.finfo(float).eps
    np.testing.assert_allclose(z[:, 3:], x[:, 3:] / (1 + np.exp(-2.0)), rtol=4 * eps)
    np.testing.assert_allclose(logdet, -3 * np.log1p(np.exp(-2.0)), rtol=4 * eps)


def test_additive_coupling_is_volume_preserving():
    rng = np.random.default_rng(1)
    layer = AdditiveCoupling(5, hidden=(7,))
    x = rng.normal(size=(4, 5))
    params = randomize(layer.init(rng, x), rng, 0.5)
    _, logdet, _ = layer.forward(params, x)
    assert not np.any(logdet)


@given(couplings(), st.sampled_from(["forward", "inverse"]))
def test_float32_gradients_track_float64(case, direction):
    """float32 VJPs against float64 VJPs at the same (float32-representable) point.

    Each gradient entry passes through a handful of rounding steps (two short matmuls, the activation,
    exp, the scale map's derivative), each contributing ≤ a few eps32 relative to the largest term of
    its leaf; 64·eps32 (7.6e-6) bounds that with margin (the worst seen over 600 random cases: 17·eps32).
    """
    layer, params, x, rng = case
    p32 = tree.map(lambda a: a.astype(np.float32), params)
    p64 = tree.map(lambda a: a.astype(np.float64), p32)
    x32 = x.astype(np.float32)
    if direction == "inverse":
        x32 = layer.forward(p32, x32)[0]
    run = {"forward": layer.forward, "inverse": layer.inverse}[direction]
    vjp = {"forward": layer.backward, "inverse": layer.inverse_backward}[direction]
    out, logdet, cache64 = run(p64, x32.astype(np.float64))
    g = rng.normal(size=out.shape).astype(np.float32)
    gl = rng.normal(size=logdet.shape).astype(np.float32)
    gx64, gp64 = vjp(p64, cache64, g.astype(np.float64), gl.astype(np.float64))
    _, _, cache32 = run(p32, x32)
    gx32, gp32 = vjp(p32, cache32, g, gl)
    assert gx32.dtype == np.float32
    bound = 64 * np.finfo(np.float32).eps
    assert rel_err(gx32, gx64) <= bound
    for path, leaf in tree.leaves(gp64):
        assert tree.get(gp32, path).dtype == np.float32
        assert rel_err(tree.get(gp32, path), leaf) <= bound, path


def test_affine_transform_takes_overflowing_scales_in_log_space():
    """Issue 14, item 5: where ``s = exp(h)`` overflows or underflows, ``x_b·s`` is
    ``sign(x_b)·exp(log|x_b| + h)``: finite wherever the exact product is (and ``0·s = 0``, not
    NaN); elsewhere the result is the plain ``x_b·s + t`` bit for bit."""
    from rawflow import AffineTransform

    t = AffineTransform("exp")
    xb = np.array([[0.0, 1e-200, 2.0, -1e-300, 1e300]])
    hs = np.array([[800.0, 800.0, 3.0, 720.0, -800.0]])
    h = np.concatenate([hs, np.full_like(hs, 0.5)], axis=1)
    with np.errstate(over="ignore", under="ignore"):
        y, ld, _ = t.forward(xb, h)
        x_back, ld_inv, _ = t.inverse(y, h)
    want = [0.5, 1e-200 * np.exp(400.0) * np.exp(400.0) + 0.5, 2.0 * np.exp(3.0) + 0.5,
            -np.exp(np.log(1e-300) + 720.0) + 0.5, np.exp(np.log(1e300) - 800.0) + 0.5]
    np.testing.assert_allclose(y[0], want, rtol=4e-13)
    assert y[0, 2] == 2.0 * np.exp(3.0) + 0.5  # the regular path is untouched
    np.testing.assert_allclose(x_back[0, 1:4], xb[0, 1:4], rtol=4e-13)
    assert x_back[0, 0] == 0.0 and ld[0] + ld_inv[0] == 0
    # a batch without any overflow: bit for bit the plain formula
    rng = np.random.default_rng(0)
    xb, h = rng.normal(size=(3, 4)), rng.normal(size=(3, 8))
    assert np.array_equal(t.forward(xb, h)[0], xb * np.exp(h[:, :4]) + h[:, 4:])
