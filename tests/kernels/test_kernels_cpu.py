"""CPU kernels (:mod:`rawflow.kernels`): the vectorisable elementary functions and the fused coupling
kernels, against the reference :class:`rawflow.AffineTransform` path.

Oracle: the reference path itself evaluated in ``np.longdouble`` (x87 extended, 64-bit mantissa)
on the same inputs, i.e. the exact result to ~2⁻⁶³ relative; rounding it gives the correctly
rounded float64 (or float32) result. (One change: the bounded map's derivative is taken as
``1/cosh²`` rather than ``1 − tanh²``, which cancels near saturation even in long double.)
Without an extended long double the tests that need it skip.

Measures (stated once, used everywhere):

* ``ulp error`` of an elementary function: ``|got − exact| / ulp(exact)`` with
  ``ulp(v) = 2^(⌊log2|v|⌋ − p + 1)`` in the target format (subnormal spacing below the normal range).
* ``term units`` for kernel outputs: ``|got − exact| / (eps · T)`` elementwise, where ``T`` is the
  first-order error scale of the expression: the sum of the magnitudes of the terms it adds, each
  multiplied by ``1 + σ`` when it carries ``s``, ``σ`` being the size of the terms ``log s`` is
  computed from (``0`` for ``exp``, whose ``log s = h`` is exact; ``|h|·dlog s + |log s|`` for
  ``bounded``; ``|h + 2|·dlog s + |log s|`` for ``sigmoid``: rounding ``h/c`` or ``h + 2`` and the
  map's own rounding move ``log s``, hence ``s``, by ``eps·σ`` — an error no implementation avoids).
  For ``gh_s = (…)·dlog s`` the scale adds ``|…|·σ_d``, ``σ_d`` the error scale of ``dlog s``
  (``0`` for ``exp``; see :func:`oracle`).
  Elementwise ulps of the result itself are meaningless where ``x·s + t`` cancels.
  A few roundings (¼ eps each) plus the ≤ 1 ulp elementary functions give a first-order bound of
  about 1.5 in these units, so float64 is held to ``≤ 2`` and float32 to the issue's ``≤ 4``.
"""

from __future__ import annotations

import time

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rawflow import AffineTransform, AdditiveTransform, ScaleMap
from rawflow.kernels import cpu_coupling as K
from rawflow.kernels import fastexp as fe
from rawflow.bijectors.scales import BoundedScale

LD = np.longdouble
EXTENDED = np.finfo(LD).nmant >= 63
needs_extended = pytest.mark.skipif(not EXTENDED, reason="needs an extended-precision np.longdouble oracle")
DTYPES = [np.float32, np.float64]
BOUND = {np.float64: 2.0, np.float32: 4.0}  # term units, see the module docstring
WORST: dict = {}  # worst measured value per check, printed by test_zz_report


def note(key, value):
    WORST[key] = max(WORST.get(key, 0.0), float(value))
    return float(value)


# ------------------------------------------------------------------ elementary functions
def ulp_error(got, exact, dtype) -> np.ndarray:
    """``|got − exact| / ulp(exact)`` in ``dtype``; ``exact`` in a wider type. Equal infinities count 0."""
    fi = np.finfo(dtype)
    exact = np.asarray(exact)
    _, e = np.frexp(np.abs(exact))
    ulp = np.maximum(np.ldexp(np.ones_like(exact), e - fi.nmant - 1), fi.smallest_subnormal)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(got.astype(exact.dtype) - exact) / ulp
        return np.where(np.isinf(got) & (got == exact.astype(dtype)), 0.0, err)


def float32_sweep(lo: float, hi: float, stride: int, offset: int = 0) -> np.ndarray:
    """Every ``stride``-th float32 bit pattern of either sign, kept if in ``[lo, hi]``."""
    pos = np.arange(offset, 0x7F800000, stride, dtype=np.int32).view(np.float32)
    x = np.concatenate([pos, -pos])
    return x[(x >= lo) & (x <= hi)]


# 0x7F800000 / 211 ≈ 10 M patterns, ≈ 4.5 M of them in exp's range; stride 211 is prime, so the
# sweep samples every position within the mantissa.
SWEEP_STRIDE = 211


def test_fast_exp_float32_dense_sweep():
    x = float32_sweep(-110.0, 95.0, SWEEP_STRIDE, offset=7)
    assert x.size > 4_000_000
    err = ulp_error(fe.exp_array(x), np.exp(x.astype(np.float64)), np.float32)
    worst = note("exp float32 ulp", err.max())
    assert worst <= 2, f"fast exp float32: {worst:.3f} ulp at x={x[np.argmax(err)]!r}"


