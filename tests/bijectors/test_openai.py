"""openai/glow's layer definitions (``glow(..., variant="openai")``): the bijector contract on
Hypothesis-drawn shapes and parameters, each layer's own convention, and the float64 log-det."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import check_logdet, check_logdet_cancels, check_roundtrip, check_structure, randomize
from rawflow import FlowModel, StandardNormal, tree
from rawflow.bijectors.linear import DenseLinear
from rawflow.bijectors.openai import (
    OpenAIActNorm,
    OpenAIAffineTransform,
    OpenAICoupling,
    OpenAIInvConv,
    OpenAILearnTop,
    OpenAISplit,
)
from rawflow.check import check_bijector
from rawflow.models.architectures import glow
from support.edge_padding import edge_conv_literal
from support.image_checks import check_complex_step, check_gradients_resolvable, randomize_cnn

FEW = max(6, settings.default.max_examples // 2)
KINDS = ("actnorm", "actnorm-vector", "affine", "additive", "invconv", "split", "learntop")


@st.composite
def layers(draw, kinds=KINDS, param_scale=(0.05, 0.8)):
    """``(layer, params, x, rng)`` of one of the reference's layers, parameters randomised."""
    kind = draw(st.sampled_from(kinds))
    n, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    scale = draw(st.floats(*param_scale))
    if kind == "actnorm-vector":
        layer = OpenAIActNorm(draw(st.integers(1, 4)))
        x = rng.normal(size=(max(n, 2), layer.features)) * 2 + 1
        return layer, randomize(layer.init(rng, x), rng, scale), x, rng
    c = {"actnorm": draw(st.integers(1, 3)), "affine": 2 * draw(st.integers(1, 2)),
         "additive": 2 * draw(st.integers(1, 2)), "invconv": draw(st.integers(1, 4)),
         "split": draw(st.integers(2, 4)), "learntop": draw(st.integers(1, 3))}[kind]
    layer = {"actnorm": lambda: OpenAIActNorm(c, spatial=2),
             "affine": lambda: OpenAICoupling(c, "affine", width=draw(st.integers(1, 3))),
             "additive": lambda: OpenAICoupling(c, "additive", width=draw(st.integers(1, 3))),
             "invconv": lambda: OpenAIInvConv(c, spatial=2, seed=draw(st.integers(0, 99))),
             "split": lambda: OpenAISplit(c), "learntop": lambda: OpenAILearnTop(c)}[kind]()
    x = rng.normal(size=(n, c, h, w))
    params = layer.init(rng, x)
    if kind == "invconv":  # a rotation moved a little: well conditioned, every entry nonzero
        params = tree.map(lambda a: a + rng.normal(scale=0.3 * scale, size=a.shape), params)
    elif kind == "actnorm":
        params = randomize(params, rng, scale)
    else:
        params = randomize_cnn(params, rng, scale)
    return layer, params, x, rng


def cast(params, x, dtype):
    return tree.map(lambda a: a.astype(dtype), params), x.astype(dtype)


