"""Vectorisable elementary functions for Numba CPU kernels: ``exp``, ``tanh``, ``log1p`` on [0, 1].

Why: Numba ≥ 0.62 lowers ``math.exp`` to one scalar libm call per element (SVML is gone), which
stops LLVM from vectorising any loop that contains it. These functions use only ``+ − × ÷``,
comparisons (selects) and integer bit operations, so a loop that calls them vectorises.

Method (``exp``, Cody–Waite range reduction, no tables so no gathers)::

    k = round(x / ln 2)                      via the shifter trick v = x·log2(e) + 1.5·2^p
    r = (x − k·ln2_hi) − k·ln2_lo            ln2_hi keeps 32 (f64) / 16 (f32) bits: k·ln2_hi is exact
    exp(r) = 1 + (r + r²·P(r))               |r| ≤ ln2/2; Taylor to degree 14 (f64), 8 (f32)
    exp(x) = exp(r) · 2^k1 · 2^k2            k1 = ⌊k/2⌋, k2 = k − k1: both scale factors are normal
                                             numbers, so overflow to inf and gradual underflow to
                                             subnormals/0 come out of one final rounding
* ``x`` is clamped to ``[LO, HI]`` first (just outside the finite range), so ±inf give inf/0 and
  NaN propagates (every comparison with NaN is false, so the clamp lets it through).
* Taylor remainder at ``|r| = ln2/2``: ``r^15/15! ≈ 1e-19`` (f64), ``r^9/9! ≈ 2e-10`` (f32), far
  below rounding even relative to ``q = r + r²·P(r) = expm1(r)``, which ``tanh`` uses on its own
  (one degree more than ``exp`` alone would need). Rounding: ``r`` (≤ ½ ulp of r ⇒ ≤ 0.25 ulp of
  the result), ``r²P`` (tiny weight), ``r + r²P`` (≤ ¼ ulp), ``1 + ·`` (½ ulp): a bound of ≈ 1.5
  ulp. Measured (``tests/kernels/test_kernels_cpu.py``): ≤ 0.93 ulp float32, ≤ 0.94 ulp float64.

``tanh`` reuses the reduction on ``−2|x|``: with ``e^{−2|x|} = 2^k·(1 + q)``, ``q = expm1(r)``,
``tanh|x| = ((1 − 2^k) − 2^k·q) / ((1 + 2^k) + 2^k·q)`` with the rounding errors of numerator and
denominator recovered exactly (Fast2Sum) and corrected for: ≤ 1.85 ulp measured;
``tanh_sech2`` also returns ``sech² = 1 − tanh²`` as ``4G/(1 + G)²``, ``G = e^{−2|x|}``, where
``tanh`` is near 1 (the subtraction would cancel), ≤ 2.6 ulp measured. ``log1p_unit(x)``
(``0 ≤ x ≤ 1`` only, what softplus of a non-positive argument needs) is fdlibm's log1p with the
Taylor coefficients of ``2·atanh``: ≤ 0.87 ulp measured.

All functions are generic over float32/float64 (one implementation each, picked by type at compile
time through ``numba.extending.overload``); float32 arithmetic stays in float32 (every constant is
a typed global: a bare Python float literal would promote the expression to float64).
The same ``exp`` serves a kernel's forward and inverse, so round trips see the same ``s``.

Numba's on-disk cache does not track this module: after editing it, delete the ``__pycache__``
``*.nbi``/``*.nbc`` files of the kernel modules that call it.
"""

from __future__ import annotations

import math
from decimal import Context, Decimal

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

_DEC = Context(prec=50)  # a private context: the process-wide decimal context is left alone
_LN2 = _DEC.ln(Decimal(2))


def _truncate(value: Decimal, bits: int) -> float:
    """``value`` cut to ``bits`` significant bits (so ``k·result`` is exact for small integers k)."""
    m, e = math.frexp(float(value))
    return math.ldexp(math.floor(m * 2.0**bits) / 2.0**bits, e)


class _Consts:
    """Typed constants for one float type (named attributes become frozen typed globals)."""

    def __init__(self, ft, mant_bits: int, hi_bits: int, degree: int, log_terms: int, lo, hi, k_min):
        f = ft
        self.ft = ft
        self.LOG2E = f(float(_DEC.divide(1, _LN2)))
        self.LN2 = f(float(_LN2))
        ln2_hi = _truncate(_LN2, hi_bits)
        self.LN2_HI = f(ln2_hi)
        self.LN2_LO = f(float(_DEC.subtract(_LN2, Decimal(ln2_hi))))
        self.SHIFT = f(1.5 * 2.0**mant_bits)  # adding it rounds to an integer held in the low bits
        self.LO, self.HI = f(lo), f(hi)
        self.K_MIN = f(k_min)
        # exp(r) = 1 + r + r²·Σ_{j≥0} r^j/(j+2)!, coefficients highest first for Horner.
        self.P = tuple(f(float(_DEC.divide(1, math.factorial(j + 2)))) for j in range(degree - 1))[::-1]
        # log(1+f) = f − f²/2 + s·(f²/2 + R(s²)), R(z) = Σ_{i≥1} 2/(2i+1)·z^i (atanh series), highest first.
        self.L = tuple(f(float(_DEC.divide(2, 2 * i + 1))) for i in range(1, log_terms + 1))[::-1]
        self.SQRT2 = f(float(_DEC.sqrt(Decimal(2))))
        self.ZERO, self.HALF, self.ONE, self.TWO, self.FOUR = f(0), f(0.5), f(1), f(2), f(4)