@needs_extended
def test_fast_exp_float64_vs_long_double():
    rng = np.random.default_rng(1)
    n = 1_000_000
    x = np.concatenate(
        [
            rng.uniform(-746, 710, n),  # whole range incl. subnormal results and overflow
            rng.uniform(-1, 1, n),
            np.ldexp(rng.uniform(0.5, 1, n), rng.integers(-60, 0, n)) * rng.choice([-1, 1], n),
            # the reduction's boundaries: r = ±ln2/2 where k changes
            (np.arange(-1000, 1000) + 0.5) * np.log(2) + rng.uniform(-1e-9, 1e-9, 2000),
        ]
    )
    err = ulp_error(fe.exp_array(x), np.exp(x.astype(LD)), np.float64)
    worst = note("exp float64 ulp", err.max())
    assert worst <= 2, f"fast exp float64: {worst:.3f} ulp at x={x[np.argmax(err)]!r}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_fast_exp_special_values_and_range_ends(dtype):
    fi = np.finfo(dtype)
    x_max = np.log(fi.max.astype(LD) if EXTENDED else fi.max)  # exp(x) overflows just above
    x_min = np.log(LD(fi.smallest_subnormal) if EXTENDED else fi.smallest_subnormal)
    probes = np.array(
        [np.nan, np.inf, -np.inf, 0.0, -0.0, float(x_max), float(x_min), -1000.0, 1000.0],
        dtype=dtype,
    )
    near = np.concatenate(
        [
            np.nextafter(dtype(x_max), dtype(np.inf)) - np.arange(8, dtype=dtype) * np.spacing(dtype(x_max)),
            np.linspace(float(x_min) - 2, float(x_min) + 40, 4001).astype(dtype),  # subnormal results
        ]
    )
    got = fe.exp_array(probes)
    assert np.isnan(got[0]) and got[1] == np.inf and got[2] == 0 and got[3] == 1 and got[4] == 1
    assert got[7] == 0 and got[8] == np.inf
    with np.errstate(over="ignore"):
        exact = np.exp(near.astype(LD if EXTENDED else np.float64))
        rounded = exact.astype(dtype)
    got = fe.exp_array(near)
    # overflow and underflow happen in the same place as for the correctly rounded exp
    assert np.array_equal(np.isinf(got), np.isinf(rounded)) and np.array_equal(got == 0, rounded == 0)
    err = ulp_error(got, exact, dtype)
    assert err.max() <= 2, f"{dtype.__name__}: {err.max():.3f} ulp at x={near[np.argmax(err)]!r}"


def test_fast_tanh_float32_dense_sweep():
    x = float32_sweep(-12.0, 12.0, SWEEP_STRIDE, offset=3)
    err = ulp_error(fe.tanh_array(x), np.tanh(x.astype(np.float64)), np.float32)
    worst = note("tanh float32 ulp", err.max())
    assert worst <= 2, f"fast tanh float32: {worst:.3f} ulp at x={x[np.argmax(err)]!r}"
    signs = fe.tanh_array(np.array([0.0, -0.0, np.inf, -np.inf, np.nan], np.float32))
    assert np.signbit(signs[1]) and not np.signbit(signs[0]) and signs[2] == 1 and signs[3] == -1
    assert np.isnan(signs[4])


@pytest.mark.parametrize("dtype", DTYPES)
def test_fast_sech2_has_no_cancellation(dtype):
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.uniform(-30, 30, 500_000), rng.uniform(-400, 400, 50_000), [0.0, np.inf]]).astype(dtype)
    t, s2 = fe.tanh_sech2_array(x)
    with np.errstate(over="ignore"):
        exact = 1 / np.cosh(x.astype(LD if EXTENDED else np.float64)) ** 2
    err = ulp_error(s2, exact, dtype)
    worst = note(f"sech2 {dtype.__name__} ulp", err.max())
    # 4G/(1 + G)² with 1 + G corrected: G (≤ 1 ulp), product and division (½ each), correction: < 3 ulp
    assert worst <= 3, f"sech² {dtype.__name__}: {worst:.3f} ulp at x={x[np.argmax(err)]!r}"
    assert np.array_equal(t, fe.tanh_array(x))


@needs_extended
def test_fast_tanh_float64_vs_long_double():
    rng = np.random.default_rng(2)
    n = 1_000_000
    x = np.concatenate([rng.uniform(-25, 25, n), rng.uniform(-1, 1, n), rng.normal(size=n) * 1e-4])
    err = ulp_error(fe.tanh_array(x), np.tanh(x.astype(LD)), np.float64)
    worst = note("tanh float64 ulp", err.max())
    assert worst <= 2, f"fast tanh float64: {worst:.3f} ulp at x={x[np.argmax(err)]!r}"