def kappa(layer, params, x):
    """How much a round trip may amplify round-off: ``max(e, 1/e)`` of an ActNorm, ``1/min s`` of a
    coupling, ``cond(W)`` of the 1×1 convolution, ``max(σ, 1/σ)`` of the priors."""
    p = tree.map(lambda a: a.astype(np.float64), params)
    x = x.astype(np.float64)
    if isinstance(layer, OpenAIActNorm):
        return float(np.exp(3 * np.abs(p["logs"]).max()))
    if isinstance(layer, OpenAIInvConv):
        return float(np.linalg.cond(p["weight"]))
    _, _, cache = layer._forward(p, x)
    if isinstance(layer, OpenAICoupling):
        tcache = cache[1]
        return 1.0 if tcache is None else float(1 / tcache[1].min())
    sigma = cache[2]
    return float(max(1.0, sigma.max(), (1 / sigma).max()))


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data(), dtype=st.sampled_from([np.float32, np.float64]))
def test_roundtrip_both_directions(kind, data, dtype):
    """≤ 4·eps·κ·max(‖x‖∞, ‖z‖∞): ActNorm, coupling and priors round one add and one product or
    quotient per element each way (derivations in the layers' modules and tests/bijectors/test_split.py);
    the 1×1 convolution's solve adds ``eps·cond(W)·C``, hence ``4·C`` there."""
    layer, params, x, _ = data.draw(layers((kind,)))
    params, x = cast(params, x, dtype)
    ulps = 4 * layer.features if isinstance(layer, OpenAIInvConv) else 5
    check_roundtrip(layer, params, x, bound_ulps=ulps, kappa=kappa(layer, params, x))


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data(), dtype=st.sampled_from([np.float32, np.float64]))
def test_logdets_cancel_exactly(kind, data, dtype):
    layer, params, x, _ = data.draw(layers((kind,)))
    check_logdet_cancels(layer, *cast(params, x, dtype), exact=True)


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_logdet_matches_finite_difference_jacobian(kind, data):
    layer, params, x, _ = data.draw(layers((kind,), param_scale=(0.05, 0.4)))
    check_logdet(layer, params, x)


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_gradients_match_complex_step_both_directions(kind, data):
    layer, params, x, rng = data.draw(layers((kind,)))
    for direction in ("forward", "inverse"):
        run = layer.forward if direction == "forward" else layer.inverse
        vjp = layer.backward if direction == "forward" else layer.inverse_backward
        u = x if direction == "forward" else layer.forward(params, x)[0]
        _, _, cache = run(params, u)
        check_complex_step(lambda p, v: run(p, v)[:2], lambda g, gl: vjp(params, cache, g, gl), params, u, rng)


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
@settings(max_examples=FEW)
def test_gradients_match_finite_differences(kind, data):
    layer, params, x, rng = data.draw(layers((kind,), param_scale=(0.05, 0.4)))
    check_gradients_resolvable(layer, params, x, rng, "forward")
    check_gradients_resolvable(layer, params, layer.forward(params, x)[0], rng, "inverse")


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_structural_properties(kind, data):
    check_structure(*data.draw(layers((kind,))))


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
@settings(max_examples=3)
def test_float32_and_float64_pass_the_check_suite(kind, data):
    """The suite's float32 bar (``16·eps32·T`` per entry, ``T`` its term size) and its first-order
    checks, on drawn shapes (the registered cases add the Hessian checks)."""
    layer, params, x, _ = data.draw(layers((kind,), param_scale=(0.05, 0.5)))
    report = check_bijector(layer, params, x, second_order=False, fd_columns=8)
    assert report, report.failure_report()


# ---------------------------------------------------------------------------------- conventions
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spatial", [0, 2])
def test_actnorm_init_is_the_reference_formula_and_whitens(dtype, spatial):
    rng = np.random.default_rng(4)
    shape = (6, 3) + (2, 3) * (spatial // 2)
    view = (1, 3) + (1,) * spatial
    x = (rng.uniform(-4, 4, size=view) + rng.uniform(0.2, 3, size=view) * rng.normal(size=shape)).astype(dtype)
    layer = OpenAIActNorm(3, spatial=spatial)
    p = layer.init(None, x)
    assert tree.structure(p) == {"b": (3,), "logs": (3,)} and p["logs"].dtype == dtype
    axes = (0,) + tuple(range(2, x.ndim))
    x64 = x.astype(np.float64)
    std = x64.std(axis=axes)
    tol = 64 * float(np.finfo(dtype).eps)
    assert np.allclose(p["logs"], np.log(1 / (std + 1e-6)) / 3, rtol=tol, atol=tol)
    z, logdet, _ = layer.forward(p, x)
    z64 = z.astype(np.float64)
    assert np.all(np.abs(z64.mean(axis=axes)) <= tol * np.abs(x64 - x64.mean(axis=axes).reshape(view)).max())
    assert np.allclose(z64.std(axis=axes), std / (std + 1e-6), rtol=tol)
    positions = int(np.prod(x.shape[2:]))
    assert np.array_equal(logdet, np.full(x.shape[0], positions * (3 * p["logs"]).sum(), dtype=dtype))


def test_actnorm_stores_a_third_of_the_log_scale():
    """The map at a point equals rawflow's ActNorm with ``log_scale = 3·logs``; the gradient of the
    stored ``logs`` is 3× that of ``log_scale`` (what the factor changes for an optimiser)."""
    from rawflow.bijectors.actnorm import ActNorm

    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 2, 2, 2))
    p = {"b": rng.normal(size=2), "logs": rng.normal(size=2) * 0.2}
    q = {"bias": p["b"], "log_scale": 3 * p["logs"]}
    openai, plain = OpenAIActNorm(2, spatial=2), ActNorm(2, spatial=2)
    za, la, ca = openai.forward(p, x)
    zb, lb, cb = plain.forward(q, x)
    assert np.array_equal(za, zb) and np.allclose(la, lb, rtol=1e-15)
    g, gl = rng.normal(size=za.shape), rng.normal(size=3)
    _, ga = openai.backward(p, ca, g, gl)
    _, gb = plain.backward(q, cb, g, gl)
    assert np.array_equal(ga["b"], gb["bias"]) and np.allclose(ga["logs"], 3 * gb["log_scale"], rtol=1e-15)


