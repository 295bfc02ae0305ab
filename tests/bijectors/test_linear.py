import numpy as np
import pytest
import scipy.linalg
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
from rawflow.bijectors.linear import DenseLinear, LULinear, random_orthogonal

EPS64 = np.finfo(np.float64).eps
# NumPy's SIMD float32 exp is documented to ≤ 2.52 ulp (CUDA's expf: ≤ 2).
EXP_ULPS = 3


@st.composite
def cases(draw, kind=None):
    """A linear layer with well-conditioned random parameters near its init.

    Parameters are the init (a random rotation, or its LU factors) plus ``randomize`` noise:
    dense ``W = Q + N(0, (σ/√C)²)`` (spectral norm of the noise ≈ 2σ ≤ 0.6, so cond(W) stays small);
    LU: ``N(0, σ²)`` on every entry of ``lower``, ``upper`` (also the unused ones: they must be ignored)
    and ``log_scale``. σ ∈ [0.02, 0.3].
    """
    kind = kind or draw(st.sampled_from(["dense", "lu"]))
    spatial = draw(st.sampled_from([0, 2]))
    c = draw(st.integers(1, 6 if spatial == 0 else 3))
    shape = (draw(st.integers(1, 4)), c) + tuple(draw(st.integers(1, 3)) for _ in range(spatial))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    cls = DenseLinear if kind == "dense" else LULinear
    layer = cls(c, spatial=spatial, seed=seed)
    x = rng.normal(size=shape)
    params = layer.init(rng, x)
    sigma = draw(st.floats(0.02, 0.3)) / (np.sqrt(c) if kind == "dense" else 1)
    params = tree.add(params, randomize(params, rng, sigma))
    return layer, params, x, rng


def cast(params, x, dtype):
    return tree.map(lambda a: a.astype(dtype), params), x.astype(dtype)


def weight(layer, params):
    return layer.weight(params) if isinstance(layer, LULinear) else params["weight"]


def cond(layer, params):
    return float(np.linalg.cond(weight(layer, params).astype(np.float64)))


def factor_magnitude(layer, params):
    """``F = |L||Ũ|`` of the factors the layer computes with (LAPACK's for the dense solve)."""
    if isinstance(layer, LULinear):
        lower, upper, _ = layer._factors(tree.map(lambda a: a.astype(np.float64), params))
    else:
        _, lower, upper = scipy.linalg.lu(params["weight"].astype(np.float64))
    return np.abs(lower) @ np.abs(upper)


def columns(a):
    return np.moveaxis(a.reshape(a.shape[0], a.shape[1], -1), 1, 0).reshape(a.shape[1], -1)


def skeel_kappa(layer, params):
    """``κ = √C·‖|W⁻¹|‖₂·‖F‖₂ ≥ 1``: bounds ``‖|W⁻¹|F‖`` and ``‖F|W⁻¹|‖`` in the ∞- and 1-norms,
    the amplification of a backward error ``|δW| ≤ c·u·F`` in a solve with W or Wᵀ."""
    w = weight(layer, params).astype(np.float64)
    f = factor_magnitude(layer, params)
    return np.sqrt(layer.features) * np.linalg.norm(np.abs(np.linalg.inv(w)), 2) * np.linalg.norm(f, 2)


def gradient_magnitudes(layer, params, xs, gzs, gl, lu_from_dense=False):
    """Size of each parameter gradient's terms (float64), for normwise round-off bounds.

    ``gZ Xᵀ`` is a sum over columns, each from one product or solve: ``Σ_m max|gZ_m|·max|X_m|``;
    the dense log-det term ``γ·W⁻ᵀ`` (``γ = P·Σ|glogdet|``) adds ``γ·C·max|W⁻¹|``; the LU maps
    multiply by C and the largest factor entries, and its ``log_scale`` gets ``γ`` directly.
    ``lu_from_dense``: LU magnitudes of a dense ``gW`` (with its log-det term) mapped through the LU.
    """
    c = layer.features
    gamma = int(np.prod(xs.shape[2:])) * np.abs(gl).sum()
    mag_gw = np.sum(np.max(np.abs(columns(gzs)), axis=0) * np.max(np.abs(columns(xs)), axis=0))
    w_inv = np.linalg.inv(weight(layer, params).astype(np.float64))
    if not isinstance(layer, LULinear):
        return {"weight": mag_gw + gamma * c * np.max(np.abs(w_inv))}
    if lu_from_dense:
        mag_gw = mag_gw + gamma * c * np.max(np.abs(w_inv))
    lower, upper, s = layer._factors(tree.map(lambda a: a.astype(np.float64), params))
    return {
        "lower": c * mag_gw * np.max(np.abs(upper)),
        "upper": c * np.max(np.abs(lower)) * mag_gw,
        "log_scale": c * np.max(np.abs(lower)) * mag_gw * np.max(np.abs(s)) + gamma,
    }