def test_fast_log1p_unit_float32_all_of_0_to_1():
    u = np.arange(0, np.float32(1).view(np.int32) + 1, SWEEP_STRIDE, dtype=np.int32).view(np.float32)
    err = ulp_error(fe.log1p_unit_array(u), np.log1p(u.astype(np.float64)), np.float32)
    worst = note("log1p_unit float32 ulp", err.max())
    assert worst <= 2, f"log1p_unit float32: {worst:.3f} ulp at {u[np.argmax(err)]!r}"


@needs_extended
def test_fast_log1p_unit_float64_vs_long_double():
    rng = np.random.default_rng(3)
    n = 1_000_000
    u = np.concatenate([rng.uniform(0, 1, n), np.ldexp(rng.uniform(0.5, 1, n), rng.integers(-1074, 0, n)), [0.0, 1.0]])
    err = ulp_error(fe.log1p_unit_array(u), np.log1p(u.astype(LD)), np.float64)
    worst = note("log1p_unit float64 ulp", err.max())
    assert worst <= 2, f"log1p_unit float64: {worst:.3f} ulp at {u[np.argmax(err)]!r}"


# ------------------------------------------------------------------ kernels vs the reference path
def scale_obj(scale: str, c: float):
    return BoundedScale(c) if scale == "bounded" else scale


class StableBounded(BoundedScale):
    """The bounded map with ``dlog s = 1/cosh²(h/c)``: the oracle's derivative must not cancel.

    The reference's ``1 − tanh²`` loses ``eps/sech²`` relative near saturation even in long double
    (about 1e-3 at ``h/c = 20``); the kernels compute ``sech²`` without cancellation.
    """

    def log_scale(self, h):
        a = h / self.c
        return self.c * np.tanh(a), 1 / np.cosh(a) ** 2


def oracle(scale, c, xin, h, g, gl, direction, point=None):
    """Reference path in long double: output, log-det, gradients and the intermediates.

    ``point``: for ``direction="inverse"``, the point (the inverse's output, i.e. its cache) at which
    to take the VJP, e.g. a kernel's own rounded inverse output; default the exact one.

    ``sigma`` / ``sigma_d``: error scales of ``log s`` / ``dlog s`` in eps units (see the module
    docstring). ``sigma_d`` includes the subnormal spacing: a ``dlog s`` that underflows (saturated
    maps) carries that absolute error into ``gh_s`` whatever the algorithm.
    """
    t = AffineTransform(StableBounded(c) if scale == "bounded" else scale)
    X, H, G, GL = (np.asarray(a).astype(LD) for a in (xin, h, g, gl))
    m = xin.shape[1]
    fi = np.finfo(xin.dtype)
    log_s, dlog_s = t.scale(H[:, :m])
    if direction == "forward":
        out, ld, cache = t.forward(X, H)
        gin, gh = t.backward(cache, G, GL)
    else:
        out, ld, cache = t.inverse(X, H)
        if point is not None:
            cache = (np.asarray(point).astype(LD), cache[1], cache[2])  # (xb, s, dlog s)
        gin, gh = t.inverse_backward(cache, G, GL)
    hs = H[:, :m]
    if scale == "exp":
        sigma = sigma_d = np.zeros_like(hs)
    elif scale == "bounded":
        th = np.tanh(hs / c)
        sigma = np.abs(hs) * dlog_s + np.abs(log_s)
        # sech²(a): evaluation (< 3 ulp, see test_fast_sech2_has_no_cancellation) plus rounding
        # a = h/c, whose condition number in sech² is 2|a·tanh a|
        sigma_d = dlog_s * (3 + 2 * np.abs(th * hs / c))
    else:
        sigma = np.abs(hs + 2) * dlog_s + np.abs(log_s)
        sigma_d = dlog_s * (1 + np.abs(hs + 2))
    sigma_d = sigma_d + LD(fi.smallest_subnormal) / LD(fi.eps)
    return dict(out=out, ld=ld, gin=gin, gh=gh, log_s=log_s, dlog_s=dlog_s, s=np.exp(log_s), t=H[:, m:],
                sigma=sigma, sigma_d=sigma_d)


def term_error(got, exact, scale_terms, dtype) -> float:
    """``max |got − exact| / (eps·T)``; an error scale below the subnormal spacing is raised to it."""
    fi = np.finfo(dtype)
    err = np.abs(got.astype(LD) - exact) / np.maximum(fi.eps * scale_terms, fi.smallest_subnormal)
    return float(np.max(err, initial=0.0))


