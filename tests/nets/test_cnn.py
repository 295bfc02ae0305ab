"""Convolutional conditioners: init, gradients (finite differences and complex step), protocol."""


import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from harness import _fd_scalar_grad, randomize, rel_err
from rawflow import tree
from rawflow.nets.cnn import ChannelNorm, Conv2d, GlowCNN, ResNetCNN, ZeroConv2d
from support.image_checks import (
    assert_within,
    check_complex_step,
    fd_resolvable,
    float32_and_float64,
    net_error_bounds,
    randomize_cnn,
)

# Examples for the costly checks (finite differences): half the profile's, at least 6.
FEW = max(6, settings.default.max_examples // 2)


@st.composite
def nets(draw, param_scale=(0.3, 1.0)):
    kind = draw(st.sampled_from(["glow", "resnet"]))
    n = draw(st.integers(1, 2))
    c_in, c_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    width = draw(st.integers(1, 4))
    kernel = draw(st.sampled_from([1, 3]))
    if kind == "glow":
        net = GlowCNN(c_in, c_out, width, kernel=kernel)
    else:
        net = ResNetCNN(c_in, c_out, width, blocks=draw(st.integers(0, 2)), kernel=kernel)
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    x = rng.normal(size=(n, c_in, h, w))
    params = randomize_cnn(net.init(rng, x), rng, draw(st.floats(*param_scale)))
    return net, params, x, rng


def fd_check(net, params, x, rng, rtol=1e-7) -> dict:
    """VJP of ``apply`` vs central differences of ``Σ gy·y`` (input and every parameter)."""
    y, cache = net.apply(params, x)
    gy = rng.normal(size=y.shape)
    gx, gparams = net.backward(params, cache, gy)
    assert tree.structure(gparams) == tree.structure(params)
    x = x.copy()
    params = tree.map(lambda a: a.copy(), params)
    objective = lambda: float(np.sum(gy * net.apply(params, x)[0]))  # noqa: E731
    assume(fd_resolvable([gx] + [a for _, a in tree.leaves(gparams)], float(np.sum(np.abs(gy * y)))))
    errors = {"input": rel_err(gx, _fd_scalar_grad(objective, x))}
    for path, leaf in tree.leaves(params):
        errors[path] = rel_err(tree.get(gparams, path), _fd_scalar_grad(objective, leaf))
    bad = {k: v for k, v in errors.items() if not v <= rtol}
    assert not bad, f"{type(net).__name__}: gradient errors above {rtol}: {bad}"
    return errors


def cs_check(net, params, x, rng, rtol=1e-13) -> dict:
    _, cache = net.apply(params, x)
    return check_complex_step(
        lambda p, u: (net.apply(p, u)[0], np.zeros(u.shape[0])),
        lambda gy, gl: net.backward(params, cache, gy),
        params, x, rng, rtol,
    )


@given(nets())
@settings(max_examples=FEW)
def test_gradients_match_finite_differences(case):
    fd_check(*case)


@given(nets())
def test_float32_matches_float64_within_rounding_bounds(case):
    net, params, x, rng = case

    def run(p, u):
        y, cache = net.apply(p, u)
        return y, np.zeros(u.shape[0], dtype=u.dtype), cache

    r32, r64, (p64, x64, g64, _, _) = float32_and_float64(
        run, lambda p, c, g, gl: net.backward(p, c, g), params, x, rng
    )
    dy, dgx, dgp = net_error_bounds(net, p64, x64, g64)
    assert_within(r32[0], r64[0], dy, "output")
    assert_within(r32[2], r64[2], dgx, "input gradient")
    for path, leaf in tree.leaves(r64[3]):
        assert_within(tree.get(r32[3], path), leaf, tree.get(dgp, path), path)


@given(nets())
def test_gradients_match_complex_step(case):
    cs_check(*case)


@given(nets())
def test_zero_cotangent_and_linearity(case):
    net, params, x, rng = case
    y, cache = net.apply(params, x)
    gx, gp = net.backward(params, cache, np.zeros_like(y))
    assert not np.any(gx) and not any(np.any(a) for _, a in tree.leaves(gp))
    g1, g2 = rng.normal(size=y.shape), rng.normal(size=y.shape)
    gx1, gp1 = net.backward(params, cache, g1)
    gx2, gp2 = net.backward(params, cache, g2)
    gx12, gp12 = net.backward(params, cache, 0.75 * g1 - 1.5 * g2)
    for v12, v1, v2 in [(gx12, gx1, gx2)] + [
        (a, tree.get(gp1, p), tree.get(gp2, p)) for p, a in tree.leaves(gp12)
    ]:
        budget = 64 * np.finfo(float).eps * np.max(np.abs(0.75 * v1) + np.abs(1.5 * v2), initial=0.0)
        assert np.max(np.abs(v12 - (0.75 * v1 - 1.5 * v2)), initial=0.0) <= budget


@given(nets())
@settings(max_examples=FEW)
def test_batch_equals_samples_stacked(case):
    net, params, x, _ = case
    y, _ = net.apply(params, x)
    stacked = np.concatenate([net.apply(params, x[i : i + 1])[0] for i in range(x.shape[0])])
    # GEMMs of different widths may block their sums differently; each output of the 5-layer net
    # then differs by round-off of its sums only (relative to the output scale).
    assert rel_err(stacked, y) <= 1e-12


@pytest.mark.parametrize("make", [lambda: GlowCNN(3, 4, 5), lambda: ResNetCNN(3, 4, 5, blocks=2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fresh_network_outputs_exact_zeros_in_dtype(make, dtype):
    rng = np.random.default_rng(0)
    net = make()
    x = rng.normal(size=(2, 3, 4, 4)).astype(dtype)
    params = net.init(rng, x)
    assert all(a.dtype == dtype for _, a in tree.leaves(params))
    y, _ = net.apply(params, x)
    assert y.dtype == dtype and y.shape == (2, 4, 4, 4) and not np.any(y)


def test_glow_norms_are_data_initialised():
    """Each norm sees zero mean / unit variance per channel on the init batch (Glow's ActNorm init)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 4, 4)) * 5 + 2
    net = GlowCNN(3, 2, 6)
    params = net.init(rng, x)
    h = x
    seen = 0
    for name, layer in net.layers:
        std_in = h.std(axis=(0, 2, 3))
        h = layer.apply(params.get(name), h)[0]
        if isinstance(layer, ChannelNorm):
            np.testing.assert_allclose(h.mean(axis=(0, 2, 3)), 0, atol=1e-14)
            # Glow's scale is 1/(std + 1e-6), so the output std is std/(std + 1e-6), not exactly 1.
            np.testing.assert_allclose(h.std(axis=(0, 2, 3)), std_in / (std_in + 1e-6), rtol=1e-13)
            seen += 1
    assert seen == 2
    assert set(params) == {"conv1", "norm1", "conv2", "norm2", "out"}
    assert "b" not in params["conv1"] and "b" not in params["conv2"]


def test_zero_conv_logscale_factor():
    rng = np.random.default_rng(2)
    layer = ZeroConv2d(2, 3, logscale_factor=3.0)
    x = rng.normal(size=(1, 2, 3, 3))
    p = randomize(layer.init(rng, x), rng, 0.5)
    y, _ = layer.apply(p, x)
    ref, _ = Conv2d(2, 3).apply({"w": p["w"], "b": p["b"]}, x)
    np.testing.assert_allclose(y, ref * np.exp(3 * p["logs"])[None, :, None, None], rtol=1e-14)


def test_complex_step_through_data_initialised_norm():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 2, 3, 3))
    net = ResNetCNN(2, 2, 3, blocks=1)
    params = randomize_cnn(net.init(rng, x), rng, 0.8)
    cs_check(net, params, x, rng)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: GlowCNN(0, 2), "GlowCNN"),
        (lambda: GlowCNN(2, 2, kernel=2), "GlowCNN: kernel"),
        (lambda: ResNetCNN(2, 2, blocks=-1), "ResNetCNN: blocks"),
        (lambda: Conv2d(2, 2, init="xavier"), "Conv2d: unknown init"),
        (lambda: ZeroConv2d(2, 2, kernel=4), "ZeroConv2d: kernel"),
    ],
)
def test_bad_construction_raises(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("net", [GlowCNN(3, 2, 4), ResNetCNN(3, 2, 4)])
def test_wrong_input_channels_raise(net):
    rng = np.random.default_rng(0)
    params = net.init(rng, rng.normal(size=(1, 3, 2, 2)))
    with pytest.raises(ValueError, match=type(net).__name__):
        net.apply(params, rng.normal(size=(1, 2, 2, 2)))
    with pytest.raises(ValueError, match=type(net).__name__):
        net.init(rng, rng.normal(size=(1, 3, 2)))


# ------------------------------------------------------------------ channel-major fast path
def _bits(a):
    a = np.ascontiguousarray(a)
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


def layer_by_layer(net, params, x, gy):
    """The network evaluated one layer at a time through each layer's own NCHW protocol (no
    fusion of norm and ReLU, no in-place work): ``(y, gx, gparams)``."""
    caches, h = [], x
    for name, layer in net.layers:
        h, cache = layer.apply(params.get(name), h)
        caches.append(cache)
    g, gparams = gy, {}
    for (name, layer), cache in zip(reversed(net.layers), reversed(caches)):
        g, gp = layer.backward(params.get(name), cache, g)
        if gp is not None:
            gparams[name] = gp
    return h, g, gparams


@pytest.mark.parametrize("make", [lambda: GlowCNN(3, 4, 6), lambda: GlowCNN(6, 2, 5, kernel=1),
                                  lambda: ResNetCNN(3, 4, 5, blocks=2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_channel_major_path_equals_layer_by_layer(make, dtype):
    """The fused, in-place network pass against its layers run one by one: the same output and
    input gradient bit for bit, the parameter gradients to round-off (the fused norm's ``Σ g⊙r``
    equals ``Σ g⊙y`` term by term), inputs and cotangents untouched, the cache reusable, the
    no-cache output identical."""
    rng = np.random.default_rng(4)
    net = make()
    x = rng.normal(size=(2, net.in_features, 5, 4)).astype(dtype)
    params = tree.map(lambda a: a.astype(dtype), randomize_cnn(net.init(rng, x), rng, 0.7))
    if isinstance(net, ResNetCNN):  # its blocks are nested sequences: compare the whole net only
        y_ref = None
    else:
        gy0 = rng.normal(size=(2, net.out_features, 5, 4)).astype(dtype)
        y_ref, gx_ref, gp_ref = layer_by_layer(net, params, x, gy0)
    keep_x = x.copy()
    y, cache = net.apply(params, x)
    gy = rng.normal(size=y.shape).astype(dtype) if y_ref is None else gy0
    keep_gy = gy.copy()
    gx, gparams = net.backward(params, cache, gy)
    gx2, gparams2 = net.backward(params, cache, gy)
    assert np.array_equal(_bits(net.apply_no_cache(params, x)), _bits(y))
    assert np.array_equal(x, keep_x) and np.array_equal(gy, keep_gy)
    assert np.array_equal(gx, gx2)
    for path, leaf in tree.leaves(gparams):
        assert np.array_equal(leaf, tree.get(gparams2, path))
    if y_ref is not None:
        assert np.array_equal(_bits(y), _bits(y_ref))
        assert np.array_equal(_bits(gx), _bits(gx_ref))
        # parameter gradients are sums over positions; the layer-by-layer run hands each layer
        # NCHW-strided arrays, so NumPy visits (and rounds) those sums in another order
        for path, leaf in tree.leaves(gp_ref):
            assert rel_err(tree.get(gparams, path), leaf) <= 64 * np.finfo(dtype).eps, path


@pytest.mark.parametrize("make", [lambda: ChannelNorm(3), lambda: ZeroConv2d(3, 2), lambda: Conv2d(3, 5, 3)])
def test_single_layers_no_cache_and_untouched_inputs(make):
    rng = np.random.default_rng(5)
    layer = make()
    x = rng.normal(size=(2, 3, 4, 3))
    p = randomize(layer.init(rng, x), rng, 0.5)
    keep = x.copy()
    y, cache = layer.apply(p, x)
    assert np.array_equal(_bits(layer.apply_no_cache(p, x)), _bits(y)) and np.array_equal(x, keep)
    gy = rng.normal(size=y.shape)
    a, b = layer.backward(p, cache, gy), layer.backward(p, cache, gy)
    assert np.array_equal(a[0], b[0])