@given(cases(), st.sampled_from([np.float32, np.float64]))
def test_roundtrip_both_directions(case, dtype):
    layer, params, x, _ = case
    params, x = cast(params, x, dtype)
    # The bar for the 1×1 conv: ≤ 8·eps·cond(W)·max(‖x‖∞, ‖z‖∞). With C ≤ 6 and W near a
    # rotation (no growth in its LU factors) the backward errors of GEMM and solves, ≈ C·u·|L||Ũ|,
    # amplified by cond(W), stay inside it.
    check_roundtrip(layer, params, x, bound_ulps=8, kappa=cond(layer, params))


@given(cases(), st.sampled_from([np.float32, np.float64]))
def test_logdets_cancel_exactly(case, dtype):
    layer, params, x, _ = case
    check_logdet_cancels(layer, *cast(params, x, dtype), exact=True)


@given(cases())
def test_logdet_matches_finite_difference_jacobian_with_the_positions_factor(case):
    layer, params, x, _ = case
    check_logdet(layer, params, x)
    _, logdet, _ = layer.forward(params, x)
    positions = int(np.prod(x.shape[2:]))
    per_position = (
        params["log_scale"].sum() if isinstance(layer, LULinear) else np.linalg.slogdet(params["weight"])[1]
    )
    assert np.array_equal(logdet, np.full(x.shape[0], positions * per_position))
    if layer.spatial:
        # Each position of an image is one vector sample of the same map.
        vec = type(layer)(layer.features, seed=layer.seed)
        flat = np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
        z_vec, ld_vec, _ = vec.forward(params, flat)
        z, _, _ = layer.forward(params, x)
        assert np.array_equal(np.moveaxis(z, 1, -1).reshape(-1, x.shape[1]), z_vec)
        assert np.array_equal(logdet, np.full(x.shape[0], positions * ld_vec[0]))


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


@given(cases(kind="lu"))
def test_lu_and_dense_agree_on_the_same_weight(case):
    """Dense layer with ``weight = lu.weight(params)`` vs the LU layer, both directions.

    Forward outputs are the same GEMM on the same W (bit-identical). The rest differ only by
    round-off: with u = eps/2, F = |L||Ũ| and κ = :func:`skeel_kappa`, each solve is off by
    ≤ (3C+4)u·κ·max|x|, ``log|det|`` via LAPACK's LU of W by ≤ (3C+4)u·κ·C (``tr(W⁻¹ δW)``) per
    position, and each gradient (LU's vs the dense ``gW`` mapped by :meth:`LULinear.weight_backward`)
    by ≤ 2·(M + N + 3C + 4)u·κ times :func:`gradient_magnitudes`.
    """
    lu, p_lu, x, rng = case
    dense = DenseLinear(lu.features, spatial=lu.spatial)
    w = lu.weight(p_lu)
    p_dense = {"weight": w}
    c, positions, n = lu.features, int(np.prod(x.shape[2:])), x.shape[0]
    u = EPS64 / 2
    kappa = skeel_kappa(lu, p_lu)
    tol = (3 * c + 4) * u * kappa

    z_lu, ld_lu, cache_lu = lu.forward(p_lu, x)
    z_d, ld_d, cache_d = dense.forward(p_dense, x)
    assert np.array_equal(z_lu, z_d)
    assert np.all(np.abs(ld_lu - ld_d) <= tol * positions * (c + np.abs(p_lu["log_scale"]).sum()))
    x_lu, _, cache_ilu = lu.inverse(p_lu, z_lu)
    x_d, _, cache_id = dense.inverse(p_dense, z_lu)
    assert np.max(np.abs(x_lu - x_d)) <= 2 * tol * np.max(np.abs(x))

    grad_tol = 2 * (n * positions + n + 3 * c + 4) * u * kappa
    for fwd in (True, False):
        g, gl = rng.normal(size=x.shape), rng.normal(size=n)
        if fwd:
            _, gp_lu = lu.backward(p_lu, cache_lu, g, gl)
            _, gp_d = dense.backward(p_dense, cache_d, g, gl)
            point, gz = x, g
        else:
            gz, gp_lu = lu.inverse_backward(p_lu, cache_ilu, g, gl)
            _, gp_d = dense.inverse_backward(p_dense, cache_id, g, gl)
            point = x_lu
        mapped = lu.weight_backward(p_lu, gp_d["weight"])
        mags = gradient_magnitudes(lu, p_lu, point, gz, gl, lu_from_dense=True)
        for path, leaf in tree.leaves(gp_lu):
            assert np.max(np.abs(leaf - mapped[path])) <= grad_tol * mags[path], path


