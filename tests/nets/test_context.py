"""Networks that take a context: LinearZeros (openai's linear_zeros), ConcatContext, ContextGlowCNN."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rawflow import tree
from rawflow.nets.cnn import GlowCNN
from rawflow.nets.context import ConcatContext, ContextGlowCNN, LinearZeros
from rawflow.nets.conv import conv2d
from rawflow.nets.mlp import MLP
from support.image_checks import check_complex_step, randomize_cnn


def net_vjp_check(net, params, x, c, rng):
    """Complex step on the input, the context and every parameter of ``net.apply(params, x, c)``."""
    k = c.shape[1]

    def run(p, xc):
        x_, c_ = xc[:, :-k].reshape(x.shape), xc[:, -k:]
        y, _ = net.apply(p, x_, c_)
        return y, np.zeros(x.shape[0], dtype=y.dtype)

    y, cache = net.apply(params, x, c)

    def vjp(g, gl):
        gx, gp, gc = net.backward(params, cache, g)
        return np.concatenate([gx.reshape(x.shape[0], -1), gc], axis=1), gp

    xc = np.concatenate([x.reshape(x.shape[0], -1), c], axis=1)
    return check_complex_step(run, vjp, params, xc, rng)


def test_linear_zeros_is_openai_linear_zeros_and_starts_at_zero():
    rng = np.random.default_rng(0)
    net = LinearZeros(3, 4)
    x = rng.normal(size=(5, 3))
    params = net.init(rng, x)
    assert not np.any(net.apply(params, x)[0])
    params = tree.map(lambda a: rng.normal(size=a.shape), params)
    y, cache = net.apply(params, x)
    assert np.allclose(y, (x @ params["w"].T + params["b"]) * np.exp(3 * params["logs"]), rtol=1e-15, atol=0)

    def run(p, u):
        return net.apply(p, u)[0], np.zeros(u.shape[0], dtype=u.dtype)

    check_complex_step(run, lambda gy, gl: net.backward(params, cache, gy), params, x, rng)


@given(st.integers(0, 2**31), st.integers(1, 3), st.sampled_from(["vector", "image"]))
def test_concat_context_vjp_includes_the_context(seed, k, kind):
    rng = np.random.default_rng(seed)
    if kind == "vector":
        net = ConcatContext(MLP(2 + k, 3, hidden=(4,), activation="tanh"), k)
        x = rng.normal(size=(3, 2))
        params = tree.map(lambda a: rng.normal(scale=0.5, size=a.shape), net.init(rng, x, rng.normal(size=(3, k))))
    else:
        net = ConcatContext(GlowCNN(2 + k, 3, 3), k)
        x = rng.normal(size=(2, 2, 3, 2))
        params = randomize_cnn(net.init(rng, x, rng.normal(size=(2, k))), rng, 0.5)
    c = rng.normal(size=(x.shape[0], k))
    net_vjp_check(net, params, x, c, rng)


@given(st.integers(0, 2**31), st.integers(1, 3))
def test_context_glow_cnn_vjp_includes_the_context(seed, k):
    rng = np.random.default_rng(seed)
    net = ContextGlowCNN(2, 4, 3, k)
    x, c = rng.normal(size=(2, 2, 3, 3)), rng.normal(size=(2, k))
    params = randomize_cnn(net.init(rng, x, c), rng, 0.5)
    params["context"]["w"] = rng.normal(size=(3, k))
    net_vjp_check(net, params, x, c, rng)


def test_adding_after_the_first_convolution_equals_constant_channels_away_from_the_border():
    """The module doc's claim: a 3×3 convolution of K constant context channels (zero padding) is the
    bias ``c·Vᵀ`` with ``V`` the kernel sums, at every pixel whose window lies inside the image."""
    rng = np.random.default_rng(1)
    k, width = 2, 4
    x, c = rng.normal(size=(2, 3, 5, 4)), rng.normal(size=(2, k))
    w = rng.normal(size=(width, 3 + k, 3, 3))
    channels = np.concatenate([x, np.broadcast_to(c[:, :, None, None], (2, k, 5, 4))], axis=1)
    concat = conv2d(channels, w, None)[0]
    add = ContextGlowCNN(3, 2, width, k)
    params = {"conv1": {"w": w[:, :3]}, "context": {"w": w[:, 3:].sum(axis=(2, 3))}}
    first, _ = add._first(params, x, c)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert np.allclose(first[inner], concat[inner], rtol=0, atol=1e-13)
    assert not np.allclose(first[:, :, 0], concat[:, :, 0], rtol=0, atol=1e-3)  # the border differs


def test_wrappers_report_bad_sizes():
    with pytest.raises(ValueError, match="ConcatContext: the network takes 2 inputs, no room"):
        ConcatContext(MLP(2, 3), 2)
    with pytest.raises(ValueError, match="LinearZeros: sizes must be positive integers"):
        LinearZeros(0, 3)
    with pytest.raises(ValueError, match=r"ContextGlowCNN: input must be \(N, 2, H, W\)"):
        net = ContextGlowCNN(2, 2, 3, 1)
        net.apply({}, np.zeros((1, 3, 2, 2)), np.zeros((1, 1)))
