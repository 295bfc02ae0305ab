"""``glow_vectors``: Glow's step of flow on ``(N, D)`` data (ActNorm → LU linear map → affine coupling).

Layer order and options, ActNorm's data-dependent start, log-det against the Jacobian, round trips,
and every gradient (input, each parameter, the log-det cotangent, both directions) against central
differences and the complex step, at random parameters; the model's NLL gradient too."""

import numpy as np
import pytest

from harness import check_gradients, check_logdet, check_logdet_cancels, check_roundtrip, randomize, rel_err
from rawflow import tree
from rawflow.distributions.priors import StandardNormal
from rawflow.models.architectures import glow_vectors
from rawflow.models.model import FlowModel

from test_model import cs_param_grads


def test_layers_and_options():
    chain = glow_vectors(3, K=2, hidden=(5,), scale="exp", activation="tanh")
    names = [type(layer).__name__ for layer in chain.layers]
    assert names == ["ActNorm", "LULinear", "AffineCoupling"] * 2
    couplings = chain.layers[2::3]
    assert [c.transform.scale.name for c in couplings] == ["exp", "exp"]
    assert couplings[0].net.widths == [1, 5, 4] and couplings[0].net.activation.name == "tanh"
    assert [tuple(c.partition.idx_a) for c in couplings] == [(0,), (1, 2)]  # alternating halves
    assert glow_vectors(4).layers[2].transform.scale.name == "sigmoid"  # Glow's sigmoid(h + 2) by default
    # each LU layer gets its own fixed permutation and sign
    a, b = chain.layers[1], chain.layers[4]
    assert not (np.array_equal(a.perm, b.perm) and np.array_equal(a.sign, b.sign))


def test_actnorm_starts_from_the_data():
    rng = np.random.default_rng(0)
    x = rng.normal(loc=[3.0, -1.0], scale=[0.5, 4.0], size=(256, 2))
    chain = glow_vectors(2, K=1, hidden=(4,))
    params = chain.init(rng, x)
    h = chain.layers[0].forward(params["0"], x)[0]
    np.testing.assert_allclose(h.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(h.std(axis=0), 1, rtol=1e-5)  # ActNorm's eps in the scale


@pytest.mark.parametrize("scale", ["sigmoid", "exp"])
def test_logdet_roundtrip_and_gradients_at_random_parameters(scale):
    rng = np.random.default_rng(3)
    chain = glow_vectors(3, K=2, hidden=(4,), scale=scale)
    x = rng.normal(size=(5, 3))
    params = randomize(chain.init(rng, x), rng, 0.3)
    check_logdet(chain, params, x)
    check_logdet_cancels(chain, params, x, exact=False)
    # six layers, two LU maps with cond(W) of a few units: a few dozen ulps of the largest value
    check_roundtrip(chain, params, x, bound_ulps=64)
    for direction in ("forward", "inverse"):
        check_gradients(chain, params, x, rng, direction)


def test_model_nll_gradient_matches_the_complex_step():
    rng = np.random.default_rng(4)
    model = FlowModel(glow_vectors(2, K=2, hidden=(3,)), StandardNormal((2,)))
    x = rng.normal(size=(6, 2))
    params = randomize(model.init(rng, x), rng, 0.4)
    _, grads = model.nll_and_grad(params, x)
    ref = cs_param_grads(model, params, x)
    errors = {path: rel_err(tree.get(grads, path), g) for path, g in ref.items()}
    assert max(errors.values()) <= 1e-13, errors


@pytest.mark.parametrize("kwargs,match", [(dict(features=1), "features"), (dict(features=3, K=0), "K must"),
                                          (dict(features=3, K=1.5), "K must")])
def test_bad_arguments_name_the_builder(kwargs, match):
    with pytest.raises(ValueError, match=f"glow_vectors: .*{match}"):
        glow_vectors(**kwargs)
