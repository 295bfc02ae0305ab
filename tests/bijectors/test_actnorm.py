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
from rawflow import Chain, tree
from rawflow.bijectors.actnorm import ActNorm

# NumPy's SIMD float32 exp and log are documented to ≤ 2.52 and ≤ 3.83 ulp (CUDA: expf ≤ 2, logf ≤ 1);
# float64 exp/log are within 1 ulp. Bounds below count ulps of these functions explicitly.
EXP_ULPS, LOG_ULPS = 3, 4


@st.composite
def batches(draw):
    """A layer and a batch whose channels have their own offset and spread (at least 2 values each)."""
    spatial = draw(st.sampled_from([0, 2]))
    c = draw(st.integers(1, 6 if spatial == 0 else 3))
    hw = tuple(draw(st.integers(1, 3)) for _ in range(spatial))
    n = draw(st.integers(2 if spatial == 0 or np.prod(hw) == 1 else 1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    shape = (n, c) + hw
    loc = rng.uniform(-5, 5, size=c).reshape((1, c) + (1,) * spatial)
    spread = np.exp(rng.uniform(-2, 2, size=c)).reshape((1, c) + (1,) * spatial)
    return ActNorm(c, spatial=spatial), loc + spread * rng.normal(size=shape), rng


@st.composite
def cases(draw):
    layer, x, rng = draw(batches())
    # Data-dependent init would make x exactly whitened; random parameters exercise every term.
    params = randomize(layer.init(rng, x), rng, draw(st.floats(0.05, 1.5)))
    return layer, params, x, rng


def cast(params, x, dtype):
    return tree.map(lambda a: a.astype(dtype), params), x.astype(dtype)


def channel_axes(x):
    return (0,) + tuple(range(2, x.ndim))


@given(batches(), st.sampled_from([np.float32, np.float64]))
def test_init_whitens_the_first_batch(batch, dtype):
    """Per channel the outputs have zero mean and unit (population) variance, to round-off.

    u = eps/2, M values per channel, σ, m their spread and mean. Bounds (first order):
    * mean: the computed mean m̂ is off by ≤ (M+1)u·max|x| (worst-case summation), and each
      z = fl(fl(x − m̂)·e) by ≤ 2u|x − m̂|·e, so |mean z| ≤ (M+5)u·e·max|x|.
    * variance: e approximates 1/σ̂ with relative error ρ ≤ ((M+3)/2 + 2)u (variance sum, sqrt,
      guard add) + 2·LOG_ULPS·u|log σ| (log) + 2·EXP_ULPS·u (exp) + guard/σ; var z = (1+ρ)²(1 ± 4u)
      plus the second-order shift (m − m̂)²/σ² of measuring the spread about m̂.
    """
    layer, x, _ = batch
    x = x.astype(dtype)
    params = layer.init(None, x)
    assert tree.structure(params) == {"bias": (layer.features,), "log_scale": (layer.features,)}
    assert all(a.dtype == dtype for _, a in tree.leaves(params))
    z, _, _ = layer.forward(params, x)
    x64, z64, axes = x.astype(np.float64), z.astype(np.float64), channel_axes(x)
    u = np.finfo(dtype).eps / 2
    m = x.shape[0] * int(np.prod(x.shape[2:]))
    e = np.exp(params["log_scale"].astype(np.float64))
    max_x = np.abs(x64).max(axis=axes)
    sigma = x64.std(axis=axes)
    mean_tol = (m + 5) * u * e * max_x
    guard = np.finfo(dtype).eps * np.sqrt((x64**2).mean(axis=axes)) + np.finfo(dtype).tiny
    var_tol = (
        (m + 11 + 4 * EXP_ULPS + 4 * LOG_ULPS * np.abs(np.log(sigma))) * u
        + 2 * guard / sigma
        + ((m + 5) * u * max_x / sigma) ** 2
    )
    assert np.all(np.abs(z64.mean(axis=axes)) <= mean_tol)
    assert np.all(np.abs(z64.var(axis=axes) - 1) <= var_tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_init_on_constant_channels_stays_finite(dtype):
    x = np.zeros((5, 3), dtype=dtype)
    x[:, 1] = 2.5  # constant, nonzero
    x[:, 2] = np.arange(5)
    layer = ActNorm(3)
    params = layer.init(None, x)
    assert all(np.all(np.isfinite(a)) for _, a in tree.leaves(params))
    tiny = np.finfo(dtype).tiny
    assert params["log_scale"][0] == -np.log(tiny)  # all-zero channel: only the tiny guard is left
    z, logdet, _ = layer.forward(params, x)
    assert np.all(np.isfinite(z)) and np.all(np.isfinite(logdet))
    assert np.array_equal(z[:, :2], np.zeros((5, 2), dtype=dtype))


@pytest.mark.parametrize("shape,spatial", [((1, 3), 0), ((1, 2, 1, 1), 2)])
def test_init_needs_two_values_per_channel(shape, spatial):
    with pytest.raises(ValueError, match="^ActNorm: .*at least 2 values"):
        ActNorm(shape[1], spatial=spatial).init(None, np.ones(shape))


def test_init_in_a_chain_sees_the_batch_at_its_depth():
    rng = np.random.default_rng(3)
    x = 3 + 2 * rng.normal(size=(50, 2))
    chain = Chain([ActNorm(2), ActNorm(2)])
    params = chain.init(rng, x)
    # The second layer sees whitened data, so it starts (numerically) as the identity.
    assert np.all(np.abs(params["1"]["bias"]) <= 1e-15) and np.all(np.abs(params["1"]["log_scale"]) <= 1e-14)


@given(cases(), st.sampled_from([np.float32, np.float64]))
def test_roundtrip_both_directions(case, dtype):
    layer, params, x, _ = case
    params, x = cast(params, x, dtype)
    # Derived in rawflow/bijectors/actnorm.py: ≤ 2·eps·κ·max(‖x‖∞, ‖z‖∞) with κ = max over channels of max(e, 1/e).
    kappa = float(np.exp(np.abs(params["log_scale"].astype(np.float64)).max()))
    check_roundtrip(layer, params, x, bound_ulps=2, kappa=kappa)


@given(cases(), st.sampled_from([np.float32, np.float64]))
def test_logdets_cancel_exactly(case, dtype):
    layer, params, x, _ = case
    check_logdet_cancels(layer, *cast(params, x, dtype), exact=True)


@given(cases())
def test_logdet_matches_finite_difference_jacobian(case):
    layer, params, x, _ = case
    check_logdet(layer, params, x)
    _, logdet, _ = layer.forward(params, x)
    positions = int(np.prod(x.shape[2:]))
    assert np.array_equal(logdet, np.full(x.shape[0], positions * params["log_scale"].sum()))


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
    """Same float32-representable inputs in both precisions; float64 stands in for exact.

    Element bounds, u = eps32/2, r = (1 + 2·EXP_ULPS)u the error of a product/quotient with e:
    forward z = fl(fl(x+b)·e) ≤ (r + u)|z|; inverse x = fl(fl(z/e) − b) ≤ r|x+b| + u|x|; the input
    cotangent ≤ r; the log-det ≤ (C+1)u·P·Σ|ls|; each parameter gradient, a sum of M = N·P products
    (plus P·Σ glogdet), ≤ (M + N)u + r + 2u times the sum of the absolute terms.
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
    assert all(a.dtype == np.float32 for a in (out32, ld32, gin32, gp32["bias"], gp32["log_scale"]))

    u = np.finfo(np.float32).eps / 2
    n, positions, axes = x.shape[0], int(np.prod(x.shape[2:])), channel_axes(x)
    view = (1, -1) + (1,) * (x.ndim - 2)
    e = np.exp(p64["log_scale"]).reshape(view)
    ub = cache64[0]  # u = x + b at this point, in float64
    ls = p64["log_scale"]
    r = (1 + 2 * EXP_ULPS) * u
    out_tol = (r + u) * np.abs(out64) if direction == "forward" else r * np.abs(ub) + u * np.abs(out64)
    assert np.all(np.abs(out32 - out64) <= out_tol)
    assert np.all(np.abs(ld32 - ld64) <= (ls.size + 1) * u * positions * np.abs(ls).sum())
    assert np.all(np.abs(gin32 - gin64) <= r * np.abs(gin64))
    gamma = (n * positions + n + 2) * u + r
    if direction == "forward":
        mag_b = (np.abs(g) * e).sum(axis=axes)
        mag_ls = (np.abs(g) * np.abs(cache64[1])).sum(axis=axes)  # Σ|gz||z|
    else:
        mag_b = np.abs(g).sum(axis=axes)
        mag_ls = (np.abs(g) * np.abs(ub)).sum(axis=axes)  # Σ|gx||x + b|
    mag_ls = mag_ls + positions * np.abs(gl).sum()
    assert np.all(np.abs(gp32["bias"] - gp64["bias"]) <= gamma * mag_b)
    assert np.all(np.abs(gp32["log_scale"] - gp64["log_scale"]) <= gamma * mag_ls)


@pytest.mark.parametrize("spatial", [0, 2])
def test_bad_input_raises_naming_the_layer(spatial):
    layer = ActNorm(3, spatial=spatial)
    x = np.random.default_rng(0).normal(size=(2, 3) + (2, 2) * (spatial // 2))
    params = layer.init(None, x)
    bad = {
        "ndim": x[..., None],
        "features": np.concatenate([x, x[:, :1]], axis=1),
        "dtype": x.astype(np.float32),
        "nan": np.where(x > 0, np.nan, x),
    }
    for what, value in bad.items():
        for run in (layer.forward, layer.inverse):
            with pytest.raises(ValueError, match="^ActNorm: "):
                run(params, value)
        if what != "dtype":
            with pytest.raises(ValueError, match="^ActNorm: "):
                layer.init(None, value)
    z, logdet, cache = layer.forward(params, x)
    with pytest.raises(ValueError, match="^ActNorm: "):
        layer.backward(params, cache, z, logdet[:1])
