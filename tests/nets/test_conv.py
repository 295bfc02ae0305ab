"""conv2d / conv2d_backward vs a direct loop, finite differences and complex-step derivatives."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import _fd_scalar_grad, rel_err
from rawflow.nets.conv import conv2d, conv2d_backward
from support.image_checks import check_complex_step

# Examples for the costly checks (finite differences): half the profile's, at least 6.
FEW = max(6, settings.default.max_examples // 2)

EPS64 = np.finfo(np.float64).eps


def direct_conv(x, w, b):
    """The definition, one output element at a time (float64 accumulation in the input dtype)."""
    n, c_in, h, wd = x.shape
    c_out, _, k, _ = w.shape
    p = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    y = np.zeros((n, c_out, h, wd), dtype=np.result_type(x, w))
    for i in range(h):
        for j in range(wd):
            window = xp[:, :, i : i + k, j : j + k]  # (N, C_in, k, k)
            y[:, :, i, j] = np.einsum("ncab,ocab->no", window, w)
    return y if b is None else y + b[None, :, None, None]


@st.composite
def conv_cases(draw, max_k=5):
    n = draw(st.integers(1, 2))
    c_in, c_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    k = draw(st.sampled_from([k for k in (1, 3, 5) if k <= max_k]))
    bias = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    x = rng.normal(size=(n, c_in, h, w))
    wt = rng.normal(size=(c_out, c_in, k, k))
    b = rng.normal(size=c_out) if bias else None
    return x, wt, b, rng


def gamma(k, dtype):
    """Higham's γ_K = K·u/(1 − K·u): |fl(Σ_K a_i) − Σ a_i| ≤ γ_K Σ|a_i| for any summation order."""
    u = np.finfo(dtype).eps / 2
    return k * u / (1 - k * u)


def sum_of_abs_terms(x, w, b):
    """``Σ|w·x̃| + |b|`` per output element: the scale of the rounding error of any evaluation order."""
    return direct_conv(np.abs(x), np.abs(w), None if b is None else np.abs(b))


@given(conv_cases(), st.sampled_from([np.float32, np.float64]))
def test_matches_direct_loop(case, dtype):
    x, w, b, _ = case
    x, w = x.astype(dtype), w.astype(dtype)
    b = None if b is None else b.astype(dtype)
    y, _ = conv2d(x, w, b)
    assert y.dtype == dtype and y.shape == (x.shape[0], w.shape[0]) + x.shape[2:]
    assert y.flags.c_contiguous
    ref = direct_conv(x.astype(np.float64), w.astype(np.float64), None if b is None else b.astype(np.float64))
    # im2col+GEMM and the float64 loop each err by ≤ γ_K·Σ|terms| (K = C_in·k² + 1 with the bias).
    k_terms = x.shape[1] * w.shape[2] ** 2 + 1
    bound = (gamma(k_terms, dtype) + gamma(k_terms, np.float64)) * sum_of_abs_terms(x, w, b)
    assert np.all(np.abs(y - ref) <= bound)


@given(conv_cases())
@settings(max_examples=FEW)
def test_gradients_match_finite_differences(case):
    x, w, b, rng = case
    y, cache = conv2d(x, w, b)
    gy = rng.normal(size=y.shape)
    gx, gw, gb = conv2d_backward(cache, gy)
    assert (gb is None) == (b is None)
    objective = lambda: float(np.sum(gy * conv2d(x, w, b)[0]))  # noqa: E731
    x, w = x.copy(), w.copy()
    assert rel_err(gx, _fd_scalar_grad(objective, x)) <= 1e-7
    assert rel_err(gw, _fd_scalar_grad(objective, w)) <= 1e-7
    if b is not None:
        assert rel_err(gb, _fd_scalar_grad(objective, b)) <= 1e-7


@given(conv_cases())
def test_gradients_match_complex_step(case):
    x, w, b, rng = case
    params = {"w": w} if b is None else {"w": w, "b": b}

    def run(p, u):
        y, _ = conv2d(u, p["w"], p.get("b"))
        return y, np.zeros(u.shape[0])

    _, cache = conv2d(x, w, b)

    def vjp(gy, gl):
        gx, gw, gb = conv2d_backward(cache, gy)
        return gx, ({"w": gw} if b is None else {"w": gw, "b": gb})

    check_complex_step(run, vjp, params, x, rng)


@given(conv_cases(max_k=3))
def test_backward_is_exact_transpose(case):
    """⟨gy, conv(x)⟩ = ⟨conv_backward(gy), x⟩ for the bias-free map (a linear map and its VJP)."""
    x, w, _, rng = case
    y, cache = conv2d(x, w)
    gy = rng.normal(size=y.shape)
    gx, gw, gb = conv2d_backward(cache, gy)
    assert gb is None
    lhs, rhs = np.sum(gy * y), np.sum(gx * x)
    scale = np.sum(np.abs(gy) * sum_of_abs_terms(x, w, None))
    assert abs(lhs - rhs) <= 2 * gamma(x.shape[1] * w.shape[2] ** 2 + y.size, np.float64) * scale
    # and w's gradient is the same bilinear form read the other way
    assert abs(np.sum(gw * w) - lhs) <= 2 * gamma(x.shape[1] * w.shape[2] ** 2 + y.size, np.float64) * scale


def test_complex_inputs_are_analytic():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 4, 5)) + 1j * rng.normal(size=(2, 3, 4, 5))
    w = rng.normal(size=(2, 3, 3, 3))
    y, _ = conv2d(x, w)
    np.testing.assert_allclose(y.real, conv2d(x.real, w)[0], rtol=0, atol=1e-13)
    np.testing.assert_allclose(y.imag, conv2d(x.imag, w)[0], rtol=0, atol=1e-13)


def test_one_by_one_kernel_is_a_channel_matmul():
    rng = np.random.default_rng(4)
    x, w, b = rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(5, 3, 1, 1)), rng.normal(size=5)
    y, _ = conv2d(x, w, b)
    ref = np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x) + b[:, None, None]
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-13)


def test_zero_cotangent_gives_zero_gradients():
    rng = np.random.default_rng(5)
    x, w, b = rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 3, 3, 3)), rng.normal(size=2)
    y, cache = conv2d(x, w, b)
    for g in conv2d_backward(cache, np.zeros_like(y)):
        assert not np.any(g)


@pytest.mark.parametrize(
    "x_shape, w_shape, b_shape, match",
    [
        ((2, 3, 4), (2, 3, 3, 3), None, "4-D"),
        ((2, 3, 4, 4), (2, 3, 3), None, "4-D"),
        ((2, 3, 4, 4), (2, 3, 2, 2), None, "odd"),
        ((2, 3, 4, 4), (2, 3, 3, 1), None, "square"),
        ((2, 3, 4, 4), (2, 4, 3, 3), None, "channels"),
        ((2, 3, 4, 4), (2, 3, 3, 3), (3,), "b must"),
    ],
)
def test_bad_shapes_raise(x_shape, w_shape, b_shape, match):
    x, w = np.zeros(x_shape), np.zeros(w_shape)
    b = None if b_shape is None else np.zeros(b_shape)
    with pytest.raises(ValueError, match="conv2d") as info:
        conv2d(x, w, b)
    assert match in str(info.value)


def test_bad_cotangent_shape_raises():
    x, w = np.zeros((1, 2, 3, 3)), np.zeros((2, 2, 3, 3))
    _, cache = conv2d(x, w)
    with pytest.raises(ValueError, match="conv2d: cotangent"):
        conv2d_backward(cache, np.zeros((1, 2, 3, 4)))