def test_actnorm_refuses_a_scale_that_under_or_overflows():
    layer = OpenAIActNorm(2)
    x = np.ones((2, 2))
    for logs in (-300.0, 300.0):
        with pytest.raises(ValueError, match=r"^OpenAIActNorm: scale exp\(3·logs\) .* channels \[1\]"):
            layer.forward({"b": np.zeros(2), "logs": np.array([0.0, logs])}, x)


def test_coupling_shifts_before_it_scales_with_interleaved_channels():
    """``y_b = (x_b + h[0::2])·sigmoid(h[1::2] + 2)``, written out from the conditioner's output."""
    rng = np.random.default_rng(6)
    layer = OpenAICoupling(4, width=3)
    x = rng.normal(size=(2, 4, 3, 3))
    params = randomize_cnn(layer.init(rng, x), rng, 0.7)
    z, logdet, _ = layer.forward(params, x)
    h, _ = layer.net.apply(params["net"], x[:, :2])
    s = 1 / (1 + np.exp(-(h[:, 1::2] + 2)))
    assert np.array_equal(z[:, :2], x[:, :2])
    assert np.allclose(z[:, 2:], (x[:, 2:] + h[:, 0::2]) * s, rtol=1e-14, atol=0)  # s two ways: a few ulps
    assert np.allclose(logdet, np.log(s).sum(axis=(1, 2, 3)), rtol=1e-14)


def test_fresh_couplings_are_the_references_starting_maps():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 4, 2, 2))
    affine, additive = OpenAICoupling(4, width=2), OpenAICoupling(4, "additive", width=2)
    z, logdet, _ = affine.forward(affine.init(rng, x), x)
    s2 = 1 / (1 + np.exp(-2.0))
    assert np.allclose(z[:, 2:], x[:, 2:] * s2, rtol=1e-15) and np.allclose(logdet, 8 * np.log(s2), rtol=1e-15)
    z, logdet, _ = additive.forward(additive.init(rng, x), x)
    assert np.array_equal(z, x) and not logdet.any()


def test_saturated_coupling_log_det_stays_exact_where_log_sigmoid_underflows():
    """At ``h_s + 2 = −200`` ``sigmoid`` underflows in float32 (the reference's ``log(sigmoid)`` is
    −inf); ``log s = −softplus(−u)`` keeps the exact ``u``, and the inverse takes the log-space path."""
    t = OpenAIAffineTransform()
    for dtype in (np.float32, np.float64):
        xb = np.array([[[[0.5]]]], dtype=dtype)
        h = np.array([[[[0.25]], [[-202.0]]]], dtype=dtype)  # shift 0.25, h_s = −202
        yb, ld, _ = t.forward(xb, h)
        assert ld.dtype == dtype and ld[0] == pytest.approx(-200.0, rel=1e-6)
        xb2, ld2, _ = t.inverse(yb, h)
        assert ld2[0] == -ld[0] and np.all(np.isfinite(xb2))
        if yb[0, 0, 0, 0] != 0:  # float64: e^-200 is representable and the round trip holds
            assert xb2[0, 0, 0, 0] == pytest.approx(0.5, rel=1e-12)