@st.composite
def kernel_cases(draw, dtypes=DTYPES):
    dtype = draw(st.sampled_from(dtypes))
    scale = draw(st.sampled_from(["exp", "bounded", "sigmoid"]))
    c = draw(st.sampled_from([2.0, 0.7, 3.3])) if scale == "bounded" else 2.0
    n = draw(st.integers(1, 4))
    # short rows, and rows spanning several CHUNKs of the log-det reduction (with a remainder)
    m = draw(st.one_of(st.integers(1, 40), st.integers(K.CHUNK - 3, 2 * K.CHUNK + 9)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x_mag = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    h_mag = draw(st.sampled_from([0.1, 1.0, 4.0, 40.0]))  # 40: saturated bounded/sigmoid maps
    x = rng.normal(size=(n, m)) * x_mag
    h = rng.normal(size=(n, 2 * m)) * h_mag
    # Keep every output finite in float32: |log s| ≤ 62 bounds s and 1/s by 1e27 (the bounded map
    # is saturated by itself; sigmoid's log s ≈ h + 2 for very negative h).
    lim = {"exp": 30, "bounded": np.inf, "sigmoid": 60}[scale]
    h[:, :m] = np.clip(h[:, :m], -lim, lim)
    g = rng.normal(size=(n, m))
    gl = rng.normal(size=n)
    return dtype, scale, c, *(a.astype(dtype) for a in (x, h, g, gl))


@needs_extended
@given(kernel_cases())
def test_forward_matches_reference(case):
    dtype, scale, c, x, h, _, _ = case
    y, ld = K.affine_forward(x, h, scale_obj(scale, c))
    assert y.dtype == dtype and ld.dtype == dtype and y.shape == x.shape and ld.shape == (x.shape[0],)
    o = oracle(scale, c, x, h, np.zeros_like(x), np.zeros(x.shape[0], dtype), "forward")
    X = x.astype(LD)
    terms_y = np.abs(X * o["s"]) * (1 + o["sigma"]) + np.abs(o["t"])
    terms_ld = np.sum(np.abs(o["log_s"]) + o["sigma"], axis=1)
    ey = note(f"forward y {dtype.__name__}", term_error(y, o["out"], terms_y, dtype))
    el = note(f"forward logdet {dtype.__name__}", term_error(ld, o["ld"], terms_ld, dtype))
    assert ey <= BOUND[dtype], f"{scale} {dtype.__name__} forward y: {ey:.2f} term units"
    assert el <= BOUND[dtype], f"{scale} {dtype.__name__} forward logdet: {el:.2f} term units"


@needs_extended
@given(kernel_cases())
def test_inverse_matches_reference_and_logdets_cancel_exactly(case):
    dtype, scale, c, x, h, _, _ = case
    sc = scale_obj(scale, c)
    y, ld = K.affine_forward(x, h, sc)
    xi, ldi = K.affine_inverse(y, h, sc)
    assert np.all(ld + ldi == 0), "forward and inverse log-dets must cancel exactly"
    o = oracle(scale, c, y, h, np.zeros_like(y), np.zeros(y.shape[0], dtype), "inverse")
    scale_terms = (np.abs(y.astype(LD)) + np.abs(o["t"])) / o["s"] * (1 + o["sigma"])
    ex = note(f"inverse x {dtype.__name__}", term_error(xi, o["out"], scale_terms, dtype))
    terms_ld = np.sum(np.abs(o["log_s"]) + o["sigma"], axis=1)
    el = note(f"inverse logdet {dtype.__name__}", term_error(ldi, o["ld"], terms_ld, dtype))
    assert ex <= BOUND[dtype] and el <= BOUND[dtype], f"{scale} {dtype.__name__} inverse: x {ex:.2f}, ld {el:.2f}"


@given(kernel_cases())
def test_roundtrip(case):
    dtype, scale, c, x, h, _, _ = case
    sc = scale_obj(scale, c)
    eps = np.finfo(dtype).eps
    y, _ = K.affine_forward(x, h, sc)
    xi, _ = K.affine_inverse(y, h, sc)
    _, s_ref, _ = _kernel_s(scale, c, h)
    # y = fl(fl(x·s) + t), x' = fl(fl(y − t)/s) with the same s: |x' − x| ≤ u(3|x| + |y|/s) to first
    # order, i.e. ≤ 2·eps·max(|x|, |y|/s) elementwise.
    scale_terms = np.maximum(np.abs(x), np.abs(y) / s_ref).astype(np.float64)
    err = np.abs(xi.astype(np.float64) - x) / (eps * np.maximum(scale_terms, np.finfo(dtype).tiny))
    e = note(f"roundtrip {dtype.__name__}", np.max(err))
    assert e <= 2, f"{scale} {dtype.__name__}: round trip {e:.2f} eps·max(|x|, |y|/s)"


def _kernel_s(scale, c, h):
    """``s`` as the kernels compute it (float64 view, for error scales only)."""
    m = h.shape[1] // 2
    log_s, dlog_s = AffineTransform(scale_obj(scale, c)).scale(h[:, :m].astype(np.float64))
    return log_s, np.exp(log_s), dlog_s


def _vjp_checks(case, direction):
    dtype, scale, c, x, h, g, gl = case
    sc = scale_obj(scale, c)
    m = x.shape[1]
    if direction == "forward":
        point = x
        gin, gh = K.affine_backward(point, h, g, gl, sc)
    else:
        point, _ = K.affine_inverse(x, h, sc)  # the inverse's output is its cache
        gin, gh = K.affine_inverse_backward(point, h, g, gl, sc)
    assert gh.shape == h.shape and gin.shape == x.shape and gh.dtype == dtype
    o = oracle(scale, c, x, h, g, gl, direction, point=None if direction == "forward" else point)
    G, GL, P = g.astype(LD), gl.astype(LD)[:, None], point.astype(LD)
    if direction == "forward":
        terms_in = np.abs(G * o["s"]) * (1 + o["sigma"])
        gsx = G * o["s"] * P
        terms_h = (np.abs(gsx) * (1 + o["sigma"]) + np.abs(GL)) * o["dlog_s"] + np.abs(gsx + GL) * o["sigma_d"]
        assert np.array_equal(gh[:, m:], g), "gt must be the cotangent itself"
    else:
        terms_in = np.abs(G / o["s"]) * (1 + o["sigma"])
        gx = G * P
        terms_h = (np.abs(gx) + np.abs(GL)) * o["dlog_s"] + np.abs(gx + GL) * o["sigma_d"]
        assert np.array_equal(gh[:, m:], -gin), "gt must be the exact negation of gy"
    e_in = note(f"{direction} VJP input {dtype.__name__}", term_error(gin, o["gin"], terms_in, dtype))
    e_h = note(f"{direction} VJP h_s {dtype.__name__}", term_error(gh[:, :m], o["gh"][:, :m], terms_h, dtype))
    assert e_in <= BOUND[dtype] and e_h <= BOUND[dtype], (
        f"{scale} {dtype.__name__} {direction} VJP: input {e_in:.2f}, h_s {e_h:.2f} term units"
    )


@needs_extended
@given(kernel_cases())
def test_backward_matches_reference(case):
    _vjp_checks(case, "forward")


@needs_extended
@given(kernel_cases())
def test_inverse_backward_matches_reference(case):
    _vjp_checks(case, "inverse")


def rel_err(actual, expected) -> float:
    err = np.max(np.abs(actual.astype(np.float64) - expected), initial=0.0)
    ref = np.max(np.abs(expected), initial=0.0)
    return 0.0 if err == 0 else (np.inf if ref == 0 else err / ref)


@needs_extended
@given(kernel_cases(dtypes=[np.float32]))
def test_float32_gradients_within_1e_6_of_float64(case):
    """Norm-wise ``‖g32 − g64‖∞ / ‖g64‖∞ ≤ 1e-6``, ``g64`` the correctly rounded float64 gradient."""
    _, scale, c, x, h, g, gl = case
    sc = scale_obj(scale, c)
    gx, gh = K.affine_backward(x, h, g, gl, sc)
    xi, _ = K.affine_inverse(x, h, sc)
    gy, ghi = K.affine_inverse_backward(xi, h, g, gl, sc)
    o = oracle(scale, c, x, h, g, gl, "forward")
    oi = oracle(scale, c, x, h, g, gl, "inverse", point=xi)
    f64 = lambda a: a.astype(np.float64)  # noqa: E731
    errs = {
        "backward input": rel_err(gx, f64(o["gin"])),
        "backward h": rel_err(gh, f64(o["gh"])),
        "inverse_backward input": rel_err(gy, f64(oi["gin"])),
        "inverse_backward h": rel_err(ghi, f64(oi["gh"])),
    }
    for k, v in errs.items():
        note(f"float32 gradient rel {k}", v)
    assert max(errs.values()) <= 1e-6, f"{scale}: float32 gradients vs float64: {errs}"


# ------------------------------------------------------------------ structure, shapes, determinism
def _case(dtype, n=3, m=37, seed=0, trailing=()):
    rng = np.random.default_rng(seed)
    shape_x = (n, m) + trailing
    shape_h = (n, 2 * m) + trailing
    arrays = (rng.normal(size=shape_x), rng.normal(size=shape_h), rng.normal(size=shape_x), rng.normal(size=n))
    return tuple(a.astype(dtype) for a in arrays)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", ["exp", "bounded", "sigmoid"])
def test_image_shapes_match_flattened_rows(dtype, scale):
    x, h, g, gl = _case(dtype, n=2, m=3, trailing=(4, 5))  # (N, C, H, W), h: (N, 2C, H, W)
    y, ld = K.affine_forward(x, h, scale)
    y2, ld2 = K.affine_forward(x.reshape(2, -1), np.ascontiguousarray(h.reshape(2, -1)), scale)
    assert y.shape == x.shape and np.array_equal(y.reshape(2, -1), y2) and np.array_equal(ld, ld2)
    gx, gh = K.affine_backward(x, h, g, gl, scale)
    gx2, gh2 = K.affine_backward(x.reshape(2, -1), h.reshape(2, -1), g.reshape(2, -1), gl, scale)
    assert gx.shape == x.shape and gh.shape == h.shape
    assert np.array_equal(gx.reshape(2, -1), gx2) and np.array_equal(gh.reshape(2, -1), gh2)
    # and the flattening agrees with AffineTransform's channel split: h[:, :C] is h_s
    _, ref_ld, _ = AffineTransform(scale).forward(x.astype(np.float64), h.astype(np.float64))
    assert rel_err(ld, ref_ld) <= 4 * np.finfo(dtype).eps * 60  # Σ of 60 log s terms, |Σ| ~ Σ|·|/8


@needs_extended
@pytest.mark.parametrize("n,m", [(40000, 1), (2000, 7), (600, K.NARROW), (600, K.NARROW + 1)],
                         ids=["narrow-1", "narrow-7", "narrow-limit", "wide"])
def test_many_rows_in_many_tasks_on_two_threads(n, m):
    """Above ``SERIAL_BELOW`` values the rows run as several parallel tasks: short rows (≤ NARROW,
    de-interleaved, flat loops, column-wise TwoSum) and long rows; every entry point against the
    oracle, and the same bits on one thread and on two."""
    before = numba.get_num_threads()
    assert n * m >= K.SERIAL_BELOW and n > K.rows_per_task(m)  # parallel, several tasks
    try:
        for dtype in DTYPES:
            for k, scale in enumerate(("exp", "bounded", "sigmoid")):
                x, h, g, gl = _case(dtype, n=n, m=m, seed=k)
                case = (dtype, scale, 2.0, x, h, g, gl)
                outs = []
                for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
                    numba.set_num_threads(threads)
                    outs.append(K.affine_forward(x, h, scale) + K.affine_inverse(x, h, scale)
                                + K.affine_backward(x, h, g, gl, scale) + K.affine_inverse_backward(x, h, g, gl, scale))
                assert all(np.array_equal(a, b) for a, b in zip(*outs)), f"{scale}: thread count changed the bits"
                test_forward_matches_reference.hypothesis.inner_test(case)
                test_inverse_matches_reference_and_logdets_cancel_exactly.hypothesis.inner_test(case)
                _vjp_checks(case, "forward")
                _vjp_checks(case, "inverse")
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bitwise_reproducible_across_runs_and_thread_counts(dtype):
    x, h, g, gl = _case(dtype, n=7, m=2 * K.CHUNK + 77, seed=5)
    before = numba.get_num_threads()
    outs = []
    try:
        for threads in (1, before, 1):
            numba.set_num_threads(threads)
            outs.append(K.affine_forward(x, h, "sigmoid") + K.affine_backward(x, h, g, gl, "sigmoid"))
    finally:
        numba.set_num_threads(before)
    for other in outs[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(outs[0], other))


def test_non_contiguous_inputs_give_the_same_result():
    x, h, g, gl = _case(np.float64, m=20, seed=2)
    wide = np.concatenate([x, x], axis=1)[:, 20:]  # a strided view
    assert not wide.flags.c_contiguous
    assert all(np.array_equal(a, b) for a, b in zip(K.affine_forward(wide, h, "exp"), K.affine_forward(x, h, "exp")))
    hf = np.asfortranarray(h)
    assert all(np.array_equal(a, b) for a, b in zip(K.affine_backward(x, hf, g, gl), K.affine_backward(x, h, g, gl)))


@pytest.mark.parametrize("scale", ["exp", "bounded", "sigmoid"])
def test_zero_cotangent_gives_exactly_zero_gradients(scale):
    x, h, g, gl = _case(np.float32, seed=4)
    for vjp in (K.affine_backward, K.affine_inverse_backward):
        gin, gh = vjp(x, h, 0 * g, 0 * gl, scale)
        assert not np.any(gin) and not np.any(gh)


@pytest.mark.parametrize("dtype", DTYPES)
def test_additive_kernels_are_bitwise_the_reference(dtype):
    x, h, _, _ = _case(dtype, seed=6)
    t = np.ascontiguousarray(h[:, : x.shape[1]])
    y, ld = K.additive_forward(x, t)
    y_ref, ld_ref, _ = AdditiveTransform().forward(x, t)
    assert np.array_equal(y, y_ref) and np.array_equal(ld, ld_ref) and ld.dtype == dtype
    xi, ldi = K.additive_inverse(y, t)
    assert np.array_equal(xi, AdditiveTransform().inverse(y, t)[0]) and not np.any(ldi)


@pytest.mark.parametrize("shape", [(0, 5), (0, 2, 3, 4)], ids=["vectors", "images"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch_gives_empty_outputs(dtype, shape):
    """N = 0 (issue 13's rule): every kernel entry point returns correctly shaped empty outputs
    (it raised "cannot reshape array of size 0")."""
    x = np.empty(shape, dtype)
    h, t, gl = np.empty((0, 2 * shape[1]) + shape[2:], dtype), np.empty(shape, dtype), np.empty(0, dtype)
    for y, ld in (K.affine_forward(x, h), K.affine_inverse(x, h), K.additive_forward(x, t), K.additive_inverse(x, t)):
        assert y.shape == shape and ld.shape == (0,) and y.dtype == ld.dtype == dtype
    for g, gh in (K.affine_backward(x, h, x, gl), K.affine_inverse_backward(x, h, x, gl)):
        assert g.shape == shape and gh.shape == h.shape and g.dtype == dtype


def test_bad_input_raises_value_error_naming_the_function():
    x, h, g, gl = _case(np.float64)

    class Custom(ScaleMap):
        name = "custom"

    cases = [
        (lambda: K.affine_forward(x, h[:, :-1]), "affine_forward"),
        (lambda: K.affine_forward(x, h.astype(np.float32)), "affine_forward"),
        (lambda: K.affine_forward(x.astype(np.int64), h), "affine_forward"),
        (lambda: K.affine_forward(x.astype(np.complex128), h.astype(np.complex128)), "affine_forward"),
        (lambda: K.affine_forward(x, h, "tanh"), "unknown scale map"),
        (lambda: K.affine_forward(x, h, Custom()), "no kernel"),
        (lambda: K.affine_inverse(x[0], h), "affine_inverse"),
        (lambda: K.affine_backward(x, h, g[:, :-1], gl), "affine_backward"),
        (lambda: K.affine_backward(x, h, g, gl[:-1]), "affine_backward"),
        (lambda: K.affine_inverse_backward(x, h, g, gl.astype(np.float32)), "affine_inverse_backward"),
        (lambda: K.additive_forward(x, h), "additive_forward"),
        (lambda: K.affine_forward(list(x), h), "affine_forward"),
    ]
    for call, words in cases:
        with pytest.raises(ValueError, match=words):
            call()


# ------------------------------------------------------------------ backend= on the transforms and couplings
@st.composite
def kernel_couplings(draw):
    from harness import randomize

    from rawflow import AdditiveCoupling, AffineCoupling

    d = draw(st.integers(2, 7))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    # "auto": real float arrays run the kernels, complex ones (the harness's complex-step oracle)
    # the reference code, which is exactly what the oracle needs.
    kwargs = dict(hidden=(5,), flip=draw(st.booleans()), backend="auto")
    if draw(st.booleans()):
        layer = AffineCoupling(d, scale=scale_obj(draw(st.sampled_from(["exp", "bounded", "sigmoid"])), 1.5), **kwargs)
    else:
        layer = AdditiveCoupling(d, **kwargs)
    x = rng.normal(size=(draw(st.integers(1, 4)), d))
    params = randomize(layer.init(rng, x), rng, draw(st.floats(0.05, 0.8)))
    return layer, params, x, rng


@given(kernel_couplings())
def test_kernel_backend_couplings_pass_the_harness(case):
    from harness import check_gradients, check_logdet, check_logdet_cancels, check_roundtrip, check_structure

    from rawflow.kernels.interface import KernelCache

    layer, params, x, rng = case
    _, _, (_, tcache) = layer.forward(params, x)
    assert tcache is None or isinstance(tcache, KernelCache)  # the kernels really ran
    kappa = 1.0
    if tcache is not None:  # 1 / min s, as in test_coupling (the harness bound is norm-wise)
        log_s, _ = layer.transform.scale(tcache.h[:, : tcache.xb.shape[1]])
        kappa = max(1.0, float(np.max(np.exp(-log_s))))
    check_logdet_cancels(layer, params, x, exact=True)
    x32 = x.astype(np.float32)
    p32 = {"net": {k: {n: a.astype(np.float32) for n, a in v.items()} for k, v in params["net"].items()}}
    check_logdet_cancels(layer, p32, x32, exact=True)
    # test_roundtrip's elementwise 2·eps·max(|x|, |y|/s) ≤ 2·eps·κ·max(‖x‖∞, ‖y‖∞)
    check_roundtrip(layer, params, x, bound_ulps=2, kappa=kappa)
    check_logdet(layer, params, x)
    # Central differences through the kernels (rtol 1e-7 with the harness's derived noise). The
    # complex step runs the *reference* code ("auto" on complex input), so at round-off level it
    # measures two rounding orders, amplified by cancellation in the parameter sums over rows
    # (1 ulp in one gh element gave 3.6e-13 on a 4-row bias gradient); the kernels' elementwise
    # VJP accuracy is checked against the long-double oracle above instead.
    check_gradients(layer, params, x, rng, "forward", cs_rtol=np.inf)
    check_gradients(layer, params, layer.forward(params, x)[0], rng, "inverse", cs_rtol=np.inf)
    check_structure(layer, params, x, rng)


@pytest.mark.parametrize("scale", ["exp", "bounded", "sigmoid"])
def test_kernel_backend_matches_reference_layer(scale):
    from harness import randomize

    from rawflow import AffineCoupling

    rng = np.random.default_rng(7)
    x = rng.normal(size=(5, 9))
    ref = AffineCoupling(9, scale=scale, hidden=(6,))
    ker = AffineCoupling(9, scale=scale, hidden=(6,), backend="numba")
    params = randomize(ref.init(rng, x), rng, 0.5)
    z_r, ld_r, c_r = ref.forward(params, x)
    z_k, ld_k, c_k = ker.forward(params, x)
    g, gl = rng.normal(size=z_r.shape), rng.normal(size=5)
    gx_r, gp_r = ref.backward(params, c_r, g, gl)
    gx_k, gp_k = ker.backward(params, c_k, g, gl)
    eps = np.finfo(np.float64).eps
    pairs = [(z_k, z_r), (ld_k, ld_r), (gx_k, gx_r)]
    pairs += [(gp_k["net"][k][n], gp_r["net"][k][n]) for k in gp_r["net"] for n in gp_r["net"][k]]
    for a, b in pairs:
        # two ≤ 2-term-unit results of the same quantity; norm-wise well inside 16 eps here
        assert rel_err(a, b) <= 16 * eps


def test_backend_selection_and_refusals():
    from rawflow import AdditiveTransform, SigmoidScale
    from rawflow.kernels import cpu_coupling
    from rawflow.kernels.dispatch import select
    from rawflow.kernels.interface import KernelCache

    x = np.ones((2, 3))
    assert select("T", "auto", SigmoidScale(), x) is cpu_coupling
    assert select("T", "auto", SigmoidScale(), x.astype(np.complex128)) is None  # complex step: reference
    assert select("T", "reference", SigmoidScale(), x) is None

    class Custom(ScaleMap):
        name = "custom"

        def log_scale(self, h):
            return h, np.ones_like(h)

    assert select("T", "auto", Custom(), x) is None
    t = AffineTransform("exp", backend="auto")
    _, _, cache = t.forward(x + 0j, np.zeros((2, 6)) + 0j)
    assert not isinstance(cache, KernelCache)
    with pytest.raises(ValueError, match="AffineTransform: backend must be one of reference, numba, cuda, cuda-c, auto"):
        AffineTransform("exp", backend="gpu")
    with pytest.raises(ValueError, match="AdditiveTransform: backend must be one of reference, numba, cuda, cuda-c, auto"):
        AdditiveTransform(backend="Numba")
    with pytest.raises(ValueError, match="AffineTransform: backend='numba' needs NumPy float32/float64"):
        AffineTransform("exp", backend="numba").forward(x + 0j, np.zeros((2, 6)) + 0j)
    with pytest.raises(ValueError, match="scale map with a kernel"):
        AffineTransform(Custom(), backend="numba").forward(x, np.zeros((2, 6)))
    with pytest.raises(ValueError, match="backend='cuda' needs CuPy"):
        AffineTransform("exp", backend="cuda").forward(x, np.zeros((2, 6)))
    with pytest.raises(ValueError, match="backend='cuda' needs CuPy"):
        AdditiveTransform(backend="cuda").forward(x, x)


def test_zz_report(capsys):
    """Prints the worst measured value of every check that ran (the numbers quoted in the issue)."""
    with capsys.disabled():
        for k in sorted(WORST):
            print(f"  {k:45s} {WORST[k]:.4g}")


if __name__ == "__main__":
    # Exhaustive float32 check of fast_exp and fast_tanh: every float in range (a few minutes).
    t0 = time.perf_counter()
    worst = worst_tanh = 0.0
    for start in range(0, 0x7F800000, 1 << 24):
        pos = np.arange(start, min(start + (1 << 24), 0x7F800000), dtype=np.int32).view(np.float32)
        for x in (pos, -pos):
            xe = x[(x >= -110) & (x <= 95)]
            if xe.size:
                worst = max(worst, float(ulp_error(fe.exp_array(xe), np.exp(xe.astype(np.float64)), np.float32).max()))
            xt = x[np.abs(x) <= 12]  # beyond, tanh rounds to ±1
            if xt.size:
                err = ulp_error(fe.tanh_array(xt), np.tanh(xt.astype(np.float64)), np.float32)
                worst_tanh = max(worst_tanh, float(err.max()))
    print(f"float32, every float: fast_exp on [-110, 95] max {worst:.4f} ulp, fast_tanh on [-12, 12] max "
          f"{worst_tanh:.4f} ulp ({time.perf_counter() - t0:.0f} s)")
