"""Planted bugs must be caught by ``check_bijector``, each by the check meant for it.

Every bug is a tiny subclass of a real layer (or of the dense linear map written here); the
unmodified layer at the same point passes, so each failure is the bug's and not the point's.
"""

import numpy as np
import pytest

from rawflow import BoundedScale, MLP, AffineCoupling, Bijector, ScaleMap
from rawflow._array import logabsdet, namespace
from rawflow.check import check_bijector
from rawflow.check.registry import randomize
from rawflow.bijectors.coupling import AffineTransform

FAST = dict(dtypes=("float64",), second_order=False)


# ---------------------------------------------------------------------- a user-defined bijector
class DenseLinear(Bijector):
    """``z = x Wᵀ + b`` with a dense invertible ``W: (D, D)``; ``log|det| = log|det W|`` per sample.

    Backward (forward VJP): ``gx = gz W``, ``gW = gzᵀ x + (Σ gℓ) W⁻ᵀ``, ``gb = Σ_n gz``.
    Inverse ``x = (z − b) W⁻ᵀ`` (VJP with ``A = W⁻¹``): ``gz = gx A``, ``gW = −gzᵀ x − (Σ gℓ) Aᵀ``,
    ``gb = −Σ_n gz``.
    """

    def __init__(self, features: int):
        self.event_shape = (features,)

    def _init(self, rng, x):
        d = self.event_shape[0]
        return {"w": np.eye(d, dtype=x.dtype), "b": np.zeros(d, dtype=x.dtype)}

    def _forward(self, params, x):
        w = params["w"]
        ld = logabsdet(w)
        return x @ w.T + params["b"], namespace(x).full(x.shape[0], ld, dtype=x.dtype), x

    def _inverse(self, params, z):
        w = params["w"]
        x = np.linalg.solve(w, (z - params["b"]).T).T
        ld = logabsdet(w)
        return x, namespace(z).full(z.shape[0], -ld, dtype=z.dtype), x

    def _weight_grad(self, gz, x):
        return gz.T @ x

    def _backward(self, params, x, gz, glogdet):
        w = params["w"]
        gw = self._weight_grad(gz, x) + glogdet.sum() * np.linalg.inv(w).T
        return gz @ w, {"w": gw, "b": gz.sum(axis=0)}

    def _inverse_backward(self, params, x, gx, glogdet):
        a = np.linalg.inv(params["w"])
        gz = gx @ a
        gw = -self._weight_grad(gz, x) - glogdet.sum() * a.T
        return gz, {"w": gw, "b": -gz.sum(axis=0)}


def dense_case(seed=0, d=4, n=3):
    rng = np.random.default_rng(seed)
    layer = DenseLinear(d)
    x = rng.normal(size=(n, d))
    params = {"w": np.eye(d) + 0.4 * rng.normal(size=(d, d)), "b": rng.normal(size=d)}
    return layer, params, x


def coupling_case(cls=AffineCoupling, seed=3, **kwargs):
    kwargs.setdefault("hidden", (4, 4))
    kwargs.setdefault("activation", "tanh")
    rng = np.random.default_rng(seed)
    layer = cls(4, **kwargs)
    x = rng.normal(size=(3, 4))
    return layer, randomize(layer.init(rng, x), rng, 0.5), x


def failing_checks(report):
    return {(r.check, r.quantity) for r in report.failures()}


# ---------------------------------------------------------------------- controls
def test_controls_pass():
    assert check_bijector(*dense_case())
    assert check_bijector(*coupling_case())


# ---------------------------------------------------------------------- log-det bugs
class WrongLogdetSign(AffineCoupling):
    """Returns −Σ log s forward and +Σ log s inverse: they still cancel exactly."""

    def _forward(self, params, x):
        z, ld, cache = super()._forward(params, x)
        return z, -ld, cache

    def _inverse(self, params, z):
        x, ld, cache = super()._inverse(params, z)
        return x, -ld, cache