def test_split_prior_is_edge_padded():
    rng = np.random.default_rng(8)
    layer = OpenAISplit(4)
    x = rng.normal(size=(2, 4, 3, 3))
    params = randomize_cnn(layer.init(rng, x), rng, 0.6)
    assert params["prior"]["w"].shape == (4, 3, 3, 3)  # 2 kept channels + the edge channel
    p = params["prior"]
    h = edge_conv_literal(x[:, :2], p["w"], p["b"]) * np.exp(3 * p["logs"]).reshape(1, -1, 1, 1)
    z, logdet, _ = layer.forward(params, x)
    assert np.allclose(z[:, 2:], (x[:, 2:] - h[:, 0::2]) / np.exp(h[:, 1::2]), rtol=1e-13, atol=1e-14)
    assert np.allclose(logdet, -h[:, 1::2].sum(axis=(1, 2, 3)), rtol=1e-13)


def test_learned_top_prior_differs_on_the_border_and_ignores_its_zero_inputs():
    """``h = EdgeZeroConv2d(0)``: per channel ``b·exp(3·logs)`` inside, plus the edge taps on the
    border pixels; the weights of the 2C zero input channels get exactly zero gradient, and so does
    the edge channel's centre tap (it never falls on the border)."""
    rng = np.random.default_rng(9)
    layer = OpenAILearnTop(2)
    z = rng.normal(size=(3, 2, 3, 3))
    params = randomize_cnn(layer.init(rng, z), rng, 0.6)
    eps, logdet, cache = layer.forward(params, z)
    p = params
    h = edge_conv_literal(np.zeros((1, 4, 3, 3)), p["w"], p["b"]) * np.exp(3 * p["logs"]).reshape(1, -1, 1, 1)
    mu, logs = h[:, :2], h[:, 2:]
    assert np.allclose(eps, (z - mu) / np.exp(logs), rtol=1e-13, atol=1e-14)
    assert np.allclose(logdet, -logs.sum(), rtol=1e-14)
    inside = h[0, :, 1, 1]
    assert np.allclose(inside, p["b"] * np.exp(3 * p["logs"]), rtol=1e-15)
    assert np.all(np.abs(h[0, :, 0, 0] - inside) > 0)  # corners see 5 edge taps
    _, g = layer.backward(params, cache, rng.normal(size=z.shape), rng.normal(size=3))
    assert not g["w"][:, :4].any() and not g["w"][:, 4, 1, 1].any()
    off_centre = np.delete(g["w"][:, 4].reshape(4, 9), 4, axis=1)
    assert np.all(off_centre != 0)


def test_learned_top_prior_model_log_prob_is_the_gaussian_log_density():
    """Standardising then scoring under N(0, I) is ``log N(z; μ, σ²)``, what the reference's
    ``gaussian_diag(mean, logsd).logp`` computes."""
    rng = np.random.default_rng(10)
    layer = OpenAILearnTop(1)
    z = rng.normal(size=(2, 1, 2, 2))
    params = randomize_cnn(layer.init(rng, z), rng, 0.5)
    model = FlowModel(layer, StandardNormal((1, 2, 2)))
    lp = model.log_prob({"flow": params, "prior": {}}, z)
    h = edge_conv_literal(np.zeros((1, 2, 2, 2)), params["w"], params["b"]) * np.exp(3 * params["logs"]).reshape(1, -1, 1, 1)
    mean, logsd = h[:, :1], h[:, 1:]
    expected = (-0.5 * (np.log(2 * np.pi) + 2 * logsd + (z - mean) ** 2 / np.exp(2 * logsd))).sum(axis=(1, 2, 3))
    assert np.allclose(lp, expected, rtol=1e-14)


