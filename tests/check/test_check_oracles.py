"""The derivative oracles on functions with known Jacobians, and the records they feed."""

import json

import numpy as np
import pytest

from rawflow.check import Report, compare, oracles

EPS = np.finfo(np.float64).eps


def f_analytic(w):
    """R³ → R⁴, written complex-safe."""
    x, y, z = w[0], w[1], w[2]
    return np.stack([np.sin(x) * y, np.exp(x * y), z**3 / (1 + x * x), np.log(y * y + 1) * z])


def jac_analytic(w):
    x, y, z = w
    return np.array(
        [
            [np.cos(x) * y, np.sin(x), 0.0],
            [y * np.exp(x * y), x * np.exp(x * y), 0.0],
            [-2 * x * z**3 / (1 + x * x) ** 2, 0.0, 3 * z * z / (1 + x * x)],
            [0.0, 2 * y * z / (y * y + 1), np.log(y * y + 1)],
        ]
    )


POINTS = [np.array([0.3, -1.2, 0.7]), np.array([-2.0, 0.5, 1.5]), np.array([1.1, 0.9, -0.4])]


@pytest.mark.parametrize("w", POINTS)
def test_complex_step_is_exact_to_round_off(w):
    got = oracles.jacobian(f_analytic, w, "complex-step")
    want = jac_analytic(w)
    # Each entry is one short analytic expression: a few roundings of its own size.
    np.testing.assert_allclose(got, want, rtol=8 * EPS, atol=8 * EPS)


@pytest.mark.parametrize("w", POINTS)
@pytest.mark.parametrize("method, bar", [("richardson", 1e-11), ("central", 1e-9)])
def test_difference_oracles_within_their_truncation(w, method, bar):
    # Richardson: O(h⁴) with h = eps^(1/5) ≈ 7e-4, and ~eps/h round-off, ≈ 1e-12; central: h² ≈ 4e-11.
    got = oracles.jacobian(f_analytic, w, method)
    want = jac_analytic(w)
    assert np.max(np.abs(got - want)) <= bar * max(1.0, np.max(np.abs(want)))


def test_richardson_error_estimate_brackets_the_true_error():
    w = POINTS[1]
    for r in range(3):
        v = np.eye(3)[r]
        res = oracles.richardson(f_analytic, w, v)
        true_err = np.abs(res.estimate - jac_analytic(w)[:, r])
        # the estimate plus the round-off floor bounds the true error
        floor = 64 * EPS * np.abs(f_analytic(w)) / res.h
        assert np.all(true_err <= res.error + floor)
        assert not res.nonsmooth.any()


def relu_square(w):
    """Piecewise analytic, branch picked on the real part (as rawflow's activations are)."""
    return np.where(w.real > 0, w * w, -0.5 * w)


@pytest.mark.parametrize("w0", [1e-12, -1e-12, 3e-6, 0.4])
def test_complex_step_exact_next_to_a_kink(w0):
    w = np.array([w0])
    v = np.array([1.0])
    want = 2 * w0 if w0 > 0 else -0.5
    assert oracles.complex_step(relu_square, w, v)[0] == pytest.approx(want, rel=EPS, abs=0)


@pytest.mark.parametrize("w0", [1e-12, -3e-6, 1e-4, -2e-4])
def test_kinks_inside_the_step_are_flagged(w0):
    w, v = np.array([w0]), np.array([1.0])
    h = oracles.RICHARDSON_STEP
    res = oracles.richardson(relu_square, w, v, h)
    kinks = oracles.complex_step_kinks(relu_square, w, v, h)
    # The difference oracles straddle the kink and are wrong by O(slope jump)...
    assert abs(res.estimate[0] - oracles.complex_step(relu_square, w, v)[0]) > 1e-6
    # ...and the complex-step test sees the kink, whatever its distance inside the step.
    assert kinks[0]


def test_kinks_outside_the_step_are_not_flagged():
    w, v = np.array([0.05]), np.array([1.0])
    assert not oracles.complex_step_kinks(relu_square, w, v, oracles.RICHARDSON_STEP)[0]
    assert not oracles.richardson(relu_square, w, v).nonsmooth[0]


def not_complex_safe(w):
    """Correct real maths, but ``abs`` drops the complex step's imaginary part."""
    return np.stack([np.abs(w[0]) * w[1], w[1] ** 2])


def test_cross_check_blames_a_complex_step_on_non_complex_safe_code():
    w = np.array([-0.7, 1.3])
    est = {m: oracles.jacobian(not_complex_safe, w, m) for m in oracles.METHODS}
    rtol = {"complex-step": 0.0, "richardson": 1e-10, "central": 1e-8}
    results = oracles.cross_check(est, rtol=rtol, scale=np.abs(est["richardson"]).max(), noise={})
    assert oracles.blame(results) == ["complex-step"]


def test_cross_check_blames_a_broken_difference_oracle(monkeypatch):
    w = POINTS[0]
    est = {m: oracles.jacobian(f_analytic, w, m) for m in oracles.METHODS}

    def broken_central(f, w, v, h=oracles.CENTRAL_STEP):  # forgets the factor 2 of 2h
        return (f(w + h * v) - f(w - h * v)) / h

    monkeypatch.setattr(oracles, "central_difference", broken_central)
    est["central"] = oracles.jacobian(f_analytic, w, "central")
    rtol = {"complex-step": 0.0, "richardson": 1e-10, "central": 1e-8}
    results = oracles.cross_check(est, rtol=rtol, scale=np.abs(est["complex-step"]).max(), noise={})
    assert oracles.blame(results) == ["central"]


def test_complex_step_refuses_a_function_returning_real():
    with pytest.raises(TypeError, match="complex-safe"):
        oracles.complex_step(lambda w: np.real(w) * 2, np.array([1.0]), np.array([1.0]))


# ---------------------------------------------------------------------- records
def test_compare_reports_worst_element_and_ulps():
    expected = np.array([[1.0, 2.0], [3.0, 4.0]])
    actual = expected.copy()
    actual[1, 0] += 4 * np.spacing(3.0)
    rec = compare(actual, expected, rtol=EPS, layer="L", direction="forward", check="c", quantity="q",
                  oracle="o", step=None)
    assert not rec.passed
    assert rec.worst_index == [1, 0]
    assert rec.ulps == pytest.approx(4.0)
    assert rec.actual == actual[1, 0] and rec.expected == 3.0
    assert rec.worst[0]["index"] == [1, 0]


def test_compare_fails_on_nan_and_honours_the_mask():
    expected = np.ones(3)
    actual = np.array([1.0, np.nan, 1.0])
    kw = dict(rtol=1e-12, layer="L", direction="-", check="c", quantity="q", oracle="o", step=None)
    assert not compare(actual, expected, **kw).passed
    assert compare(actual, expected, mask=np.array([True, False, True]), **kw).passed


def test_report_is_json_able_and_tabulates():
    kw = dict(direction="forward", check="gradient", quantity="input", oracle="complex-step", step=1e-30)
    good = compare(np.ones(2), np.ones(2), rtol=1e-13, layer="A", **kw)
    bad = compare(np.array([1.0, 1.1]), np.ones(2), rtol=1e-13, layer="B", **kw)
    rep = Report([good, bad])
    assert not rep and rep.failures() == [bad]
    data = json.loads(rep.to_json())
    assert data["passed"] is False and len(data["records"]) == 2
    assert "FAIL" in rep.grid() and "A" in rep.grid()
    assert "worst at (1,)" in rep.failure_report()
    with pytest.raises(AssertionError, match="B forward gradient"):
        rep.raise_if_failed()
