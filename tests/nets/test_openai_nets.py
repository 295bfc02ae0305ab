"""openai/glow's network blocks: edge padding written out literally, the factor-3 norm and its init,
gradients against the complex step and central differences, float32 against float64."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rawflow import tree
from rawflow.nets.conv import conv2d
from rawflow.nets.openai import EdgeConv2d, EdgeZeroConv2d, OpenAIGlowCNN, OpenAINorm, edge_taps
from support.edge_padding import edge_conv_literal
from support.image_checks import randomize_cnn
from test_cnn import cs_check, fd_check

FEW = max(6, settings.default.max_examples // 2)


@st.composite
def edge_convs(draw, zero=False):
    n, c_in, c_out = draw(st.integers(0, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    k = draw(st.sampled_from([1, 3]))
    layer = EdgeZeroConv2d(c_in, c_out, k) if zero else EdgeConv2d(c_in, c_out, k, bias=draw(st.booleans()))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    x = rng.normal(size=(n, c_in, h, w))
    return layer, randomize_cnn(layer.init(rng, x), rng, draw(st.floats(0.3, 1.0))), x, rng


@given(edge_convs())
def test_edge_conv_is_the_padded_frame_with_its_border_channel(case):
    layer, params, x, _ = case
    y, _ = layer.apply(params, x)
    if layer.kernel == 1:  # the reference adds no edge channel to a 1×1 filter
        assert params["w"].shape[1] == layer.in_features
        assert np.array_equal(y, conv2d(x, params["w"], params.get("b"))[0])
        return
    assert params["w"].shape[1] == layer.in_features + 1
    expected = edge_conv_literal(x, params["w"], params.get("b"))
    scale = edge_conv_literal(np.abs(x), np.abs(params["w"]), None if "b" not in params else np.abs(params["b"]))
    # two summation orders of the same terms: ≤ (terms + 2)·eps·Σ|terms| apart
    terms = (layer.in_features + 1) * layer.kernel**2 + 2
    assert np.all(np.abs(y - expected) <= terms * np.finfo(np.float64).eps * scale)


def test_edge_taps_mark_exactly_the_border():
    m = edge_taps(3, 4, 3)
    assert m.shape == (9, 12) and set(np.unique(m)) <= {0.0, 1.0}
    centre = 4  # tap (1, 1): the pixel itself, never on the border
    assert not m[centre].any()
    # the interior pixel (1, 1) and (1, 2) see no border; a corner sees 5 border taps
    per_pixel = m.sum(axis=0).reshape(3, 4)
    assert per_pixel[1, 1] == per_pixel[1, 2] == 0 and per_pixel[0, 0] == 5 and per_pixel[0, 1] == 3
    assert not m.flags.writeable


@given(edge_convs(zero=True))
def test_zero_conv_starts_at_zero_and_scales_by_exp_3_logs(case):
    layer, params, x, rng = case
    fresh = layer.init(rng, x)
    assert all(not a.any() for _, a in tree.leaves(fresh))
    assert not layer.apply(fresh, x)[0].any()
    y, _ = layer.apply(params, x)
    plain = EdgeConv2d(layer.in_features, layer.out_features, layer.kernel, bias=True)
    a, _ = plain.apply({"w": params["w"], "b": params["b"]}, x)
    assert np.array_equal(y, a * np.exp(3.0 * params["logs"]).reshape(1, -1, 1, 1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_norm_init_is_the_reference_formula(dtype):
    """``b = −mean``, ``logs = log(1/(√mean((x + b)²) + 1e-6))/3``; 1e-6 outside the square root."""
    rng = np.random.default_rng(0)
    x = (3 + rng.uniform(0.1, 2, size=(1, 4, 1, 1)) * rng.normal(size=(5, 4, 3, 2))).astype(dtype)
    x[:, 3] = 7.0  # a constant channel: the 1e-6 alone sets the scale
    p = OpenAINorm(4).init(None, x)
    assert p["b"].dtype == p["logs"].dtype == dtype
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=(0, 2, 3))
    std = np.sqrt(((x64 - mean.reshape(1, -1, 1, 1)) ** 2).mean(axis=(0, 2, 3)))
    tol = 64 * float(np.finfo(dtype).eps)
    assert np.allclose(p["b"], -mean, rtol=tol, atol=tol * np.abs(x64).max())
    assert np.allclose(p["logs"][:3], -np.log(std[:3] + 1e-6) / 3, rtol=tol, atol=tol)
    assert p["logs"][3] == pytest.approx(np.log(1e6) / 3, rel=tol)
    y, _ = OpenAINorm(4).apply(p, x)
    y64 = y.astype(np.float64)
    # unit spread up to the 1e-6: std(y) = std/(std + 1e-6)
    assert np.allclose(y64[:, :3].std(axis=(0, 2, 3)), std[:3] / (std[:3] + 1e-6), rtol=1e3 * np.finfo(dtype).eps)


def test_norm_gradient_of_logs_is_three_times_the_log_scale_gradient():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 2, 2))
    norm = OpenAINorm(3)
    p = {"b": rng.normal(size=3), "logs": rng.normal(size=3) * 0.3}
    y, cache = norm.apply(p, x)
    gy = rng.normal(size=y.shape)
    _, gp = norm.backward(p, cache, gy)
    assert np.allclose(gp["logs"], 3 * (gy * y).sum(axis=(0, 2, 3)), rtol=1e-15, atol=0)


@st.composite
def networks(draw, param_scale=(0.3, 1.0)):
    kind = draw(st.sampled_from(["conv", "zero", "norm", "glow"]))
    n, c_in, c_out = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    k = draw(st.sampled_from([1, 3]))
    net = {"conv": lambda: EdgeConv2d(c_in, c_out, k, bias=True), "zero": lambda: EdgeZeroConv2d(c_in, c_out, k),
           "norm": lambda: OpenAINorm(c_in), "glow": lambda: OpenAIGlowCNN(c_in, c_out, draw(st.integers(1, 3)))}[kind]()
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    x = rng.normal(size=(n, c_in, h, w))
    return net, randomize_cnn(net.init(rng, x), rng, draw(st.floats(*param_scale))), x, rng


@given(networks())
def test_gradients_match_complex_step(case):
    cs_check(*case)


@given(networks())
@settings(max_examples=FEW)
def test_gradients_match_finite_differences(case):
    fd_check(*case)


@given(networks())
def test_float32_matches_float64_within_term_sizes(case):
    """Same float32-representable point in both precisions. Every output and gradient entry is a
    sum of products (a convolution's ``≤ 9·(C + 1)`` taps, a norm's ``N·H·W`` positions) through at
    most 3 layers, each term rounded a few times: ``|δ| ≤ K·u·T`` with ``T`` the same computation on
    absolute values (the term size) and ``K`` the terms summed plus 8 roundings per layer (exp: 4)."""
    net, params, x, rng = case
    p32 = tree.map(lambda a: a.astype(np.float32), params)
    x32 = x.astype(np.float32)
    p64, x64 = tree.map(lambda a: a.astype(np.float64), p32), x32.astype(np.float64)
    y32, c32 = net.apply(p32, x32)
    y64, c64 = net.apply(p64, x64)
    gy = rng.normal(size=y64.shape).astype(np.float32)
    gx32, gp32 = net.backward(p32, c32, gy)
    gx64, gp64 = net.backward(p64, c64, gy.astype(np.float64))
    assert y32.dtype == gx32.dtype == np.float32 and all(a.dtype == np.float32 for _, a in tree.leaves(gp32))
    pa = tree.map(np.abs, p64)
    ya, ca = net.apply(pa, np.abs(x64))
    gxa, gpa = net.backward(pa, ca, np.abs(gy.astype(np.float64)))
    depth = 3 if isinstance(net, OpenAIGlowCNN) else 1
    width = getattr(net, "width", 1)
    terms = 9 * (max(net.in_features, width) + 1) + x.shape[0] * x.shape[2] * x.shape[3] + 8
    k = depth * terms * np.finfo(np.float32).eps / 2
    assert np.all(np.abs(y32 - y64) <= k * ya)
    assert np.all(np.abs(gx32 - gx64) <= 2 * k * gxa)
    for path, leaf in tree.leaves(gp64):
        assert np.all(np.abs(tree.get(gp32, path) - leaf) <= 2 * k * tree.get(gpa, path)), path


def test_glow_network_layers_and_parameter_shapes():
    net = OpenAIGlowCNN(2, 4, 5)
    x = np.random.default_rng(2).normal(size=(3, 2, 4, 4))
    p = net.init(np.random.default_rng(3), x)
    assert tree.structure(p) == {"conv1/w": (5, 3, 3, 3), "norm1/b": (5,), "norm1/logs": (5,),
                                 "conv2/w": (5, 5, 1, 1), "norm2/b": (5,), "norm2/logs": (5,),
                                 "out/w": (4, 6, 3, 3), "out/b": (4,), "out/logs": (4,)}
    assert not net.apply(p, x)[0].any()  # the zero conv ends it: a fresh coupling's h is 0


@pytest.mark.parametrize("make", [lambda: EdgeConv2d(0, 2), lambda: EdgeConv2d(2, 2, 2),
                                  lambda: EdgeConv2d(2, 2, init="torch"), lambda: OpenAINorm(0)])
def test_bad_construction_raises(make):
    with pytest.raises(ValueError):
        make()


def test_norm_init_refuses_an_empty_batch():
    with pytest.raises(ValueError, match="^OpenAINorm: .*non-empty"):
        OpenAINorm(2).init(None, np.zeros((0, 2, 3, 3)))