# LO/HI: just outside the finite range (exp(LO) < smallest subnormal / 2, exp(HI) > max), chosen so
# that k stays within ±2·(bias+1) and both halves of k give normal scale factors.
# K_MIN: floor of the 2^k in tanh's formula, kept a normal number.
F64 = _Consts(np.float64, 52, 32, 14, 10, -746.0, 710.0, -1000.0)
F32 = _Consts(np.float32, 23, 16, 8, 5, -104.0, 89.0, -120.0)
assert all(c == 0 or c.dtype == np.float32 for c in (F32.LOG2E, F32.LN2_LO) + F32.P + F32.L)


# ------------------------------------------------------------------ bit-level helpers (LLVM IR)
def _float_layout(ft):
    if ft == types.float64:
        return ir.DoubleType(), 64, 52, 1023
    if ft == types.float32:
        return ir.FloatType(), 32, 23, 127
    return None


def _shift_bits(nbits: int, mant: int) -> int:
    """The bit pattern of SHIFT = 1.5·2^mant (its integer part sits in the mantissa's low bits)."""
    return int(np.array(1.5 * 2.0**mant, dtype=np.float64 if nbits == 64 else np.float32).view(f"i{nbits // 8}"))


def _exponent_bits(builder, k, bias, mant, ity):
    return builder.shl(builder.add(k, ir.Constant(ity, bias)), ir.Constant(ity, mant))


@intrinsic
def _scale_by_2k(typingctx, p, v):
    """``p · 2^k`` where ``v = k + SHIFT`` (the shifter trick leaves k in v's low mantissa bits).

    Applied as ``p·2^⌊k/2⌋·2^(k−⌊k/2⌋)``: each factor is a normal number for the clamped range, so
    the only rounding is the last multiply (overflow → inf, underflow → subnormal or 0, correctly).
    """
    if p != v or _float_layout(p) is None:
        return None
    fty, nbits, mant, bias = _float_layout(p)
    shift_bits = _shift_bits(nbits, mant)

    def codegen(context, builder, sig, args):
        pv, vv = args
        ity = ir.IntType(nbits)
        k = builder.sub(builder.bitcast(vv, ity), ir.Constant(ity, shift_bits))
        k1 = builder.ashr(k, ir.Constant(ity, 1))
        k2 = builder.sub(k, k1)
        s1 = builder.bitcast(_exponent_bits(builder, k1, bias, mant, ity), fty)
        s2 = builder.bitcast(_exponent_bits(builder, k2, bias, mant, ity), fty)
        return builder.fmul(builder.fmul(pv, s1), s2)

    return p(p, v), codegen


@intrinsic
def _pow2k(typingctx, v):
    """``2^k`` for ``v = k + SHIFT``, ``|k|`` small enough for a normal result (tanh's range)."""
    if _float_layout(v) is None:
        return None
    fty, nbits, mant, bias = _float_layout(v)
    shift_bits = _shift_bits(nbits, mant)

    def codegen(context, builder, sig, args):
        ity = ir.IntType(nbits)
        k = builder.sub(builder.bitcast(args[0], ity), ir.Constant(ity, shift_bits))
        return builder.bitcast(_exponent_bits(builder, k, bias, mant, ity), fty)

    return v(v), codegen


# ------------------------------------------------------------------ public stubs (pure Python)
def fast_exp(x):
    """``exp(x)`` (≤ 2 ulp, IEEE specials); callable from njit code on float32/float64 scalars."""
    return np.exp(x)


def fast_tanh(x):
    """``tanh(x)`` (≤ 2 ulp); callable from njit code on float32/float64 scalars."""
    return np.tanh(x)


def fast_tanh_sech2(x):
    """``(tanh(x), sech²(x))`` from one reduction; ``sech² = 1 − tanh²`` without cancellation."""
    t = np.tanh(x)
    return t, 1 / np.cosh(x) ** 2


def fast_log1p_unit(x):
    """``log(1 + x)`` for ``0 ≤ x ≤ 1`` only (softplus of a non-positive argument); njit code."""
    return np.log1p(x)


def _horner(coeffs):
    """An njit function ``r ↦ Σ coeffs[i]·r^(n−1−i)`` with the coefficients unrolled as constants."""
    src = "def poly(r):\n    acc = c0\n"
    for i in range(1, len(coeffs)):
        src += f"    acc = c{i} + r * acc\n"
    src += "    return acc\n"
    scope = {f"c{i}": v for i, v in enumerate(coeffs)}
    exec(src, scope)
    return njit(error_model="numpy")(scope["poly"])


