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
)
from rawflow import tree
from rawflow.bijectors.scaling import DiagonalScaling

EPS32 = np.finfo(np.float32).eps
# NumPy's SIMD float32 exp is documented to ≤ 2.52 ulp (CUDA's expf: ≤ 2), not correctly rounded.
EXP_ULPS = 3


@st.composite
def cases(draw):
    spatial = draw(st.sampled_from([0, 2]))
    c = draw(st.integers(1, 6 if spatial == 0 else 3))
    shape = (draw(st.integers(1, 4)), c) + tuple(draw(st.integers(1, 3)) for _ in range(spatial))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    layer = DiagonalScaling(c, spatial=spatial)
    x = rng.normal(size=shape)
    # The zero init is the identity and would hide every scale bug: draw log-scales instead.
    params = randomize(layer.init(rng, x), rng, draw(st.floats(0.05, 2.0)))
    return layer, params, x, rng


def cast(params, x, dtype):
    return tree.map(lambda a: a.astype(dtype), params), x.astype(dtype)


@given(cases(), st.sampled_from([np.float32, np.float64]))
def test_roundtrip_both_directions(case, dtype):
    layer, params, x, _ = case
    params, x = cast(params, x, dtype)
    # x' = fl(fl(x·e)/e) = x(1+δ1)(1+δ2), |δi| ≤ u = eps/2: |x' − x| ≤ (2u + u²)|x|, which rounds to at
    # most one ulp of x, i.e. ≤ eps·|x|; no condition factor, since the inverse divides by the
    # forward's own rounded e. Same for z → x → z.
    check_roundtrip(layer, params, x, bound_ulps=1, kappa=1.0)


@given(cases(), st.sampled_from([np.float32, np.float64]))
def test_logdets_cancel_exactly(case, dtype):
    layer, params, x, _ = case
    check_logdet_cancels(layer, *cast(params, x, dtype), exact=True)


@given(cases())
def test_logdet_is_positions_times_sum_of_log_scales(case):
    layer, params, x, _ = case
    _, logdet, _ = layer.forward(params, x)
    positions = int(np.prod(x.shape[2:]))
    assert np.array_equal(logdet, np.full(x.shape[0], positions * params["log_scale"].sum()))
    if layer.spatial:
        # The H·W factor explicitly: every position of an image is one vector sample.
        flat = np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
        _, ld_vec, _ = DiagonalScaling(x.shape[1]).forward(params, flat)
        assert np.allclose(logdet, positions * ld_vec[0], rtol=4 * np.finfo(float).eps, atol=0)


@given(cases())
def test_logdet_matches_finite_difference_jacobian(case):
    check_logdet(*case[:3])


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
    check_structure(*case)


@given(cases(), st.sampled_from(["forward", "inverse"]))
def test_float32_matches_float64_within_round_off(case, direction):
    """Same (float32-representable) inputs in both precisions; float64 stands in for exact.

    Element bounds, u = eps32/2, exp within EXP_ULPS ulp (≤ 2·EXP_ULPS·u relative): a product or
    quotient with e is off by ≤ (1 + 2·EXP_ULPS)u relative; the log-det ``P·Σ_c ls_c`` by
    ≤ (C + 1)u·P·Σ|ls|; the log-scale gradient, a sum of M = N·P products of the cotangent with that
    output plus ``P·Σ glogdet``, by ≤ (M + N + 2 + 2·EXP_ULPS)u times the sum of the absolute terms.
    """
    layer, params, x, rng = case
    p32, x32 = cast(params, x, np.float32)
    p64, x64 = cast(p32, x32, np.float64)
    run = layer.forward if direction == "forward" else layer.inverse
    vjp = layer.backward if direction == "forward" else layer.inverse_backward
    out32, ld32, cache32 = run(p32, x32)
    out64, ld64, cache64 = run(p64, x64)
    g = rng.normal(size=x.shape).astype(np.float32)
    gl = rng.normal(size=x.shape[0]).astype(np.float32)
    gin32, gp32 = vjp(p32, cache32, g, gl)
    gin64, gp64 = vjp(p64, cache64, g.astype(np.float64), gl.astype(np.float64))
    for a in (out32, ld32, gin32, gp32["log_scale"]):
        assert a.dtype == np.float32
    u = EPS32 / 2
    n, positions = x.shape[0], int(np.prod(x.shape[2:]))
    ls = p64["log_scale"]
    rel = (1 + 2 * EXP_ULPS) * u
    assert np.all(np.abs(out32 - out64) <= rel * np.abs(out64))
    assert np.all(np.abs(gin32 - gin64) <= rel * np.abs(gin64))
    assert np.all(np.abs(ld32 - ld64) <= (ls.size + 1) * u * positions * np.abs(ls).sum())
    axes = (0,) + tuple(range(2, x.ndim))
    # ∂(output)/∂ls is ±output in both directions (z = x·e, x = z/e).
    mag = (np.abs(g) * np.abs(out64)).sum(axis=axes) + positions * np.abs(gl).sum()
    sum_tol = (n * positions + n + 2 + 2 * EXP_ULPS) * u
    assert np.all(np.abs(gp32["log_scale"] - gp64["log_scale"]) <= sum_tol * mag)


def test_init_is_the_identity():
    rng = np.random.default_rng(0)
    for shape, spatial in [((3, 4), 0), ((2, 3, 2, 3), 2)]:
        layer = DiagonalScaling(shape[1], spatial=spatial)
        x = rng.normal(size=shape)
        params = layer.init(rng, x)
        assert tree.structure(params) == {"log_scale": (shape[1],)} and not np.any(params["log_scale"])
        z, logdet, _ = layer.forward(params, x)
        assert np.array_equal(z, x) and not np.any(logdet)


@pytest.mark.parametrize("spatial", [0, 2])
def test_bad_input_raises_naming_the_layer(spatial):
    layer = DiagonalScaling(3, spatial=spatial)
    x = np.random.default_rng(0).normal(size=(2, 3) + (2, 2) * (spatial // 2))
    params = layer.init(None, x)
    bad = {
        "ndim": x[..., None],
        "features": np.concatenate([x, x[:, :1]], axis=1),
        "dtype": x.astype(np.float32),
        "nan": np.where(x > 0, np.nan, x),
        "inf": np.where(x > 0, np.inf, x),
    }
    for what, value in bad.items():
        for run in (layer.forward, layer.inverse):
            with pytest.raises(ValueError, match="^DiagonalScaling: "):
                run(params, value)
    z, logdet, cache = layer.forward(params, x)
    with pytest.raises(ValueError, match="^DiagonalScaling: "):
        layer.backward(params, cache, z.astype(np.float32), logdet.astype(np.float32))
    with pytest.raises(ValueError, match="^DiagonalScaling: "):
        layer.inverse_backward(params, cache, x, logdet[:1])