@given(st.integers(1, 6), st.integers(0, 2**31), st.sampled_from([np.float32, np.float64]))
def test_lu_init_factorises_the_dense_init_rotation(c, seed, dtype):
    x = np.zeros((2, c), dtype=dtype)
    dense, lu = DenseLinear(c, seed=seed), LULinear(c, seed=seed)
    w_dense = dense.init(None, x)["weight"]
    p_lu = lu.init(None, x)
    assert w_dense.dtype == dtype and all(a.dtype == dtype for _, a in tree.leaves(p_lu))
    eps = np.finfo(dtype).eps
    q = random_orthogonal(c, seed)
    assert np.array_equal(w_dense, q.astype(dtype))
    # Orthogonal to round-off: a Householder QR's Q is orthogonal to O(C·eps).
    assert np.max(np.abs(q.T @ q - np.eye(c))) <= 4 * c * EPS64
    # P·L·U reproduces Q to the backward error of scipy's LU and of the product L·Ũ, each ≤ C·u·|L||Ũ|,
    # plus the rounding of the stored factors to dtype (u each) and of s = exp(log|d|): log|d| is
    # stored to u·|log|d|| absolute and exp adds EXP_ULPS ulp, a relative error of the diagonal.
    w_lu = lu.weight(p_lu).astype(np.float64)
    f = factor_magnitude(lu, p_lu)
    log_d = np.max(np.abs(p_lu["log_scale"].astype(np.float64)))
    assert np.all(np.abs(w_lu - q) <= (c + 2 * EXP_ULPS + 2 + log_d) * eps * (f + np.abs(q)))
    assert set(np.unique(lu.sign)) <= {-1.0, 1.0}
    assert np.array_equal(np.sort(lu.perm), np.arange(c))


@given(cases(kind="lu"))
def test_lu_ignores_entries_outside_its_masks_and_gives_them_zero_gradient(case):
    layer, params, x, rng = case
    c = layer.features
    outside_lower = np.triu(np.ones((c, c), dtype=bool))  # diagonal and above
    outside_upper = np.tril(np.ones((c, c), dtype=bool))  # diagonal and below
    noisy = dict(params)
    noisy["lower"] = np.where(outside_lower, rng.normal(size=(c, c)), params["lower"])
    noisy["upper"] = np.where(outside_upper, rng.normal(size=(c, c)), params["upper"])
    z, logdet, cache = layer.forward(params, x)
    z2, logdet2, _ = layer.forward(noisy, x)
    assert np.array_equal(z, z2) and np.array_equal(logdet, logdet2)
    assert np.array_equal(layer.inverse(params, z)[0], layer.inverse(noisy, z)[0])
    _, _, cache_i = layer.inverse(params, z)
    for run, cache_ in [(layer.backward, cache), (layer.inverse_backward, cache_i)]:
        _, gp = run(params, cache_, rng.normal(size=z.shape), rng.normal(size=logdet.shape))
        assert not np.any(gp["lower"][outside_lower]) and not np.any(gp["upper"][outside_upper])


