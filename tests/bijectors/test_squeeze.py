"""Squeeze (2×2 space-to-depth): ordering, exactness, log-det, gradients, errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness import check_gradients, check_logdet, check_logdet_cancels, check_roundtrip, rel_err
from rawflow import Chain
from rawflow.bijectors.squeeze import Squeeze, squeeze2d, unsqueeze2d


@st.composite
def cases(draw):
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 4))
    h, w = 2 * draw(st.integers(1, 2)), 2 * draw(st.integers(1, 2))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return Squeeze(c), rng.normal(size=(n, c, h, w)).astype(dtype), rng


def loop_squeeze(x):
    """The documented ordering, written out: z[n, 4c + 2di + dj, a, b] = x[n, c, 2a + di, 2b + dj]."""
    n, c, h, w = x.shape
    z = np.empty((n, 4 * c, h // 2, w // 2), dtype=x.dtype)
    for ch in range(c):
        for di in range(2):
            for dj in range(2):
                z[:, 4 * ch + 2 * di + dj] = x[:, ch, di::2, dj::2]
    return z


def glow_tf_squeeze2d_nhwc(x):
    """openai/glow ``tfops.squeeze2d`` (NHWC), transcribed to NumPy."""
    n, h, w, c = x.shape
    x = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(n, h // 2, w // 2, 4 * c)


def torch_port_squeeze2d(x):
    """The common PyTorch port: ``view(N, C, H/2, 2, W/2, 2).permute(0, 1, 3, 5, 2, 4)``."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, h // 2, w // 2)


@given(cases())
def test_ordering_matches_glow_and_pytorch_port(case):
    layer, x, _ = case
    z, logdet, _ = layer.forward({}, x)
    assert z.shape == (x.shape[0], 4 * x.shape[1], x.shape[2] // 2, x.shape[3] // 2) and z.dtype == x.dtype
    assert np.array_equal(z, loop_squeeze(x))
    assert np.array_equal(z, torch_port_squeeze2d(x))
    glow = glow_tf_squeeze2d_nhwc(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    assert np.array_equal(z, glow)
    assert logdet.dtype == x.dtype and not np.any(logdet)


@given(cases())
def test_squeeze_unsqueeze_are_exact_inverses(case):
    layer, x, _ = case
    assert np.array_equal(unsqueeze2d(squeeze2d(x)), x)
    z = squeeze2d(x)
    assert np.array_equal(squeeze2d(unsqueeze2d(z)), z)
    assert check_roundtrip(layer, {}, x, bound_ulps=0) == 0  # pure copies: bit-exact both ways
    assert check_logdet_cancels(layer, {}, x) == 0
    x_back, logdet_inv, _ = layer.inverse({}, z)
    assert np.array_equal(x_back, x) and not np.any(logdet_inv)


@given(cases())
def test_logdet_matches_finite_difference_jacobian(case):
    layer, x, _ = case
    check_logdet(layer, {}, x.astype(np.float64))


@given(cases())
def test_gradients_match_finite_differences(case):
    layer, x, rng = case
    x = x.astype(np.float64)
    check_gradients(layer, {}, x, rng, "forward")
    check_gradients(layer, {}, squeeze2d(x), rng, "inverse")


@given(cases())
def test_vjps_are_the_opposite_permutation_and_linear(case):
    layer, x, rng = case
    z, logdet, cache = layer.forward({}, x)
    gz = rng.normal(size=z.shape).astype(x.dtype)
    gl = rng.normal(size=logdet.shape).astype(x.dtype)
    gx, gp = layer.backward({}, cache, gz, gl)
    assert gp == {} and np.array_equal(gx, unsqueeze2d(gz))
    # ⟨gz, squeeze(x)⟩ = ⟨unsqueeze(gz), x⟩ exactly in value (same products, permuted sum order).
    assert rel_err(np.sum(gx * x, dtype=np.float64), np.sum(gz * z, dtype=np.float64)) <= 1e-6
    gz2, gp2 = layer.inverse_backward({}, cache, gx, gl)
    assert gp2 == {} and np.array_equal(gz2, gz)
    zero_x, _ = layer.backward({}, cache, np.zeros_like(gz), np.zeros_like(gl))
    assert not np.any(zero_x)


def test_event_shapes():
    layer = Squeeze(3)
    assert layer.event_shape == (3, None, None)
    assert layer.out_event_shape == (12, None, None)


@pytest.mark.parametrize("shape", [(1, 2, 3, 4), (1, 2, 4, 5), (2, 2, 1, 2)])
def test_odd_height_or_width_raises_naming_the_layer(shape):
    x = np.zeros(shape)
    with pytest.raises(ValueError, match=r"Squeeze: .*even"):
        Squeeze(2).forward({}, x)
    # also when the layer runs inside a chain, which calls the unchecked `_forward`
    chain = Chain([Squeeze(2), Squeeze(8)])
    with pytest.raises(ValueError, match=r"Squeeze: .*even"):
        chain.forward({"0": {}, "1": {}}, x)


def test_bad_inputs_raise():
    layer = Squeeze(2)
    with pytest.raises(ValueError, match="Squeeze: input has size 3 on axis 1"):
        layer.forward({}, np.zeros((1, 3, 2, 2)))
    with pytest.raises(ValueError, match="Squeeze: latent input has size 2 on axis 1"):
        layer.inverse({}, np.zeros((1, 2, 2, 2)))
    with pytest.raises(ValueError, match="Squeeze: input must have 4 dimensions"):
        layer.forward({}, np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="Squeeze: input contains NaN"):
        layer.forward({}, np.full((1, 2, 2, 2), np.nan))
    with pytest.raises(ValueError, match="Squeeze: channels"):
        Squeeze(0)


def test_chain_of_squeezes_reaches_one_pixel():
    x = np.arange(2 * 1 * 4 * 4, dtype=np.float64).reshape(2, 1, 4, 4)
    chain = Chain([Squeeze(1), Squeeze(4)])
    z, logdet, _ = chain.forward({"0": {}, "1": {}}, x)
    assert z.shape == (2, 16, 1, 1) and not np.any(logdet)
    assert np.array_equal(chain.inverse({"0": {}, "1": {}}, z)[0], x)


# ---------------------------------------------------------------- Flatten's output shape (issue 14, item 4)
def test_flatten_output_shape_and_chains_that_hold_one():
    from rawflow import ActNorm, Flatten, MultiScale, Split, nice_images

    assert Flatten((2, 3, 4)).output_shape((2, 3, 4)) == (24,)
    with pytest.raises(ValueError, match=r"Flatten: built for events of shape \(2, 3, 4\), got \(2, 4, 3\)"):
        Flatten((2, 3, 4)).output_shape((2, 4, 3))
    assert nice_images((1, 4, 4), 2, hidden=(4,)).output_shape((1, 4, 4)) == (16,)
    # a multi-scale flow whose last level ends in a Flatten
    levels = [Chain([Squeeze(1), Split(4)]), Chain([ActNorm(2, spatial=2), Flatten((2, 2, 2))])]
    flow = MultiScale(levels, keep=[2], image_shape=(1, 4, 4))
    assert flow.level_out == [(4, 2, 2), (8,)]
    assert flow.output_shape((1, 4, 4)) == (16,)
    x = np.random.default_rng(0).normal(size=(2, 1, 4, 4))
    params = flow.init(np.random.default_rng(1), x)
    assert flow.forward(params, x)[0].shape == (2, 16)