class MissingLogdetFactor(AffineCoupling):
    """Drops a factor: ½·Σ log s (as a layer forgetting H·W, or a 2 of a Gaussian, would)."""

    def _forward(self, params, x):
        z, ld, cache = super()._forward(params, x)
        return z, 0.5 * ld, cache

    def _inverse(self, params, z):
        x, ld, cache = super()._inverse(params, z)
        return x, 0.5 * ld, cache


@pytest.mark.parametrize("cls", [WrongLogdetSign, MissingLogdetFactor])
def test_logdet_bugs_fail_the_jacobian_check(cls):
    report = check_bijector(*coupling_case(cls), **FAST)
    fails = failing_checks(report)
    assert ("logdet-jacobian", "logdet") in fails
    # the exact cancellation alone would not have caught them
    assert all(r.passed for r in report.select(check="logdet-cancel"))
    rec = report.select(check="logdet-jacobian", direction="forward")[0]
    assert rec.worst_index is not None and rec.oracle == "complex-step"


# ---------------------------------------------------------------------- gradient bugs
class TransposedMLP(MLP):
    """Returns ``(gᵀh)ᵀ`` for the weight gradient of square layers (shape-compatible, wrong)."""

    def backward(self, params, cache, gy):
        gx, gparams = super().backward(params, cache, gy)
        for p in gparams.values():
            if p["w"].shape[0] == p["w"].shape[1]:
                p["w"] = p["w"].T
        return gx, gparams


class TransposedDense(DenseLinear):
    def _weight_grad(self, gz, x):
        return (gz.T @ x).T


def test_transposed_weight_gradient_in_a_conditioner_is_caught():
    rng = np.random.default_rng(5)
    net = TransposedMLP(2, 4, hidden=(4, 4), activation="tanh")
    layer = AffineCoupling(4, conditioner=net)
    x = rng.normal(size=(3, 4))
    params = randomize(layer.init(rng, x), rng, 0.5)
    fails = failing_checks(check_bijector(layer, params, x, **FAST))
    assert ("gradient", "net/1/w") in fails
    assert ("gradient", "net/0/w") not in fails  # (2 → 4: not square, untouched)


def test_transposed_weight_gradient_in_a_linear_map_is_caught():
    _, params, x = dense_case(seed=1)
    fails = failing_checks(check_bijector(TransposedDense(4), params, x, **FAST))
    assert ("gradient", "w") in fails and ("gradient", "b") not in fails


class DroppedLogdetCotangent(AffineTransform):
    """The VJP forgets the log-det cotangent (a classic: gradients of the NLL lose Σ log s)."""

    def backward(self, tcache, gyb, glogdet):
        return super().backward(tcache, gyb, glogdet * 0)

    def inverse_backward(self, tcache, gxb, glogdet):
        return super().inverse_backward(tcache, gxb, glogdet * 0)


def test_dropped_logdet_cotangent_is_caught_separately():
    layer, params, x = coupling_case()
    layer.transform = DroppedLogdetCotangent("exp")
    report = check_bijector(layer, params, x, **FAST)
    fails = failing_checks(report)
    assert ("gradient", "logdet->net/2/b") in fails and ("gradient", "logdet->input") in fails
    for direction in ("forward", "inverse"):
        assert not any(r.passed for r in report.select(check="gradient", direction=direction, quantity="logdet->net*"))
    # nothing but the gradients notices: the maps, log-dets and structure are right
    assert {check for check, _ in fails} == {"gradient"}


# ---------------------------------------------------------------------- inverse bug
class InverseOffBy1e9(AffineCoupling):
    def _inverse(self, params, z):
        x, ld, cache = super()._inverse(params, z)
        return x + 1e-9, ld, cache


def test_inverse_off_by_1e9_fails_the_round_trip():
    report = check_bijector(*coupling_case(InverseOffBy1e9), **FAST)
    fails = failing_checks(report)
    assert ("roundtrip", "x -> z -> x") in fails and ("roundtrip", "z -> x -> z") in fails
    rec = report.select(check="roundtrip", quantity="x -> z -> x")[0]
    assert rec.max_abs_err == pytest.approx(1e-9, rel=1e-3)


