import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness import check_gradients, check_logdet, check_logdet_cancels, check_roundtrip, check_structure
from rawflow.bijectors.logit import Logit


@st.composite
def cases(draw):
    n = draw(st.integers(1, 3))
    shape = draw(st.sampled_from([(3,), (1, 2, 2), (2, 1, 3)]))
    alpha = draw(st.sampled_from([0.0, 0.05, 0.2]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    x = rng.uniform(0.02, 0.98, size=(n, *shape))
    return Logit(shape, alpha=alpha), x, rng


def kappa(layer, x):
    """Inverse amplification: x = (sigmoid(z) − α)/(1 − 2α) scales z's rounding by p·q·|z|/(1 − 2α)."""
    z = layer.forward({}, x)[0]
    p = layer.alpha + (1 - 2 * layer.alpha) * x
    return max(1.0, float(np.max((1 + np.abs(z)) / (p * (1 - p)))))


@given(cases())
def test_roundtrip(case):
    layer, x, _ = case
    check_roundtrip(layer, {}, x, bound_ulps=8, kappa=kappa(layer, x))


@given(cases(), st.sampled_from([np.float32, np.float64]))
def test_logdets_cancel_exactly(case, dtype):
    layer, x, _ = case
    check_logdet_cancels(layer, {}, x.astype(dtype))


@given(cases())
def test_logdet_against_jacobian(case):
    layer, x, _ = case
    check_logdet(layer, {}, x)


@given(cases(), st.sampled_from(["forward", "inverse"]))
def test_gradients(case, direction):
    layer, x, rng = case
    if direction == "inverse":
        x = layer.forward({}, x)[0]
    check_gradients(layer, {}, x, rng, direction)


@given(cases())
def test_structure(case):
    layer, x, rng = case
    check_structure(layer, {}, x, rng)


def test_matches_realnvp_formula():
    x = np.array([[0.25, 0.5]])
    layer = Logit((2,), alpha=0.05)
    z, logdet, _ = layer.forward({}, x)
    p = 0.05 + 0.9 * x
    np.testing.assert_allclose(z, np.log(p / (1 - p)), rtol=1e-15)
    np.testing.assert_allclose(logdet, np.sum(np.log(0.9) - np.log(p) - np.log(1 - p)), rtol=1e-15)


def test_out_of_range_input_is_refused():
    with pytest.raises(ValueError, match=r"Logit: input must lie in \[0, 1\)"):
        Logit((2,), alpha=0.0).forward({}, np.array([[0.0, 0.5]]))
    with pytest.raises(ValueError, match="Logit: alpha must be in"):
        Logit((2,), alpha=0.5)


# ---------------------------------------------------------------- large latents (issue 14, items 2 and 3)
@pytest.mark.parametrize("alpha", [0.0, 0.05])
def test_inverse_vjp_keeps_its_accuracy_at_large_latents(alpha):
    """``gz = p·q·gx/(1 − 2α)`` with ``q = sigmoid(−z)``: relative error ≤ 2 eps per element for
    ``|z|`` up to 40 against a 60-digit evaluation (with ``q = 1 − p``: 1e-12 at z = 10, 4e-8 at 20,
    1e-3 at 30, and 0 instead of 4.7e-18 at 40)."""
    pytest.importorskip("mpmath")
    from rawflow.check.precise import PreciseProbe, to_float

    layer = Logit((4,), alpha=alpha)
    z = np.array([[10.0, 20.0, 30.0, 40.0], [-10.0, -20.0, -30.0, -40.0]])
    gx, gl = np.ones_like(z), np.zeros(2)
    _, _, cache = layer.inverse({}, z)
    gz, _ = layer.inverse_backward({}, cache, gx, gl)
    want = to_float(PreciseProbe(layer, {}, z, gx, gl, "inverse").evaluate()["grad:input"])
    assert np.all(want > 0) and want[0, 3] < 1e-17
    rel = np.abs(gz - want) / want
    assert rel.max() <= 2 * np.finfo(np.float64).eps, np.array2string(rel, precision=2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inverse_then_forward_cancels_exactly_iff_the_latent_round_trip_is_exact(dtype):
    """The statement in the module docstring: inverse at z, then forward at the x it returned,
    cancel bit for bit exactly when that forward returns z bit for bit; otherwise the sum is
    ``ℓ(z') − ℓ(z)``, within ``Σ|tanh(z/2)|·|z' − z|`` plus the two evaluations' rounding."""
    eps = float(np.finfo(dtype).eps)
    rng = np.random.default_rng(0)
    layer = Logit((2,), alpha=0.05)
    z = (rng.normal(size=(1000, 2)) * 2.5).astype(dtype)  # stays inside the forward's domain
    x, ld_inv, _ = layer.inverse({}, z)
    z2, ld, _ = layer.forward({}, x)
    total = (ld + ld_inv).astype(np.float64)
    same = np.all(z2 == z, axis=1)
    assert same.any() and (~same).any()  # both kinds of rows occur
    assert np.all(total[same] == 0)
    z64, dz = z.astype(np.float64), np.abs(z2.astype(np.float64) - z.astype(np.float64))
    terms = np.abs(np.log1p(-0.1)) + np.logaddexp(0, z64) + np.logaddexp(0, -z64)
    bound = np.sum(np.abs(np.tanh(z64 / 2)) * dz, axis=1) + 4 * eps * terms.sum(axis=1)
    assert np.all(np.abs(total[~same]) <= bound[~same])