def _build(k):
    """The functions for one float type, closed over its typed constants."""
    LOG2E, SHIFT, LN2_HI, LN2_LO = k.LOG2E, k.SHIFT, k.LN2_HI, k.LN2_LO
    LO, HI, V_MIN = k.LO, k.HI, k.SHIFT + k.K_MIN
    ZERO, HALF, ONE, TWO, FOUR, SQRT2 = k.ZERO, k.HALF, k.ONE, k.TWO, k.FOUR, k.SQRT2
    poly, rpoly = _horner(k.P), _horner(k.L)

    @njit(error_model="numpy")
    def reduce(x):
        v = x * LOG2E + SHIFT  # round(x·log2 e) lands in the low mantissa bits of v
        kf = v - SHIFT
        return v, (x - kf * LN2_HI) - kf * LN2_LO

    @njit(error_model="numpy")
    def exp(x):
        xc = HI if x > HI else x
        xc = LO if xc < LO else xc
        v, r = reduce(xc)
        return _scale_by_2k(ONE + (r + r * r * poly(r)), v)

    @njit(error_model="numpy")
    def tanh_sech2(x):
        # e^{−2|x|} = G = 2^k·(1 + q), q = expm1(r), k ≤ 0. tanh|x| = (1 − G)/(1 + G) = N/D with
        # N = (1 − 2^k) − 2^k·q, D = (1 + 2^k) + 2^k·q: 1 ∓ 2^k and 2^k·q are exact and the first
        # term dominates (or is 0), so Fast2Sum gives the rounding errors eN, eD exactly and N/D is
        # corrected to first order: what is left is the division's rounding and q's error. k = 0
        # is the cancellation-free −q/(2 + q). sech² = 1 − tanh² is 4G/(1 + G)² where tanh is near
        # 1 (no cancellation), 1 − tanh² where it is small. G uses exp's split scaling (correct down
        # to subnormals and 0); the tanh formula's 2^k is floored at 2^K_MIN to stay a normal
        # number (tanh rounds to ±1 long before: the floor never changes it).
        ax = abs(x)
        y = -(ax + ax)
        y = LO if y < LO else y
        v, r = reduce(y)
        q = r + r * (r * poly(r))
        two_k = _pow2k(V_MIN if v < V_MIN else v)
        w = two_k * q
        a_n = ONE - two_k
        a_d = ONE + two_k
        n = a_n - w
        d = a_d + w
        e_n = (a_n - n) - w
        e_d = (a_d - d) + w
        t0 = n / d
        t = t0 + (e_n - t0 * e_d) / d
        g = _scale_by_2k(ONE + q, v)
        g1 = ONE + g
        e1 = (ONE - g1) + g  # exact rounding error of 1 + G (Fast2Sum, G ≤ 1)
        s0 = (FOUR * g) / (g1 * g1)
        big = s0 - (TWO * s0 * e1) / g1  # 4G/(1 + G)², first-order corrected for e1
        sech2 = ONE - t * t if t < HALF else big
        return math.copysign(t, x), sech2

    @njit(error_model="numpy")
    def tanh(x):
        return tanh_sech2(x)[0]

    @njit(error_model="numpy")
    def log1p_unit(x):
        w = ONE + x  # in [1, 2]: w − 1 is exact (Sterbenz), so the rounding error of 1 + x is known
        c = (x - (w - ONE)) / w  # log1p(x) = log(w) + c to first order
        big = w > SQRT2
        kf = ONE if big else ZERO
        f = (w * HALF if big else w) - ONE  # exact; |f| ≤ √2 − 1
        s = f / (TWO + f)
        z = s * s
        hfsq = HALF * f * f
        return kf * LN2_HI - ((hfsq - (s * (hfsq + z * rpoly(z)) + (kf * LN2_LO + c))) - f)

    return {"exp": exp, "tanh": tanh, "tanh_sech2": tanh_sech2, "log1p_unit": log1p_unit}


_IMPL = {types.float64: _build(F64), types.float32: _build(F32)}


def _register(stub, name):
    @overload(stub)
    def _ov(x):
        if x not in _IMPL:
            return None
        fn = _IMPL[x][name]
        return lambda x: fn(x)


for _stub, _name in (
    (fast_exp, "exp"),
    (fast_tanh, "tanh"),
    (fast_tanh_sech2, "tanh_sech2"),
    (fast_log1p_unit, "log1p_unit"),
):
    _register(_stub, _name)


# ------------------------------------------------------------------ array entry points (tests, benchmarks)
@njit(error_model="numpy", cache=True)
def exp_array(x):
    """Elementwise :func:`fast_exp` of a 1-D array (a vectorised loop)."""
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = fast_exp(x[i])
    return out


@njit(error_model="numpy", cache=True)
def tanh_array(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = fast_tanh(x[i])
    return out


@njit(error_model="numpy", cache=True)
def tanh_sech2_array(x):
    t = np.empty_like(x)
    s2 = np.empty_like(x)
    for i in range(x.size):
        t[i], s2[i] = fast_tanh_sech2(x[i])
    return t, s2


@njit(error_model="numpy", cache=True)
def log1p_unit_array(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = fast_log1p_unit(x[i])
    return out
