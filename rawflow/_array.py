"""Array-namespace helpers: the same layer code runs on NumPy and CuPy arrays.

A layer takes its namespace from its inputs (``xp = namespace(x)``) and never converts to NumPy.
CuPy is imported only when a CuPy array is actually seen, so ``import rawflow`` works on machines
without CuPy or a GPU.

NumPy *object* arrays of mpmath numbers get a third namespace, :class:`ObjectNumPy`: NumPy for
everything structural (reshapes, ``take``, ``where``, ``@``, sums) and mpmath for the elementwise
functions and the few linear-algebra routines layers call. The reference code then runs unchanged
at any precision: this is how :mod:`rawflow.check.precise` evaluates a layer at 50+ digits without a
second copy of its maths. mpmath (the ``[precise]`` extra) is imported only when such an array is
seen. Everything the layers need that NumPy cannot do on object arrays lives here, in one place.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Array = Any  # numpy.ndarray or cupy.ndarray: they share no protocol type worth naming


def _is_cupy(a: Any) -> bool:
    return type(a).__module__.split(".", 1)[0] == "cupy"


def _is_object(a: Any) -> bool:
    return isinstance(a, np.ndarray) and a.dtype.kind == "O"


def namespace(*arrays: Any):
    """``cupy`` if any argument is a CuPy array; :class:`ObjectNumPy` if one is a NumPy object array
    (mpmath numbers); else ``numpy``."""
    objects = False
    for a in arrays:
        if type(a) is np.ndarray:  # the common case, decided without a module-name lookup
            objects = objects or a.dtype.kind == "O"
        elif _is_cupy(a):
            import cupy

            return cupy
        else:
            objects = objects or _is_object(a)
    return object_numpy() if objects else np


def to_numpy(a: Array) -> np.ndarray:
    """Copy to host. For tests, reports and file I/O only, never inside a layer."""
    if _is_cupy(a):
        return a.get()
    return np.asarray(a)


def solve_triangular(a: Array, b: Array, *, lower: bool, unit_diagonal: bool = False, trans: int = 0):
    """``op(a)⁻¹ b`` for triangular ``a`` (``op(a) = a`` or ``aᵀ`` for ``trans`` 0 or 1, never
    conjugated): ``cupyx.scipy.linalg.solve_triangular`` (cuBLAS ``trsm``) for CuPy arrays; for
    NumPy, BLAS ``?trsm`` directly (:func:`_trsm_columns`) when ``b`` is a C-ordered ``(C, M)``
    matrix of ``a``'s dtype, else SciPy's ``solve_triangular``. Neither checks for a zero diagonal:
    callers (``LULinear``) reject singular factors first.
    """
    if _is_cupy(a):
        from cupyx.scipy.linalg import solve_triangular as st
    elif _is_object(a) or _is_object(b):
        return _object_solve_triangular(a, b, lower, unit_diagonal, trans)
    else:
        if trans in (0, 1) and getattr(b, "ndim", 0) == 2 and b.dtype == a.dtype and b.dtype.char in "fdFD":
            return _trsm_columns(a, b, lower, unit_diagonal, trans)
        from scipy.linalg import solve_triangular as st
    return st(a, b, lower=lower, unit_diagonal=unit_diagonal, trans=trans, check_finite=False)


def _trsm_columns(a, b, lower: bool, unit_diagonal: bool, trans: int):
    """``op(a)⁻¹ b`` through BLAS ``?trsm`` on the transposed view, for C-ordered ``b: (C, M)``.

    ``X = op(A)⁻¹ B`` is the transpose of the right-side solve ``Xᵀ · op(A)ᵀ = Bᵀ``, and ``Bᵀ`` is
    the memory of a C-ordered ``B`` read in Fortran order: so BLAS solves in place on a plain copy
    of ``B``, where SciPy's ``solve_triangular`` (LAPACK ``?trtrs``, left side, Fortran ``B``)
    first converts ``(C, M)`` to column-major and back. Same arithmetic (a substitution, no
    inverse); measured 1.1–2.9× faster at C = 16…512, M = 4096 (``kernels/lu_note.md``).
    """
    from scipy.linalg import get_blas_funcs

    (trsm,) = get_blas_funcs(("trsm",), (a, b))
    out = np.array(b, order="C", copy=True)
    # op(A)ᵀ = Aᵀ when trans = 0 and A when trans = 1; 'T', never the conjugate (complex steps)
    res = trsm(1.0, a, out.T, side=1, lower=int(lower), trans_a=1 - int(trans), diag=int(unit_diagonal),
               overwrite_b=1)
    return res.T


def logabsdet(w: Array) -> Array:
    """``log|det w|`` that stays analytic for complex-step perturbations of a real matrix.

    For real ``w`` this is ``slogdet(w)[1]``. For ``w = w0 + i·h·v`` (complex step) the analytic
    continuation of ``log|det w0|`` is ``log|det w| + i·angle(det w · sign(Re det w))``, which carries
    the first-order term ``h·tr(w0⁻¹ v)`` in its imaginary part.
    """
    xp = namespace(w)
    sign, lad = xp.linalg.slogdet(w)
    if xp.iscomplexobj(w):
        return lad + 1j * xp.angle(sign * xp.sign(sign.real))
    return lad


def softplus(u: Array) -> Array:
    """``log(1 + exp(u))`` without overflow, analytic (complex-step safe) on each branch."""
    xp = namespace(u)
    pos = u.real > 0
    # exp of a non-positive real part never overflows; both branches are the same analytic function.
    e = xp.exp(xp.where(pos, -u, u))
    return xp.where(pos, u, 0) + xp.log1p(e)


def sigmoid(u: Array) -> Array:
    """``1 / (1 + exp(-u))`` without overflow, analytic on each branch."""
    xp = namespace(u)
    pos = u.real > 0
    e = xp.exp(xp.where(pos, -u, u))
    return xp.where(pos, 1 / (1 + e), e / (1 + e))


def sech2(u: Array) -> Array:
    """``1 − tanh²(u) = 4e/(1 + e)²`` with ``e = exp(−2|u|)``, analytic on each branch.

    ``1 − tanh²`` computed from a rounded ``tanh`` loses all relative accuracy as ``|tanh| → 1``
    (float32 gradients of saturated units were off by up to 2e-3); this form keeps it to a few ulp.
    """
    xp = namespace(u)
    e = xp.exp(xp.where(u.real > 0, -2 * u, 2 * u))
    return 4 * e / ((1 + e) * (1 + e))


# ---------------------------------------------------------------------- object arrays (mpmath)
#: ``ObjectNumPy.exp`` refuses arguments beyond ``2^EXP_ARG_BITS`` (see there)
EXP_ARG_BITS = 4096


class ObjectNumPy:
    """NumPy's namespace for object arrays of mpmath numbers (``mpf``), at mpmath's working precision.

    Attributes not defined here are NumPy's: structural operations, arithmetic, comparisons and
    ``@`` already work element by element on Python objects. Defined here: the elementwise
    functions whose NumPy loops call a method the numbers lack (``exp``, ``log``, ``log1p``,
    ``expm1``, ``tanh``, ``sqrt``, ``isfinite``, ``isnan``) and ``linalg.slogdet`` /
    ``linalg.solve`` (Gaussian elimination with partial pivoting). ``log`` and ``sqrt`` of a
    negative number give NaN as NumPy's do, never a complex number. The working precision is
    mpmath's (``mpmath.workdps``); the caller sets it. mpmath's exponents are unbounded, so values
    far beyond float64's range are exact too; ``exp`` of a number beyond ``2^EXP_ARG_BITS`` raises
    ``OverflowError`` (its result's exponent would itself be a ~10^1000-digit integer).
    """

    def __init__(self):
        import mpmath

        self.mpmath = mpmath
        self.linalg = _ObjectLinalg(mpmath)

        def real_only(fn):
            def f(v):
                v = mpmath.mpf(v)
                out = fn(v)
                return out if isinstance(out, mpmath.mpf) else mpmath.nan
            return f

        def capped(fn):
            def f(v):
                v = mpmath.mpf(v)
                if mpmath.isfinite(v) and v != 0 and mpmath.mag(v) > EXP_ARG_BITS:
                    raise OverflowError(
                        f"exp of a number beyond 2^{EXP_ARG_BITS} (|x| ≈ {mpmath.nstr(abs(v), 3)}): its result "
                        "has an exponent with more digits than any computation here can hold"
                    )
                return fn(v)
            return f

        self.exp = np.frompyfunc(capped(mpmath.exp), 1, 1)
        self.expm1 = np.frompyfunc(capped(mpmath.expm1), 1, 1)
        self.tanh = np.frompyfunc(mpmath.tanh, 1, 1)
        self.log = np.frompyfunc(real_only(mpmath.log), 1, 1)
        self.log1p = np.frompyfunc(real_only(mpmath.log1p), 1, 1)
        self.sqrt = np.frompyfunc(real_only(mpmath.sqrt), 1, 1)
        self._isfinite = np.frompyfunc(lambda v: bool(mpmath.isfinite(v)), 1, 1)
        self._isnan = np.frompyfunc(lambda v: bool(mpmath.isnan(v)), 1, 1)

    def __getattr__(self, name: str):
        return getattr(np, name)

    def isfinite(self, a):
        return _as_bool(self._isfinite(a))

    def isnan(self, a):
        return _as_bool(self._isnan(a))

    def __repr__(self) -> str:
        return f"<ObjectNumPy: NumPy on mpmath numbers, {self.mpmath.mp.dps} digits>"


def _as_bool(r):
    return r.astype(bool) if isinstance(r, np.ndarray) else bool(r)


class _ObjectLinalg:
    def __init__(self, mpmath):
        self.mpmath = mpmath

    def slogdet(self, a):
        """``(sign, log|det a|)`` of a square object matrix, by mpmath's determinant."""
        det = self.mpmath.det(self.mpmath.matrix(np.asarray(a).tolist()))
        if det == 0:
            return self.mpmath.mpf(0), self.mpmath.mpf("-inf")
        return self.mpmath.sign(det), self.mpmath.log(abs(det))

    def solve(self, a, b):
        """``a⁻¹ b`` for a square object matrix ``a`` and ``b: (C,)`` or ``(C, K)``: Gaussian
        elimination with partial pivoting, row operations vectorised over the right-hand sides."""
        a = np.array(a, dtype=object, copy=True)
        x = np.array(b, dtype=object, copy=True)
        vector = x.ndim == 1
        if vector:
            x = x[:, None]
        n = a.shape[0]
        for k in range(n):
            p = k + int(np.argmax([abs(v) for v in a[k:, k]]))
            if a[p, k] == 0:
                raise np.linalg.LinAlgError("Singular matrix")
            if p != k:
                a[[k, p]] = a[[p, k]]
                x[[k, p]] = x[[p, k]]
            factors = a[k + 1:, k] / a[k, k]
            a[k + 1:, k:] -= factors[:, None] * a[k, k:][None, :]
            x[k + 1:] -= factors[:, None] * x[k][None, :]
        for k in reversed(range(n)):
            x[k] = (x[k] - a[k, k + 1:] @ x[k + 1:]) / a[k, k]
        return x[:, 0] if vector else x


def _object_solve_triangular(a, b, lower: bool, unit_diagonal: bool, trans: int):
    """``op(a)⁻¹ b`` by substitution on object arrays (``op(a) = aᵀ`` for ``trans = 1``)."""
    t = np.asarray(a).T if trans else np.asarray(a)
    lower = lower != bool(trans)
    x = np.array(b, dtype=object, copy=True)
    n = t.shape[0]
    order = range(n) if lower else range(n - 1, -1, -1)
    done: list[int] = []
    for i in order:
        acc = x[i] - t[i, done] @ x[done] if done else x[i]
        x[i] = acc if unit_diagonal else acc / t[i, i]
        done.append(i)
    return x


_OBJECT_NUMPY: ObjectNumPy | None = None


def object_numpy() -> ObjectNumPy:
    """The :class:`ObjectNumPy` namespace (imports mpmath on first use)."""
    global _OBJECT_NUMPY
    if _OBJECT_NUMPY is None:
        _OBJECT_NUMPY = ObjectNumPy()
    return _OBJECT_NUMPY
