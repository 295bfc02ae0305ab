"""Conditional couplings (a context reaches the conditioner): the bijector contract with a context.

Every exactness check runs through ``ContextAsInput`` (the bijection ``[x | c] ↦ [f(x; c) | c]``), so
the context's cotangent is checked against the complex step like the input's: ``check_bijector``
on Hypothesis-drawn layers (gradients of input, context and every parameter in both directions,
the log-det against ``slogdet`` of the Jacobian, round trips, exact log-det cancellation, structure,
batch = stacked samples, float32 against float64 with term-size bars), plus the harness's
finite-difference oracles for the vector layers.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import check_gradients, check_logdet, check_roundtrip, check_structure, randomize, rel_err
from rawflow import tree
from rawflow.bijectors.chain import Chain
from rawflow.bijectors.conditional import ContextAsInput
from rawflow.bijectors.conditional_coupling import (ConditionalAdditiveCoupling, ConditionalAffineCoupling,
                                                    ConditionalChannelCoupling)
from rawflow.bijectors.coupling import AffineCoupling
from rawflow.bijectors.image_coupling import ChannelCoupling
from rawflow.check import check_bijector
from rawflow.check.registry import SATURATED_H
from support.image_checks import randomize_cnn

FEW = max(6, settings.default.max_examples // 2)


def rows(x, c):
    return np.concatenate([x.reshape(x.shape[0], -1), c], axis=1)


@st.composite
def vector_cases(draw):
    n, d, k = draw(st.integers(1, 3)), draw(st.integers(2, 5)), draw(st.integers(1, 3))
    hidden = tuple(draw(st.lists(st.integers(1, 5), min_size=0, max_size=2)))
    activation = draw(st.sampled_from(["relu", "tanh", "leaky_relu"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    kw = dict(hidden=hidden, activation=activation, flip=draw(st.booleans()))
    if draw(st.booleans()):
        layer = ConditionalAffineCoupling(d, k, scale=draw(st.sampled_from(["exp", "bounded", "sigmoid"])), **kw)
    else:
        layer = ConditionalAdditiveCoupling(d, k, **kw)
    x, c = rng.normal(size=(n, d)), rng.normal(size=(n, k))
    params = randomize(layer.init(rng, x, context=c), rng, draw(st.floats(0.05, 0.8)))
    return layer, params, x, c, rng


@st.composite
def image_cases(draw):
    n, ch, k = draw(st.integers(1, 2)), draw(st.integers(2, 3)), draw(st.integers(1, 2))
    h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    mode = draw(st.sampled_from(["add", "concat"]))
    conditioner = draw(st.sampled_from(["glow", "resnet"])) if mode == "concat" else "glow"
    transform = draw(st.sampled_from(["affine", "additive"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    layer = ConditionalChannelCoupling(ch, k, transform, scale=draw(st.sampled_from(["exp", "sigmoid"])), width=2,
                                       flip=draw(st.booleans()), conditioner=conditioner, context_mode=mode)
    x, c = rng.normal(size=(n, ch, h, w)), rng.normal(size=(n, k))
    params = randomize_cnn(layer.init(rng, x, context=c), rng, draw(st.floats(0.05, 0.5)))
    return layer, params, x, c, rng


def joint(layer, x):
    return ContextAsInput(layer, x.shape[1:])


@settings(max_examples=FEW)
@given(vector_cases())
def test_vector_couplings_pass_check_bijector(case):
    layer, params, x, c, _ = case
    report = check_bijector(joint(layer, x), params, rows(x, c), second_order=False, fd_columns=16)
    assert report, report.failure_report()


@settings(max_examples=FEW)
@given(image_cases())
def test_image_couplings_pass_check_bijector(case):
    layer, params, x, c, _ = case
    report = check_bijector(joint(layer, x), params, rows(x, c), second_order=False, fd_columns=8)
    assert report, report.failure_report()


@given(vector_cases())
def test_vector_gradients_match_finite_differences_and_complex_step(case):
    layer, params, x, c, rng = case
    j = joint(layer, x)
    w = rows(x, c)
    errors = check_gradients(j, params, w, rng, "forward")
    assert "input" in errors and "logdet->input" in errors  # the context columns are part of "input"
    z, _, _ = j.forward(params, w)
    check_gradients(j, params, z, rng, "inverse")


@given(vector_cases())
def test_vector_logdet_roundtrip_and_structure(case):
    layer, params, x, c, rng = case
    j, w = joint(layer, x), rows(x, c)
    check_logdet(j, params, w)
    kappa = 1.0
    tcache = layer.forward(params, x, context=c)[2][1]
    if tcache is not None:
        kappa = max(1.0, float(np.max(1 / tcache[1])))
    check_roundtrip(j, params, w, bound_ulps=6, kappa=kappa)
    check_structure(j, params, w, rng)


@pytest.mark.parametrize("scale", ["exp", "sigmoid", "bounded"])
def test_saturated_conditional_coupling(scale):
    """Scale outputs in each map's saturated range for every sample (tiny and huge scales): the
    checks hold with the conditioning-aware round-trip bounds."""
    rng = np.random.default_rng({"exp": 1, "sigmoid": 2, "bounded": 3}[scale])
    layer = ConditionalAffineCoupling(4, 2, scale=scale, hidden=(4,), activation="tanh")
    x, c = rng.normal(size=(3, 4)), rng.normal(size=(3, 2))
    params = randomize(layer.init(rng, x, context=c), rng, 0.5)
    last = params["net"]["1"]
    lo, hi = SATURATED_H[scale]
    signs = np.where(np.arange(2) % 2 == 0, -1.0, 1.0)
    last["w"] = last["w"] * 0.1
    last["b"] = np.concatenate([signs * rng.uniform(lo, hi, size=2) - (2.0 if scale == "sigmoid" else 0.0),
                                last["b"][2:]])
    log_s = layer.transform.scale(layer.net.apply(params["net"], x[:, :2], c)[0][:, :2])[0]
    assert np.all(np.abs(log_s) > {"exp": 3.9, "sigmoid": 1e-6, "bounded": 1.9}[scale])
    report = check_bijector(joint(layer, x), params, rows(x, c), second_order=False, fd_columns=16)
    assert report, report.failure_report()


# ---------------------------------------------------------------------------- the API
def test_fresh_conditional_coupling_is_the_identity_for_every_context():
    rng = np.random.default_rng(0)
    x, c = rng.normal(size=(5, 6)), rng.normal(size=(5, 3)) * 10
    layer = ConditionalAffineCoupling(6, 3)
    z, logdet, _ = layer.forward(layer.init(rng, x, context=c), x, context=c)
    assert np.array_equal(z, x) and not np.any(logdet)


def test_add_mode_starts_as_the_unconditional_channel_coupling():
    """Zero context weights: same draws, same data-dependent init, same outputs as ChannelCoupling."""
    x = np.random.default_rng(1).normal(size=(4, 4, 3, 3))
    c = np.random.default_rng(2).normal(size=(4, 2))
    cond = ConditionalChannelCoupling(4, 2, scale="sigmoid", width=5)
    plain = ChannelCoupling(4, scale="sigmoid", width=5)
    pc, pp = cond.init(np.random.default_rng(3), x, context=c), plain.init(np.random.default_rng(3), x)
    assert not np.any(pc["net"].pop("context")["w"])
    assert tree.structure(pc) == tree.structure(pp)
    for path, leaf in tree.leaves(pp):
        assert np.array_equal(tree.get(pc, path), leaf), path
    pc["net"]["context"] = {"w": np.zeros((5, 2))}
    moved = tree.map(lambda a: a + 0.1, pp)
    moved_c = dict(moved, net=dict(moved["net"], context={"w": np.zeros((5, 2))}))
    assert np.array_equal(cond.forward(moved_c, x, context=c)[0], plain.forward(moved, x)[0])


def test_vjps_return_the_context_cotangent_and_exact_zeros_for_an_empty_batch():
    rng = np.random.default_rng(4)
    layer = ConditionalAffineCoupling(4, 3, hidden=(4,))
    x, c = rng.normal(size=(3, 4)), rng.normal(size=(3, 3))
    params = randomize(layer.init(rng, x, context=c), rng, 0.5)
    z, ld, cache = layer.forward(params, x, context=c)
    gx, gp, gc = layer.backward(params, cache, rng.normal(size=z.shape), rng.normal(size=3))
    assert gc.shape == (3, 3) and np.any(gc)
    _, _, cache_i = layer.inverse(params, z, context=c)
    out = layer.inverse_backward(params, cache_i, rng.normal(size=x.shape), rng.normal(size=3))
    assert len(out) == 3 and out[2].shape == (3, 3)
    e, ec = x[:0], c[:0]
    z0, ld0, cache0 = layer.forward(params, e, context=ec)
    gx0, gp0, gc0 = layer.backward(params, cache0, z0, ld0)
    assert z0.shape == (0, 4) and gc0.shape == (0, 3) and gx0.shape == (0, 4)
    assert all(not np.any(a) for _, a in tree.leaves(gp0))


@pytest.mark.parametrize("bad, message", [
    (None, "is conditional and needs context="),
    (np.zeros((3, 2)), "context has size 2 on axis 1, expected 3"),
    (np.zeros((2, 3)), "context has 2 rows but the input has 3"),
    (np.zeros((3, 3), dtype=np.float32), "context has dtype float32 but the input has dtype float64"),
    (np.full((3, 3), np.nan), "context contains NaN or Inf"),
    (np.zeros((3, 3), dtype=np.int64), "context must be a floating-point array"),
    ([[0.0] * 3] * 3, "context must be an array, got list"),
    (np.zeros(3), r"context must have 2 dimensions \(N, 3\)"),
])
def test_bad_contexts_are_one_line_errors_naming_the_layer(bad, message):
    rng = np.random.default_rng(5)
    layer = ConditionalAffineCoupling(4, 3, hidden=(4,))
    x = rng.normal(size=(3, 4))
    params = layer.init(rng, x, context=np.zeros((3, 3)))
    for call in (lambda: layer.forward(params, x, context=bad), lambda: layer.inverse(params, x, context=bad),
                 lambda: layer.init(rng, x, context=bad)):
        with pytest.raises(ValueError, match="ConditionalAffineCoupling: " + message):
            call()


def test_an_unconditional_layer_refuses_a_context_and_keeps_its_two_tuple():
    rng = np.random.default_rng(6)
    layer = AffineCoupling(4, hidden=(4,))
    x = rng.normal(size=(3, 4))
    params = layer.init(rng, x)
    with pytest.raises(ValueError, match="AffineCoupling: takes no context"):
        layer.forward(params, x, context=np.zeros((3, 2)))
    z, ld, cache = layer.forward(params, x)
    assert len(layer.backward(params, cache, z, ld)) == 2


def test_constructor_errors():
    with pytest.raises(ValueError, match="ConditionalAffineCoupling: context must be a positive integer"):
        ConditionalAffineCoupling(4, 0)
    with pytest.raises(ValueError, match="context_mode must be 'add' or 'concat'"):
        ConditionalChannelCoupling(4, 2, context_mode="film")
    with pytest.raises(ValueError, match="use conditioner='glow' or context_mode='concat'"):
        ConditionalChannelCoupling(4, 2, conditioner="resnet")
    with pytest.raises(ValueError, match="Chain: its conditional layers take contexts of different shapes"):
        Chain([ConditionalAffineCoupling(4, 2), ConditionalAffineCoupling(4, 3)])


@pytest.mark.parametrize("reconstruct", [False, True])
def test_chain_hands_the_context_to_its_conditional_layers_and_sums_their_cotangents(reconstruct):
    rng = np.random.default_rng(7)
    layers = [ConditionalAffineCoupling(4, 2, hidden=(4,)), AffineCoupling(4, hidden=(4,), flip=True),
              ConditionalAdditiveCoupling(4, 2, hidden=(3,), activation="tanh")]
    chain = Chain(layers, reconstruct=reconstruct)
    assert chain.context_shape == (2,)
    x, c = rng.normal(size=(3, 4)), rng.normal(size=(3, 2))
    params = randomize(chain.init(rng, x, context=c), rng, 0.4)
    z, ld, cache = chain.forward(params, x, context=c)
    # by hand, layer by layer
    u, total, caches = x, 0, []
    for i, layer in enumerate(layers):
        kw = {"context": c} if layer.context_shape else {}
        u, l_i, ci = layer.forward(params[str(i)], u, **kw)
        total, caches = total + l_i, caches + [ci]
    assert np.array_equal(u, z) and np.array_equal(total, ld)
    g, gl = rng.normal(size=z.shape), rng.normal(size=3)
    gx, gp, gc = chain.backward(params, cache, g, gl)
    gsum = 0
    for i in reversed(range(3)):
        out = layers[i].backward(params[str(i)], caches[i], g, gl)
        g = out[0]
        for path, leaf in tree.leaves(out[1]):
            assert rel_err(tree.get(gp[str(i)], path), leaf) <= (1e-13 if reconstruct else 0), path
        if len(out) == 3:
            gsum = gsum + out[2]
    assert rel_err(gx, g) <= (1e-13 if reconstruct else 0)
    assert rel_err(gc, gsum) <= (1e-13 if reconstruct else 0)
    xb, ldi, cache_i = chain.inverse(params, z, context=c)
    assert rel_err(xb, x) <= 1e-14
    assert len(chain.inverse_backward(params, cache_i, xb, ldi)) == 3
    with pytest.raises(ValueError, match="Chain: is conditional and needs context="):
        chain.forward(params, x)


def test_conditional_coupling_under_a_kernel_backend_matches_the_reference():
    pytest.importorskip("numba")
    rng = np.random.default_rng(8)
    ref = ConditionalAffineCoupling(4, 2, hidden=(4,), scale="sigmoid")
    fast = ConditionalAffineCoupling(4, 2, hidden=(4,), scale="sigmoid", backend="numba")
    x, c = rng.normal(size=(6, 4)), rng.normal(size=(6, 2))
    params = randomize(ref.init(rng, x, context=c), rng, 0.5)
    z, ld, cache = ref.forward(params, x, context=c)
    zf, ldf, cachef = fast.forward(params, x, context=c)
    assert rel_err(zf, z) <= 1e-15 and rel_err(ldf, ld) <= 1e-14
    g = rng.normal(size=z.shape)
    for a, b in zip(ref.backward(params, cache, g, ld)[::2], fast.backward(params, cachef, g, ld)[::2]):
        assert rel_err(b, a) <= 1e-13


@settings(max_examples=4)
@given(st.data())
def test_the_users_strategy_draws_checkable_conditional_layers(data):
    from rawflow import testing

    case = data.draw(testing.layer_cases(["conditional"]))
    assert isinstance(case.layer, ContextAsInput)
    report = check_bijector(case.layer, case.params, case.x, second_order=False, fd_columns=8)
    assert report, report.failure_report()
