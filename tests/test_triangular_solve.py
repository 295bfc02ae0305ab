"""``rawflow._array.solve_triangular``'s NumPy path: BLAS ``?trsm`` on the transposed view.

Oracle-free and rigorous: forward/back substitution is componentwise backward stable (Higham,
*Accuracy and Stability of Numerical Algorithms*, Thm 8.5), so the computed ``X`` satisfies
``|op(T)·X − B| ≤ γ_{C+1} · |op(T)|·|X|`` elementwise, ``γ_k = k·u/(1 − k·u)``, ``u`` the unit
roundoff of the dtype: γ_C for substitution with divisions, plus one rounding because OpenBLAS
multiplies by the diagonal's precomputed reciprocal (measured: a 1×1 solve is off by 1.4 u).
Complex arithmetic: each multiply-add carries up to 2√2 u instead of u (Higham §3.6), so the
complex bound is γ_{C+1} with u → 2√2 u.
The residual is evaluated in a wider type (float64 / complex128 for single precision, long double
where it is extended for double) so its own rounding does not count. Also: the result has ``b``'s
shape, dtype and C order, ``b`` is not modified, and transposes are never conjugated (the
complex-step oracle needs an analytic solve).
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from rawflow._array import solve_triangular


def _wide(dtype):
    if np.dtype(dtype).kind == "c":
        return np.clongdouble if np.finfo(np.longdouble).nmant >= 63 else np.complex128
    return np.longdouble if np.finfo(np.longdouble).nmant >= 63 else np.float64


@given(
    dtype=st.sampled_from([np.float32, np.float64, np.complex64, np.complex128]),
    c=st.integers(1, 24),
    m=st.integers(1, 40),
    lower=st.booleans(),
    unit=st.booleans(),
    trans=st.sampled_from([0, 1]),
    seed=st.integers(0, 2**16),
)
def test_trsm_path_is_backward_stable_and_leaves_b_alone(dtype, c, m, lower, unit, trans, seed):
    rng = np.random.default_rng(seed)
    t = rng.normal(size=(c, c)) + np.diag(rng.choice([-1, 1], c) * rng.uniform(0.5, 2, c))
    b = rng.normal(size=(c, m))
    if np.dtype(dtype).kind == "c":
        t = t + 1e-2j * rng.normal(size=(c, c))
        b = b + 1e-2j * rng.normal(size=(c, m))
    t = (np.tril(t) if lower else np.triu(t)).astype(dtype)
    b = b.astype(dtype)
    b0 = b.copy()
    x = solve_triangular(t, b, lower=lower, unit_diagonal=unit, trans=trans)
    assert x.shape == b.shape and x.dtype == b.dtype and x.flags.c_contiguous
    assert np.array_equal(b, b0)
    w = _wide(dtype)
    tt = t.astype(w)
    if unit:
        np.fill_diagonal(tt, 1)
    op = tt.T if trans else tt  # a plain transpose, never conjugated
    resid = np.abs(op @ x.astype(w) - b.astype(w))
    u = np.finfo(dtype).eps / 2 * (2 * np.sqrt(2) if np.dtype(dtype).kind == "c" else 1)
    gamma = (c + 1) * u / (1 - (c + 1) * u)
    bound = gamma * (np.abs(op) @ np.abs(x.astype(w)))
    assert np.all(resid <= bound + np.finfo(dtype).tiny), float(np.max(resid / (bound + np.finfo(dtype).tiny)))


def test_other_layouts_fall_back_to_scipy():
    rng = np.random.default_rng(0)
    t = np.triu(rng.normal(size=(4, 4))) + 4 * np.eye(4)
    v = rng.normal(size=4)
    x = solve_triangular(t, v, lower=False)  # 1-D right-hand side: SciPy's path
    assert np.allclose(t @ x, v, rtol=0, atol=1e-13)
    b32 = rng.normal(size=(4, 3)).astype(np.float32)  # dtype differs from t's: SciPy's path
    x = solve_triangular(t, b32, lower=False)
    assert np.allclose(t @ x, b32, rtol=0, atol=1e-5)