# ---------------------------------------------------------------------------------- float64 log-det
def test_invconv_log_det_is_the_float64_value_rounded_once():
    """In float32 the log-det is ``(H·W)·round₃₂(log|det W|₆₄)`` exactly, the gradient's ``W⁻ᵀ``
    ``round₃₂(W₆₄⁻ᵀ)``; in float64 the layer is DenseLinear bit for bit."""
    rng = np.random.default_rng(11)
    c = 12
    layer = OpenAIInvConv(c, spatial=2, seed=3)
    x = rng.normal(size=(2, c, 2, 3)).astype(np.float32)
    w = (layer.init(None, x)["weight"] + 0.3 * rng.normal(size=(c, c))).astype(np.float32)
    _, logdet, cache = layer.forward({"weight": w}, x)
    lad64 = np.linalg.slogdet(w.astype(np.float64))[1]
    assert logdet.dtype == np.float32 and np.all(logdet == np.float32(6) * np.float32(lad64))
    g, gl = rng.normal(size=x.shape).astype(np.float32), np.ones(2, dtype=np.float32)
    _, gp = layer.backward({"weight": w}, cache, np.zeros_like(g), gl)
    inv_t = np.linalg.inv(w.astype(np.float64)).T.astype(np.float32)
    assert np.array_equal(gp["weight"], (np.float32(6) * gl.sum()) * inv_t)
    w64, x64 = w.astype(np.float64), x.astype(np.float64)
    a, b = layer.forward({"weight": w64}, x64), DenseLinear(c, spatial=2).forward({"weight": w64}, x64)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_invconv_computes_its_log_det_and_gradient_from_the_float64_matrix(monkeypatch):
    """Whatever the namespace does with float32 (NumPy's linalg already promotes it to float64,
    CuPy's and torch's run a float32 LU), the layer hands ``slogdet`` and ``solve`` a float64 ``W``."""
    import rawflow.bijectors.linear as linear

    seen = []
    real_logabsdet = linear.logabsdet
    monkeypatch.setattr(linear, "logabsdet", lambda w: seen.append(w.dtype) or real_logabsdet(w))
    layer = OpenAIInvConv(3, spatial=2)
    x = np.random.default_rng(12).normal(size=(2, 3, 2, 2)).astype(np.float32)
    params = layer.init(None, x)
    _, logdet, cache = layer.forward(params, x)
    _, gp = layer.backward(params, cache, np.zeros_like(x), np.ones(2, dtype=np.float32))
    assert seen == [np.float64] and logdet.dtype == gp["weight"].dtype == np.float32
    seen.clear()
    DenseLinear(3, spatial=2).forward(params, x)
    assert seen == [np.float32]  # the plain layer leaves the precision to the namespace


def test_float64_log_det_is_within_half_an_ulp_where_a_float32_lu_is_not():
    """What the float64 log-det changes, measured against the exact ``log|det W|`` of the float32
    matrix (float64 LU, ~1e-15 relative): rounded once, ≤ 0.5 ulp; a float32 LU (LAPACK ``sgetrf``,
    what torch's and CuPy's float32 ``slogdet`` run) errs by far more on some matrices (measured:
    up to 4 ulp at C = 12, 212 ulp at C = 48 — an absolute 2e-4 per position, times H·W)."""
    import scipy.linalg

    rng = np.random.default_rng(12)
    worst64 = worst32 = 0.0
    for c in (12, 48):
        for _ in range(10):
            w = (rng.normal(size=(c, c)) / np.sqrt(c)).astype(np.float32)
            exact = np.linalg.slogdet(w.astype(np.float64))[1]
            ulp = float(np.spacing(np.float32(abs(exact))))
            ld = OpenAIInvConv(c, spatial=2).forward({"weight": w}, np.zeros((1, c, 1, 1), dtype=np.float32))[1][0]
            lu, _ = scipy.linalg.lu_factor(w)
            assert lu.dtype == np.float32
            ld32 = np.log(np.abs(np.diag(lu))).sum(dtype=np.float32)
            worst64 = max(worst64, abs(float(ld) - exact) / ulp)
            worst32 = max(worst32, abs(float(ld32) - exact) / ulp)
    assert worst64 <= 0.5 + 1e-6 and worst32 > 10