# ---------------------------------------------------------------------- other planted defects
class BatchLeak(AffineCoupling):
    """Centres the conditioner input on the batch mean: samples are no longer independent."""

    def _forward(self, params, x):
        z, ld, cache = super()._forward(params, x)
        return z + 1e-3 * x.mean(axis=0), ld, cache


def test_cross_sample_dependence_is_caught():
    fails = failing_checks(check_bijector(*coupling_case(BatchLeak), **FAST))
    assert ("samples", "cross-sample derivatives") in fails


class Upcasting(AffineCoupling):
    def _forward(self, params, x):
        z, ld, cache = super()._forward(params, x)
        return z.astype(np.float64), ld.astype(np.float64), cache


def test_silent_upcast_of_float32_is_caught():
    report = check_bijector(*coupling_case(Upcasting), dtypes=("float64", "float32"), second_order=False)
    assert ("structure", "dtype preserved") in failing_checks(report)


class CancellingBounded(ScaleMap):
    """``log s = c·tanh(h/c)`` with ``d log s/dh = 1 − t²``: loses relative accuracy when ``|t| → 1``."""

    name = "bounded-cancelling"

    def log_scale(self, h):
        t = namespace(h).tanh(h / 2.0)
        return 2.0 * t, 1 - t * t


class AccurateBounded(CancellingBounded):
    """The same map with ``d log s/dh = sech²(h/c) = 4e/(1+e)²``, ``e = exp(−2|h/c|)``."""

    def log_scale(self, h):
        xp = namespace(h)
        u = h / 2.0
        e = xp.exp(xp.where(u.real > 0, -2 * u, 2 * u))
        return 2.0 * xp.tanh(u), 4 * e / (1 + e) ** 2


def saturated_bounded(scale_map):
    rng = np.random.default_rng(11)
    layer = AffineCoupling(4, scale=scale_map, hidden=(3,), activation="relu")
    x = rng.normal(size=(3, 4))
    params = randomize(layer.init(rng, x), rng, 0.5)
    params["net"]["1"]["w"] *= 0.1
    params["net"]["1"]["b"][:2] = [-14.0, 15.0]  # tanh(h/2) within 1e-6 of ±1
    return layer, params, x


def test_cancelling_derivative_fails_in_float32_and_the_accurate_one_passes():
    kw = dict(dtypes=("float64", "float32"), second_order=False)
    bad = check_bijector(*saturated_bounded(CancellingBounded()), **kw)
    assert any(r.check == "float32" and r.quantity.startswith("grad") for r in bad.failures())
    assert check_bijector(*saturated_bounded(AccurateBounded()), **kw)
    assert check_bijector(*saturated_bounded(BoundedScale(2.0)), **kw)  # the library's map is the accurate one


class NotComplexSafe(AffineCoupling):
    """Correct maths, but ``abs`` on the scales drops a complex step's imaginary part."""

    def _forward(self, params, x):
        z, _, cache = super()._forward(params, x)
        s = cache[1][1]
        return z, np.log(np.abs(s)).sum(axis=1), cache

    def _inverse(self, params, z):
        x, _, cache = super()._inverse(params, z)
        s = cache[1][1]
        return x, -np.log(np.abs(s)).sum(axis=1), cache


def test_non_complex_safe_layer_falls_back_to_richardson():
    layer, params, x = coupling_case(NotComplexSafe, hidden=(3,))
    report = check_bijector(layer, params, x, **FAST)
    assert report, report.failure_report()
    assert {r.oracle for r in report.select(check="gradient")} == {"richardson"}
    assert any("Richardson is the oracle" in n for n in report.meta["notes"])


def test_forcing_the_complex_step_on_it_blames_the_oracle():
    layer, params, x = coupling_case(NotComplexSafe, hidden=(3,))
    report = check_bijector(layer, params, x, oracle="complex-step", **FAST)
    notes = " ".join(r.note for r in report.failures() if r.check == "oracle")
    assert "complex-step disagrees with the others" in notes
