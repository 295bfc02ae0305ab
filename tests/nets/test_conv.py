"""conv2d / conv2d_backward vs a direct loop, finite differences and complex-step derivatives."""

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import _fd_scalar_grad, rel_err
import rawflow.nets.conv as conv_module
from rawflow.nets.conv import conv2d, conv2d_backward, shifted_copies, shifted_sum
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


# ------------------------------------------------------------------ the shifted copies and sums
def padded_shifts(a, k, flip):
    """``(k², C, N, H, W)``: tap ``t = (i, j)`` of ``a`` read through a zero-padded copy (the definition)."""
    c, n, h, v = a.shape
    p = k // 2
    ap = np.zeros((c, n, h + 2 * p, v + 2 * p), dtype=a.dtype)
    ap[:, :, p : p + h, p : p + v] = a
    out = np.zeros((k * k, c, n, h, v), dtype=a.dtype)
    for i in range(k):
        for j in range(k):
            ii, jj = (2 * p - i, 2 * p - j) if flip else (i, j)
            out[i * k + j] = ap[:, :, ii : ii + h, jj : jj + v]
    return out


@st.composite
def shift_cases(draw):
    shape = (draw(st.integers(1, 3)), draw(st.integers(0, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    k = draw(st.sampled_from([1, 3, 5, 7]))  # 7 > H or W: whole taps fall outside
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    return rng.normal(size=shape), k, draw(st.booleans()), rng


#: both ways to make a shifted copy (contiguous slabs / one gather; in use they are chosen by size)
PATHS = pytest.mark.parametrize("path", ["slabs", "gather"])


@contextlib.contextmanager
def shift_path(path):
    saved = conv_module.GATHER_BELOW
    conv_module.GATHER_BELOW = 0 if path == "slabs" else 1 << 62
    try:
        yield
    finally:
        conv_module.GATHER_BELOW = saved


@PATHS
@given(case=shift_cases())
def test_shifted_copies_equal_the_padded_definition(path, case):
    a, k, flip, _ = case
    with shift_path(path):
        _check_shifted_copies(a, k, flip)


def _check_shifted_copies(a, k, flip):
    got = shifted_copies(a, k, flip)
    # rows c·k² + t: channel c of tap t
    assert np.array_equal(got, padded_shifts(a, k, flip).transpose(1, 0, 2, 3, 4).reshape(got.shape))
    # a non-contiguous (NCHW-transposed) view gives the same rows
    assert np.array_equal(shifted_copies(np.ascontiguousarray(a.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3),
                                         k, flip), got)


@PATHS
@given(case=shift_cases())
def test_shifted_sum_equals_the_padded_definition(path, case):
    """``Σ_t S_t(z_t)`` equals the definition's sum taken in tap order, bit for bit (the same
    additions onto zeros), and each tap alone is exact."""
    with shift_path(path):
        _check_shifted_sum(*case)


def _check_shifted_sum(a, k, flip, rng):
    c, n, h, v = a.shape
    z = rng.normal(size=(k * k, c, n, h, v))
    taps = [padded_shifts(z[t], k, flip)[t] for t in range(k * k)]
    got = shifted_sum(z.copy(), k, flip)
    assert np.array_equal(got, sum(taps))
    for t in range(k * k):
        one = np.zeros_like(z)
        one[t] = z[t]
        assert np.array_equal(shifted_sum(one, k, flip), taps[t])


@pytest.mark.parametrize("c_in, c_out", [(2, 5), (5, 2), (3, 3)])  # input side, output side, equal
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@PATHS
def test_both_strategies_match_the_direct_loop_and_the_complex_step(c_in, c_out, k, dtype, path):
    """Each of the two ways to place the shifted copies (the side with fewer channels) is exercised
    on purpose, with both ways to make them: forward against the definition within γ_K, VJP
    against the complex step."""
    with shift_path(path):
        _check_strategy(c_in, c_out, k, dtype)


def _check_strategy(c_in, c_out, k, dtype):
    rng = np.random.default_rng(c_in * 10 + c_out + k)
    x64, w64, b64 = rng.normal(size=(2, c_in, 4, 5)), rng.normal(size=(c_out, c_in, k, k)), rng.normal(size=c_out)
    x, w, b = x64.astype(dtype), w64.astype(dtype), b64.astype(dtype)
    y, cache = conv2d(x, w, b)
    ref = direct_conv(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64))
    k_terms = c_in * k * k + 1
    assert np.all(np.abs(y - ref) <= (gamma(k_terms, dtype) + gamma(k_terms, np.float64))
                  * sum_of_abs_terms(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)))
    gx, gw, gb = conv2d_backward(cache, rng.normal(size=y.shape).astype(dtype))
    assert gx.dtype == gw.dtype == gb.dtype == dtype
    assert gx.flags.c_contiguous and gw.flags.c_contiguous
    _, cache64 = conv2d(x64, w64, b64)

    def vjp(gy, gl):
        gx_, gw_, gb_ = conv2d_backward(cache64, gy)
        return gx_, {"w": gw_, "b": gb_}

    check_complex_step(lambda p, u: (conv2d(u, p["w"], p["b"])[0], np.zeros(u.shape[0])), vjp,
                       {"w": w64, "b": b64}, x64, rng)


@pytest.mark.parametrize("c_in, c_out", [(2, 7), (7, 2)])
def test_slabs_and_gather_give_the_same_bits(c_in, c_out):
    rng = np.random.default_rng(8)
    x, w, b = rng.normal(size=(3, c_in, 6, 5)), rng.normal(size=(c_out, c_in, 3, 3)), rng.normal(size=c_out)
    gy = rng.normal(size=(3, c_out, 6, 5))
    runs = []
    for path in ("slabs", "gather"):
        with shift_path(path):
            y, cache = conv2d(x, w, b)
            runs.append((y, *conv2d_backward(cache, gy)))
    for u, v in zip(*runs):
        assert np.array_equal(u.view(np.uint64), v.view(np.uint64))


def test_inputs_are_never_written():
    rng = np.random.default_rng(6)
    for c_in, c_out in ((2, 5), (5, 2)):
        x, w, b = rng.normal(size=(2, c_in, 4, 4)), rng.normal(size=(c_out, c_in, 3, 3)), rng.normal(size=c_out)
        keep = [a.copy() for a in (x, w, b)]
        y, cache = conv2d(x, w, b)
        gy = rng.normal(size=y.shape)
        gy_keep = gy.copy()
        first = conv2d_backward(cache, gy)
        second = conv2d_backward(cache, gy)
        for a, k in zip((x, w, b, gy), keep + [gy_keep]):
            assert np.array_equal(a, k)
        for u, v in zip(first, second):
            assert np.array_equal(u, v)


def test_empty_batch():
    x, w, b = np.zeros((0, 3, 4, 4)), np.ones((5, 3, 3, 3)), np.ones(5)
    for ww in (w, np.ones((2, 3, 3, 3))):
        y, cache = conv2d(x, ww, b[: ww.shape[0]])
        assert y.shape == (0, ww.shape[0], 4, 4)
        gx, gw, gb = conv2d_backward(cache, y)
        assert gx.shape == x.shape and not np.any(gw) and not np.any(gb)