def test_glow_openai_builds_the_reference_layers_and_trains_a_step():
    from rawflow.bijectors.permutation import Reverse

    flow = glow(2, 2, 4, (1, 4, 4), variant="openai")
    names = [type(layer).__name__ for level in flow.levels for layer in level.layers]
    assert names == ["Squeeze"] + ["OpenAIActNorm", "OpenAIInvConv", "OpenAICoupling"] * 2 + ["OpenAISplit", "Squeeze"] \
        + ["OpenAIActNorm", "OpenAIInvConv", "OpenAICoupling"] * 2 + ["OpenAILearnTop"]
    assert isinstance(glow(1, 1, 2, (1, 4, 4), variant="openai", permutation="reverse").levels[0].layers[2], Reverse)
    assert not any(isinstance(layer, OpenAILearnTop)
                   for layer in glow(1, 1, 2, (1, 4, 4), variant="openai", learn_top=False).levels[0].layers)
    rng = np.random.default_rng(13)
    x = rng.uniform(size=(8, 1, 4, 4)) - 0.5
    model = FlowModel(flow, StandardNormal((16,)))
    params = model.init(rng, x)
    loss, grads = model.nll_and_grad(params, x)
    assert np.isfinite(loss) and tree.structure(grads) == tree.structure(params)


def test_centering_is_absorbed_by_the_first_actnorm():
    """The reference feeds ``x − 0.5``; after the data-dependent init of the first ActNorm the
    model's log-density of ``x − 0.5`` and of ``x`` agree to round-off (the shift has Jacobian 1)."""
    rng = np.random.default_rng(14)
    x = rng.uniform(size=(16, 1, 4, 4))
    lps = []
    for data in (x, x - 0.5):
        model = FlowModel(glow(2, 2, 4, (1, 4, 4), variant="openai"), StandardNormal((16,)))
        params = model.init(np.random.default_rng(15), data)
        lps.append(model.log_prob(params, data))
    assert np.allclose(lps[0], lps[1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kwargs,match", [
    ({"variant": "tf"}, "variant must be one of 'rawflow', 'openai'"),
    ({"variant": "openai", "scale": "exp"}, "scale map sigmoid"),
])
def test_glow_refuses_bad_variants(kwargs, match):
    with pytest.raises(ValueError, match=match):
        glow(1, 1, 2, (1, 4, 4), **kwargs)


@pytest.mark.parametrize("make", [lambda: OpenAICoupling(1), lambda: OpenAICoupling(4, "exp"),
                                  lambda: OpenAILearnTop(0), lambda: OpenAISplit(1), lambda: OpenAIActNorm(0)])
def test_bad_construction_raises(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_raises_naming_the_layer(kind):
    layer, params, x, _ = _one(kind)
    name = type(layer).__name__
    for run in (layer.forward, layer.inverse):
        with pytest.raises(ValueError, match=f"^{name}: "):
            run(params, x.astype(np.float32))
        with pytest.raises(ValueError, match=f"^{name}: "):
            run(params, np.where(x > 0, np.nan, x))
    bad = tree.map(lambda a: a[..., :1] if a.ndim else a, params)
    with pytest.raises(ValueError, match=f"^{name}: "):
        layer.forward(bad, x)


def _one(kind):
    rng = np.random.default_rng(16)
    make = {"actnorm": lambda: OpenAIActNorm(2, spatial=2), "actnorm-vector": lambda: OpenAIActNorm(3),
            "affine": lambda: OpenAICoupling(2, width=2), "additive": lambda: OpenAICoupling(2, "additive", width=2),
            "invconv": lambda: OpenAIInvConv(2, spatial=2), "split": lambda: OpenAISplit(2),
            "learntop": lambda: OpenAILearnTop(2)}[kind]
    layer = make()
    x = rng.normal(size=(3, 3) if kind == "actnorm-vector" else (2, layer.event_shape[0], 2, 2))
    return layer, layer.init(rng, x), x, rng


def test_openai_glow_refuses_a_conditional_split_prior():
    # openai's split prior is unconditional: a split context would silently be a different model
    from rawflow.models.architectures import glow

    with pytest.raises(ValueError, match=r"^glow: variant 'openai' has the reference's unconditional split prior"):
        glow(1, 2, 2, (1, 4, 4), variant="openai", split_context=3)
