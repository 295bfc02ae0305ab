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
