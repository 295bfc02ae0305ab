"""``rawflow.check.precise`` and ``rawflow check --stress`` (issue 14, items 6–8).

The stress families run here whole except ``batch``, of which a cross-section of cheap layers runs
(every registered case at both stress points is ``rawflow check --stress``, ~1–2 min). Planted
defects show that each part can fail: the two numerical bugs the issue found (caught by the
precise records, not by a bound wide enough to hide them), a VJP whose formula is wrong (caught
by the oracle's own maths check, since the oracle runs the same code), a kernel that loses
precision, and ``log_prob`` returning NaN.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

pytest.importorskip("mpmath")

from rawflow import testing  # noqa: E402
from rawflow.bijectors.coupling import AffineTransform  # noqa: E402
from rawflow.bijectors.linear import LULinear  # noqa: E402
from rawflow.bijectors.logit import Logit  # noqa: E402
from rawflow.check import check_precise, run_check_cli, stress  # noqa: E402
from rawflow.check.precise import C_PRECISE  # noqa: E402
from rawflow.models.model import FlowModel  # noqa: E402

BATCH_SAMPLE = ["affine-exp-relu", "chain-reconstruct", "saturated-sigmoid", "actnorm-image", "logit-image",
                "lu-near-singular", "dense-1x1conv", "realnvp-flow", "split", "squeeze"]


@pytest.mark.parametrize("family", ["linear", "scales", "logit", "model", "kernels"])
def test_stress_family_passes(family):
    report = stress.run_stress([family])
    assert report, report.failure_report()
    precise = [r for r in report if r.check == "precise"]
    assert precise and all(r.bound is not None and r.bound > 0 or r.max_abs_err == 0 for r in precise)
    assert {r.dtype for r in precise} == {"float64", "float32"}
    for r in precise:  # the bar is a small constant times the conditioning bound eps·T
        assert r.tolerance == C_PRECISE * np.finfo(r.dtype).eps
    assert any(r.check == "precise-maths" for r in report) and any(r.check == "precise-oracle" for r in report)
    if family == "model":  # with log p far from the data against unbounded exponents
        value = report.select(layer="far-log-prob", quantity="representable: value")
        assert value and value[0].n >= 4  # some points have a float64 log p …
        assert report.select(layer="far-log-prob", quantity="beyond float64: -inf")[0].n >= 30  # … most do not


def test_stress_batch_family_cross_section():
    names = [f"{n}@{k}" for n in BATCH_SAMPLE for k in ("n1", "mixed")]
    report = stress.run_stress(["batch"], names)
    assert {r.layer.split("[")[0] for r in report} == set(names)
    assert report, report.failure_report()


# ---------------------------------------------------------------------- planted defects
class _RecomputedV(LULinear):
    """LULinear before issue 14: the inverse cache without the solve's V."""

    def _inverse(self, params, z):
        x, ld, (cols, _, factors, w) = super()._inverse(params, z)
        return x, ld, (cols, None, factors, w)


class _OneMinusP(Logit):
    """Logit before issue 14: q = 1 − p in the inverse."""

    def _inverse(self, params, z):
        x, ld, (p, _) = super()._inverse(params, z)
        return x, ld, (p, 1 - p)


def _case(name):
    return next(c for c in stress.cases() if c.name == name)


def test_precise_check_catches_the_recomputed_v():
    case = _case("lu-log-scale-18")
    bad = _RecomputedV(4, seed=5)
    report = check_precise(bad, case.params, case.x, z=case.z, structure=False)
    worst = report.worst(check="precise", dtype="float64")
    assert not report and worst.quantity.endswith("lower") and worst.direction == "inverse"
    assert worst.max_rel_err / np.finfo(np.float64).eps > 1e4  # errors ≫ the conditioning bound


def test_precise_check_catches_one_minus_p_through_the_output_cotangent_alone():
    case = _case("logit-alpha0.05")
    report = check_precise(_OneMinusP((5,), alpha=0.05), {}, case.x, z=case.z, structure=False)
    failed = {(r.quantity, r.dtype) for r in report.failures()}
    assert ("grad output->input", "float64") in failed
    assert ("grad input", "float64") not in failed  # with the log-det's cotangent the error hides in T


class _WrongVJP(AffineTransform):
    def backward(self, tcache, gyb, glogdet):
        gx, gh = super().backward(tcache, gyb, glogdet)
        return gx, gh * (1 + 1e-9)


def test_oracle_maths_check_catches_a_wrong_vjp_that_float_and_mp_share():
    x, h = stress.transform_points("exp", (3, 4), seed=1)
    report = check_precise(stress.TransformLayer(_WrongVJP("exp")), {"h": h}, x, structure=False)
    assert not report.failures() or {r.check for r in report.failures()} == {"precise-maths"}
    maths = report.select(check="precise-maths", direction="forward")[0]
    assert not maths.passed and "grad:h" in maths.note
    assert report.worst(check="precise").passed  # the float results match the (same, wrong) code