@given(cases(), st.sampled_from(["forward", "inverse"]))
def test_float32_matches_float64_within_round_off(case, direction):
    """Same float32-representable inputs in both precisions; float64 stands in for exact.

    Normwise bounds ``‖Δ‖max ≤ k·u·κ·mag`` with u = eps32/2, ``k = M + N + 3C + 2·EXP_ULPS + 4``
    (an LU / GEMM / triangular solve has backward error ≤ (3C+2)u·F, F = |L||Ũ| of the factors used,
    the assembled LU weight adds (C + 2·EXP_ULPS)u·F, a gradient sums M = N·P positions and N
    log-det cotangents), ``κ = √C·‖|W⁻¹|‖₂·‖F‖₂ ≥ 1`` (bounds every Skeel-type amplification
    ``‖|W⁻¹|F‖`` in the ∞- and 1-norms, :func:`skeel_kappa`) and ``mag`` each quantity's size:
    ``‖F‖·max|in|`` for a product with W, ``max|out|`` for a solve, :func:`gradient_magnitudes`.
    """
    layer, params, x, rng = case
    p32, x32 = cast(params, x, np.float32)
    p64, x64 = cast(p32, x32, np.float64)
    fwd = direction == "forward"
    run = layer.forward if fwd else layer.inverse
    vjp = layer.backward if fwd else layer.inverse_backward
    out32, ld32, cache32 = run(p32, x32)
    out64, ld64, cache64 = run(p64, x64)
    g = rng.normal(size=x.shape).astype(np.float32)
    gl = rng.normal(size=x.shape[0]).astype(np.float32)
    gin32, gp32 = vjp(p32, cache32, g, gl)
    gin64, gp64 = vjp(p64, cache64, g.astype(np.float64), gl.astype(np.float64))
    assert all(a.dtype == np.float32 for a in [out32, ld32, gin32] + [a for _, a in tree.leaves(gp32)])

    c, n, positions = layer.features, x.shape[0], int(np.prod(x.shape[2:]))
    u = np.finfo(np.float32).eps / 2
    w = weight(layer, p64)
    bound = (n * positions + n + 3 * c + 2 * EXP_ULPS + 4) * u * skeel_kappa(layer, p64)
    norm_f = np.sqrt(c) * np.linalg.norm(factor_magnitude(layer, p64), 2)

    # The point (X, Z) and the cotangent at Z, whichever direction produced them.
    xs, gzs = (x64, g.astype(np.float64)) if fwd else (out64, gin64)
    mag_out = norm_f * np.max(np.abs(x64)) if fwd else np.max(np.abs(out64))
    mag_gin = norm_f * np.max(np.abs(g)) if fwd else np.max(np.abs(gin64))
    if isinstance(layer, LULinear):
        log_terms = np.abs(p64["log_scale"]).sum()
    else:
        log_terms = abs(np.linalg.slogdet(w)[1])
    assert np.max(np.abs(out32 - out64)) <= bound * mag_out
    assert np.max(np.abs(gin32 - gin64)) <= bound * mag_gin
    assert np.max(np.abs(ld32 - ld64)) <= bound * positions * (c + log_terms)

    mags = gradient_magnitudes(layer, p64, xs, gzs, gl.astype(np.float64))
    for path, leaf in tree.leaves(gp64):
        assert np.max(np.abs(gp32[path] - leaf)) <= bound * mags[path], path


