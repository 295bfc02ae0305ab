"""``rawflow._array.ObjectNumPy``: NumPy object arrays of mpmath numbers run the reference code.

The namespace is what lets :mod:`rawflow.check.precise` evaluate every layer's own code at 50+
digits. Checked here: it is picked for object arrays; its elementwise functions and linear algebra
agree with mpmath at the working precision (to ~10 units of it); ``log``/``sqrt`` of a negative number
are NaN as in NumPy (never a silent complex number); ``exp`` refuses arguments whose result has an
unrepresentable exponent; and every registered layer runs on object arrays unchanged, landing
within a few float64 roundings of its float64 run.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

mpmath = pytest.importorskip("mpmath")

from rawflow import tree  # noqa: E402
from rawflow._array import ObjectNumPy, logabsdet, namespace, sech2, sigmoid, softplus, solve_triangular  # noqa: E402
from rawflow.check import registry  # noqa: E402
from rawflow.check.precise import to_float, to_mp  # noqa: E402

DPS = 50
TOL = mpmath.mpf(10) ** (-(DPS - 2))


def close(a, b) -> bool:
    """Elementwise |a − b| ≤ 1e-48·max(1, |b|) (object arrays or mpmath numbers)."""
    a, b = np.atleast_1d(np.asarray(a, dtype=object)), np.atleast_1d(np.asarray(b, dtype=object))
    return all(abs(u - v) <= TOL * max(1, abs(v)) for u, v in zip(a.ravel(), b.ravel()))


def test_object_arrays_get_the_mpmath_namespace():
    x = to_mp(np.array([0.5, -2.0]))
    assert isinstance(namespace(x), ObjectNumPy)
    assert isinstance(namespace(np.ones(2), x), ObjectNumPy)
    assert namespace(np.ones(2)) is np
    assert namespace(x).ones is np.ones  # everything else is NumPy's


@given(st.lists(st.floats(-30, 30), min_size=1, max_size=6))
def test_elementwise_functions_and_helpers_match_mpmath(values):
    with mpmath.workdps(DPS):
        x = to_mp(np.array(values))
        xp = namespace(x)
        v = [mpmath.mpf(t) for t in values]
        assert close(xp.exp(x), [mpmath.exp(t) for t in v])
        assert close(xp.tanh(x), [mpmath.tanh(t) for t in v])
        assert close(xp.log1p(xp.exp(x)), [mpmath.log1p(mpmath.exp(t)) for t in v])
        assert close(softplus(x), [mpmath.log(1 + mpmath.exp(t)) for t in v])
        assert close(sigmoid(x), [1 / (1 + mpmath.exp(-t)) for t in v])
        assert close(sech2(x), [mpmath.sech(t) ** 2 for t in v])
        assert all(type(t) is mpmath.mpf for t in softplus(x))  # nothing fell back to float


def test_real_functions_of_negative_numbers_are_nan_not_complex():
    xp = namespace(to_mp(np.array([1.0])))
    x = to_mp(np.array([-1.0, 4.0]))
    for fn in (xp.log, xp.sqrt):
        out = fn(x)
        assert mpmath.isnan(out[0]) and not isinstance(out[0], mpmath.mpc)
    assert xp.log1p(to_mp(np.array([-2.0])))[0] != xp.log1p(to_mp(np.array([-2.0])))[0]  # NaN
    assert list(xp.isnan(xp.log(x))) == [True, False]
    assert list(xp.isfinite(to_mp(np.array([np.inf, 1.0, np.nan])))) == [False, True, False]


def test_exp_refuses_arguments_whose_result_has_no_representable_exponent():
    xp = namespace(to_mp(np.array([1.0])))
    big = np.array([mpmath.mpf(2) ** 5000], dtype=object)
    with pytest.raises(OverflowError, match="exp of a number beyond 2\\^4096"):
        xp.exp(big)
    assert mpmath.isfinite(xp.exp(to_mp(np.array([1e300])))[0])  # e^(1e300): a large exponent, fine


@given(st.integers(1, 5), st.integers(1, 3), st.booleans(), st.booleans(), st.sampled_from([0, 1]),
       st.integers(0, 2**31))
def test_triangular_solves_match_mpmath(c, m, lower, unit, trans, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(c, c)) + 3 * np.eye(c)
    b = rng.normal(size=(c, m))
    with mpmath.workdps(DPS):
        am, bm = to_mp(a), to_mp(b)
        x = solve_triangular(am, bm, lower=lower, unit_diagonal=unit, trans=trans)
        t = np.tril(am) if lower else np.triu(am)
        if unit:
            t = t - np.diag(np.diag(t)) + np.eye(c, dtype=object)
        op = t.T if trans else t
        assert close(op @ x, bm)


@given(st.integers(1, 5), st.integers(0, 2**31))
def test_dense_solve_and_slogdet_match_mpmath(c, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(c, c))
    b = rng.normal(size=(c, 2))
    with mpmath.workdps(DPS):
        am = to_mp(a)
        xp = namespace(am)
        x = xp.linalg.solve(am, to_mp(b))
        assert close(am @ x, to_mp(b))
        assert close(xp.linalg.solve(am, to_mp(b[:, 0])), x[:, 0])
        det = mpmath.det(mpmath.matrix(am.tolist()))
        assert close(logabsdet(am), mpmath.log(abs(det)))
        assert xp.linalg.slogdet(am)[0] == mpmath.sign(det)
    with pytest.raises(np.linalg.LinAlgError):
        xp.linalg.solve(to_mp(np.zeros((2, 2))), to_mp(np.ones(2)))


@pytest.mark.parametrize("case", registry.cases(), ids=lambda c: c.name)
def test_every_registered_layer_runs_on_mpmath_arrays(case):
    """The unchecked methods on object arrays, both directions and both VJPs; results are mpmath
    numbers and, rounded, within a few float64 roundings of the float64 run (per-element term sizes
    are the precise oracle's business; here 1e-12 of the block's size catches a wrong namespace)."""
    layer = case.layer
    with mpmath.workdps(40):
        pm, xm = tree.map(to_mp, case.params), to_mp(case.x)
        z, ld, cache = layer._forward(pm, xm)
        x2, ld2, cache2 = layer._inverse(pm, z)
        gz = to_mp(np.ones(z.shape))
        gx, gp = layer._backward(pm, cache, gz, to_mp(np.ones(z.shape[0])))
        gzi, gpi = layer._inverse_backward(pm, cache2, to_mp(np.ones(case.x.shape)), to_mp(np.ones(z.shape[0])))
    z64, ld64, c64 = layer.forward(case.params, case.x)
    gx64, gp64 = layer.backward(case.params, c64, np.ones(z64.shape), np.ones(z64.shape[0]))
    pairs = [(z, z64), (ld, ld64), (gx, gx64)] + [(gp_leaf, dict(tree.leaves(gp64))[k]) for k, gp_leaf in tree.leaves(gp)]
    for exact, got in pairs:
        exact = np.asarray(exact, dtype=object)
        assert all(isinstance(v, (mpmath.mpf, int)) for v in exact.ravel())
        e = to_float(exact)
        assert np.abs(e - got).max(initial=0) <= 1e-12 * max(1.0, np.abs(e).max(initial=0))
    assert np.abs(to_float(x2) - case.x).max() <= 1e-30 * max(1.0, np.abs(case.x).max())  # 40-digit round trip
