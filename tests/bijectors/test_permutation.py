import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness import check_gradients, check_logdet, check_logdet_cancels, check_roundtrip, check_structure
from rawflow.bijectors.permutation import Permutation, Reverse


@st.composite
def shapes(draw):
    """``(N, D)`` vectors (D ≤ 6) or ``(N, C, H, W)`` images with tiny C, H, W ≤ 3."""
    spatial = draw(st.sampled_from([0, 2]))
    c = draw(st.integers(1, 6 if spatial == 0 else 3))
    hw = tuple(draw(st.integers(1, 3)) for _ in range(spatial))
    return (draw(st.integers(1, 4)), c) + hw, spatial


@st.composite
def cases(draw, dtype=np.float64):
    shape, spatial = draw(shapes())
    c = shape[1]
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["seed", "explicit", "reverse"]))
    if kind == "seed":
        layer = Permutation(c, seed=seed, spatial=spatial)
    elif kind == "explicit":
        layer = Permutation(c, perm=rng.permutation(c), spatial=spatial)
    else:
        layer = Reverse(c, spatial=spatial)
    x = rng.normal(size=shape).astype(dtype)
    return layer, layer.init(rng, x), x, rng


@given(cases(), st.sampled_from([np.float32, np.float64]))
def test_roundtrip_is_bit_exact_both_directions(case, dtype):
    layer, params, x, _ = case
    x = x.astype(dtype)
    z, _, _ = layer.forward(params, x)
    assert z.dtype == dtype
    assert np.array_equal(layer.inverse(params, z)[0], x)
    x2, _, _ = layer.inverse(params, x)
    assert np.array_equal(layer.forward(params, x2)[0], x)
    # Pure copies: the harness's round-off bound is met with zero ulps.
    assert check_roundtrip(layer, params, x, bound_ulps=0) == 0


@given(cases(), st.sampled_from([np.float32, np.float64]))
def test_logdets_are_zero_and_cancel_exactly(case, dtype):
    layer, params, x, _ = case
    x = x.astype(dtype)
    z, logdet, _ = layer.forward(params, x)
    _, logdet_inv, _ = layer.inverse(params, z)
    assert logdet.shape == (x.shape[0],) and logdet.dtype == dtype
    assert not np.any(logdet) and not np.any(logdet_inv)
    check_logdet_cancels(layer, params, x, exact=True)


@given(cases())
def test_output_is_the_permuted_input(case):
    layer, params, x, _ = case
    z, _, _ = layer.forward(params, x)
    for i, j in enumerate(layer.perm):
        assert np.array_equal(z[:, i], x[:, j])
    if isinstance(layer, Reverse):
        assert np.array_equal(z, x[:, ::-1])


@given(cases())
def test_logdet_matches_finite_difference_jacobian(case):
    layer, params, x, _ = case
    check_logdet(layer, params, x)


@given(cases())
def test_gradients_forward_match_finite_differences(case):
    layer, params, x, rng = case
    check_gradients(layer, params, x, rng, "forward")


@given(cases())
def test_gradients_inverse_match_finite_differences(case):
    layer, params, x, rng = case
    check_gradients(layer, params, layer.forward(params, x)[0], rng, "inverse")


@given(cases())
def test_structural_properties(case):
    layer, params, x, rng = case
    check_structure(layer, params, x, rng)


@given(st.integers(1, 8), st.integers(0, 2**31))
def test_seed_fixes_the_permutation(features, seed):
    a, b = Permutation(features, seed=seed), Permutation(features, seed=seed)
    assert np.array_equal(a.perm, b.perm)
    assert np.array_equal(a.perm, np.random.default_rng(seed).permutation(features))
    assert np.array_equal(a.perm[a.inverse_perm], np.arange(features))


def test_buffers_are_read_only_and_params_empty():
    layer = Permutation(4, seed=0)
    with pytest.raises(ValueError):
        layer.perm[0] = 1
    assert layer.init(np.random.default_rng(0), np.zeros((2, 4))) == {}


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(perm=[0, 1, 1, 3]),
        dict(perm=[0, 1, 2]),
        dict(perm=[0, 1, 2, 4]),
        dict(perm=[0.0, 1.0, 2.0, 3.0]),
        dict(perm=[[0, 1], [2, 3]]),
        dict(perm=[True, False, True, False]),
        dict(perm=[0, 1, 2, 3], seed=1),
    ],
)
def test_invalid_permutation_raises(kwargs):
    with pytest.raises(ValueError, match="^Permutation: "):
        Permutation(4, **kwargs)


@pytest.mark.parametrize("cls", [Permutation, Reverse])
@pytest.mark.parametrize("features,spatial", [(0, 0), (2.5, 0), (3, -1), (True, 0)])
def test_invalid_hyperparameters_raise(cls, features, spatial):
    with pytest.raises(ValueError, match=f"^{cls.__name__}: "):
        cls(features, spatial=spatial)


@pytest.mark.parametrize("layer", [Permutation(3, seed=0), Reverse(3, spatial=2)])
def test_bad_input_raises_naming_the_layer(layer):
    shape = (2, 3) + (2, 2) * (layer.spatial // 2)
    x = np.random.default_rng(0).normal(size=shape)
    bad = {
        "ndim": x[..., None],
        "features": np.concatenate([x, x[:, :1]], axis=1),
        "nan": np.where(x > 0, np.nan, x),
        "integer": np.ones(shape, dtype=np.int64),
    }
    for what, value in bad.items():
        for run in (layer.forward, layer.inverse):
            with pytest.raises(ValueError, match=f"^{layer.name}: "):
                run({}, value)
    z, logdet, cache = layer.forward({}, x)
    with pytest.raises(ValueError, match=f"^{layer.name}: "):
        layer.backward({}, cache, z, logdet[:1])