# ---------------------------------------------------------------- singular weights and bad input
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's slogdet warns on the NaN weight
@pytest.mark.parametrize("spatial", [0, 2])
@pytest.mark.parametrize("how", ["zero row", "repeated row", "all zero", "nan"])
def test_singular_dense_weight_raises(spatial, how):
    layer = DenseLinear(3, spatial=spatial)
    x = np.random.default_rng(0).normal(size=(2, 3) + (2, 2) * (spatial // 2))
    w = layer.init(None, x)["weight"].copy()
    if how == "zero row":
        w[1] = 0
    elif how == "repeated row":
        w[2] = w[0]
    elif how == "all zero":
        w[:] = 0
    else:
        w[0, 0] = np.nan
    match = "NaN" if how == "nan" else "singular"
    for run in (layer.forward, layer.inverse):
        # a NaN entry is refused by the parameter check (issue 13) before log|det W| is formed
        with pytest.raises(ValueError, match=f"^DenseLinear: (parameter ')?weight'? .*{match}"):
            run({"weight": w}, x)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # exp(1e4) overflows: that is the point
@pytest.mark.parametrize("value", [-np.inf, np.inf, np.nan, -1e4, 1e4])
def test_singular_lu_weight_raises(value):
    layer = LULinear(3, spatial=2)
    x = np.random.default_rng(0).normal(size=(2, 3, 2, 2))
    params = layer.init(None, x)
    params["log_scale"] = params["log_scale"].copy()
    params["log_scale"][1] = value  # ±1e4: exp under/overflows, s = 0 or inf
    # ±inf and NaN are refused by the parameter check (issue 13), the under/overflows by _factors
    match = r"^LULinear: weight is singular.*\[1\]" if np.isfinite(value) else \
        r"^LULinear: parameter 'log_scale' contains NaN or Inf .*\(1,\)"
    for run in (layer.forward, layer.inverse):
        with pytest.raises(ValueError, match=match):
            run(params, x)
    with pytest.raises(ValueError, match=match):
        layer.weight(params)


@pytest.mark.parametrize("cls", [DenseLinear, LULinear])
@pytest.mark.parametrize("spatial", [0, 2])
def test_bad_input_raises_naming_the_layer(cls, spatial):
    layer = cls(3, spatial=spatial)
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
            with pytest.raises(ValueError, match=f"^{cls.__name__}: "):
                run(params, value)
    z, logdet, cache = layer.forward(params, x)
    with pytest.raises(ValueError, match=f"^{cls.__name__}: "):
        layer.inverse_backward(params, cache, x, logdet[:1])


@pytest.mark.parametrize("cls", [DenseLinear, LULinear])
def test_same_seed_same_layer_and_read_only_buffers(cls):
    a, b = cls(4, seed=7), cls(4, seed=7)
    x = np.zeros((1, 4))
    for (path, u), (_, v) in zip(tree.leaves(a.init(None, x)), tree.leaves(b.init(None, x))):
        assert np.array_equal(u, v), path
    if cls is LULinear:
        with pytest.raises(ValueError):
            a.sign[0] = 2.0


# ---------------------------------------------------------------- near-singular W vs a 60-digit oracle
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lu_inverse_backward_is_exact_at_a_near_singular_weight(seed):
    """Issue 14, item 1: at ``log_scale = −18`` (cond(W) ≈ 1e8…3e8), at a generic latent ``z`` (so
    ``x = W⁻¹z`` is huge), the inverse VJP agrees with the layer's own code evaluated at 60 digits:
    every entry within ``16·eps·T`` (its term size, :func:`rawflow.check.precise.check_precise`) and
    each factor gradient within 4 eps norm-wise. Recomputing ``V = Ũ X`` instead of keeping the
    solve's ``V`` put ``lower`` off by 1e-10 … 5e-9 norm-wise (up to 3e9 times the bound)."""
    pytest.importorskip("mpmath")
    from rawflow.check.precise import PreciseProbe, check_precise, to_float

    layer = LULinear(4, seed=5 + seed)
    rng = np.random.default_rng(64 + seed)
    params = tree.map(lambda a: a + rng.normal(scale=0.3, size=a.shape), layer.init(rng, np.zeros((1, 4))))
    params["log_scale"][1] = -18.0
    assert np.linalg.cond(layer.weight(params)) > 1e8
    x, z, gx = (rng.normal(size=(3, 4)) for _ in range(3))
    gl = rng.normal(size=3)
    report = check_precise(layer, params, x, z=z, directions=("inverse",), dtypes=("float64",), structure=False)
    assert report, report.failure_report()
    _, _, cache = layer.inverse(params, z)
    gz, gp = layer.inverse_backward(params, cache, gx, gl)
    exact = PreciseProbe(layer, params, z, gx, gl, "inverse").evaluate()
    for key, got in [("input", gz)] + list(gp.items()):
        want = to_float(exact["grad:" + key])
        assert np.linalg.norm(got - want) <= 4 * EPS64 * np.linalg.norm(want), key


def test_lu_forward_cache_still_serves_the_inverse_vjp():
    """The forward cache holds no solve (V = None); the inverse VJP then forms V = Ũ X from the
    forward's exact input and agrees with the inverse cache's result at the matching point."""
    layer = LULinear(3, seed=1)
    rng = np.random.default_rng(3)
    params = tree.map(lambda a: a + rng.normal(scale=0.2, size=a.shape), layer.init(rng, np.zeros((1, 3))))
    x = rng.normal(size=(4, 3))
    z, _, fcache = layer.forward(params, x)
    _, _, icache = layer.inverse(params, z)
    assert fcache[1] is None and icache[1] is not None
    gx, gl = rng.normal(size=(4, 3)), rng.normal(size=4)
    a = layer.inverse_backward(params, fcache, gx, gl)
    b = layer.inverse_backward(params, icache, gx, gl)
    for u, v in zip(tree.leaves({"g": a[0], **a[1]}), tree.leaves({"g": b[0], **b[1]})):
        np.testing.assert_allclose(u[1], v[1], rtol=1e-13, atol=1e-13 * np.abs(v[1]).max())