class _Float32Exp(AffineTransform):
    """A 'kernel' that evaluates exp in float32 whatever the dtype."""

    def _params(self, h):
        log_s, dlog_s, s, t = super()._params(h)
        return log_s, dlog_s, s.astype(np.float32).astype(s.dtype), t


def test_a_kernel_that_loses_precision_fails_against_the_reference_oracle():
    x, h = stress.transform_points("exp", (3, 4), seed=2)
    ref = stress.TransformLayer(AffineTransform("exp"))
    report = check_precise(ref, {"h": h}, x, variants={"reference": ref, "lossy": stress.TransformLayer(_Float32Exp())},
                           structure=False)
    failed = {r.layer for r in report.failures()}
    assert failed == {f"{ref.name}[lossy]"}


def test_log_prob_check_catches_nan(monkeypatch):
    """The code before issue 14: a plain ``x_b·s`` (``0·inf = NaN``) and no −inf rule."""
    from rawflow.bijectors import coupling

    monkeypatch.setattr(coupling, "_scaled", lambda a, log_s, s, inverse=False: a / s if inverse else a * s)
    model, params = stress.far_model()

    class Old(FlowModel):
        def log_prob(self, params, x):
            with np.errstate(all="ignore"):
                z, ld, _ = self.bijector.forward(params["flow"], x)
                return self.prior.log_prob(params["prior"], z, check_finite=False)[0] + ld

    points = stress.FAR[[2, 3, 9, 40, 41, 47]]  # three with a float64 log p, three that gave NaN
    report = stress.check_log_prob(Old(model.bijector, model.prior), params, points)
    assert {r.quantity for r in report.failures()} == {"no NaN", "beyond float64: -inf"}


# ---------------------------------------------------------------------- strategies for users' layers
@settings(max_examples=4)
@given(testing.ill_conditioned_lu())
def test_strategy_ill_conditioned_lu(case):
    assert 1e5 < case.options["kappa"] < 2e12
    assert stress.check_case(case)


@settings(max_examples=4)
@given(testing.ill_conditioned_dense())
def test_strategy_ill_conditioned_dense(case):
    w = case.params["weight"]
    assert np.array_equal(w.astype(np.float32).astype(np.float64), w) and np.linalg.cond(w) > 5e5
    assert stress.check_case(case)


@settings(max_examples=4)
@given(testing.stress_transforms())
def test_strategy_stress_transforms(case):
    assert "numba" in case.variants
    assert stress.check_case(case)


@settings(max_examples=4)
@given(testing.logit_edges())
def test_strategy_logit_edges(case):
    assert stress.check_case(case)


@settings(max_examples=3)
@given(testing.stress_cases(["logit", "linear"]))
def test_strategy_builtin_stress_cases(case):
    assert stress.check_case(case, dtypes=("float64",))


def test_dense_weight_hits_its_condition_number_exactly_in_float32():
    rng = np.random.default_rng(0)
    for cond in (1e6, 1e9, 1e12):
        w = stress.dense_weight(4, cond, rng)
        assert np.array_equal(w.astype(np.float32).astype(np.float64), w)
        assert 0.5 < np.linalg.cond(w) / cond < 2
    with pytest.raises(ValueError, match="beyond float32's integers"):
        stress.dense_weight(4, 1e16, rng)


# ---------------------------------------------------------------------- the command line
def test_check_stress_command_line(capsys, tmp_path):
    assert run_check_cli(["--stress", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "lu-cond1e+12" in listed and "numba-actnorm-image" in listed and "far-log-prob" in listed
    out = tmp_path / "stress.json"
    assert run_check_cli(["--stress", "--family", "logit", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "worst err/(eps·T)" in text and "all " in text and "s CPU" in text
    assert "layer family" in text and "Logit " in text
    assert '"bound"' in out.read_text()
    assert run_check_cli(["--stress", "--case", "nope"]) == 2
    assert run_check_cli(["--family", "kernels"]) == 2  # a stress family without --stress


def test_check_bijector_adds_the_precise_records_where_the_complex_step_is_limited():
    """From κ = 1e8 on (and with mpmath), check_bijector's report includes the 60-digit records;
    its inverse runs at f(x), not at a generic z, so the recomputed V of item 1 shows there only
    through an oracle cross-check: the stress points' generic z is what exposes it."""
    from rawflow.check import check_bijector

    case = _case("lu-log-scale-18")  # κ ≈ 1.6e8
    report = check_bijector(case.layer, case.params, case.x, second_order=False)
    assert report.meta["kappa_max"] >= 1e8 and report.select(check="precise")
    assert report, report.failure_report()
    easy = _case("lu-cond1e+06")
    assert not check_bijector(easy.layer, easy.params, easy.x, second_order=False).select(check="precise")
