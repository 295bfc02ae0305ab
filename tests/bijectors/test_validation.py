"""Bad input gets a ValueError that names the layer and the problem."""

import numpy as np
import pytest

from rawflow import AdditiveCoupling, AffineCoupling, Chain, MLP, Partition


@pytest.fixture
def layer_and_params():
    layer = AffineCoupling(4, hidden=(5,))
    x = np.random.default_rng(0).normal(size=(3, 4))
    return layer, layer.init(np.random.default_rng(1), x), x


@pytest.mark.parametrize("method", ["forward", "inverse"])
def test_wrong_number_of_dimensions(layer_and_params, method):
    layer, params, x = layer_and_params
    with pytest.raises(ValueError, match=r"AffineCoupling: .*must have 2 dimensions \(N, 4\), got shape \(4,\)"):
        getattr(layer, method)(params, x[0])


@pytest.mark.parametrize("method", ["forward", "inverse"])
def test_wrong_number_of_features(layer_and_params, method):
    layer, params, x = layer_and_params
    with pytest.raises(ValueError, match=r"AffineCoupling: .*size 5 on axis 1, expected 4"):
        getattr(layer, method)(params, np.zeros((3, 5)))


def test_dtype_mismatch_between_params_and_input(layer_and_params):
    layer, params, x = layer_and_params
    with pytest.raises(ValueError, match=r"AffineCoupling: parameter 'net/0/b' has dtype float64 but the input has dtype float32"):
        layer.forward(params, x.astype(np.float32))


def test_integer_input_is_rejected(layer_and_params):
    layer, params, _ = layer_and_params
    with pytest.raises(ValueError, match="AffineCoupling: input must be a floating-point array, got dtype int64"):
        layer.forward(params, np.zeros((2, 4), dtype=np.int64))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("method", ["forward", "inverse"])
def test_nan_and_inf_are_rejected(layer_and_params, bad, method):
    layer, params, x = layer_and_params
    x = x.copy()
    x[1, 2] = bad
    with pytest.raises(ValueError, match="AffineCoupling: .*contains NaN or Inf"):
        getattr(layer, method)(params, x)


def test_not_an_array(layer_and_params):
    layer, params, _ = layer_and_params
    with pytest.raises(ValueError, match="AffineCoupling: input must be an array, got list"):
        layer.forward(params, [[0.0] * 4])


def test_cotangent_shapes_are_checked(layer_and_params):
    layer, params, x = layer_and_params
    z, logdet, cache = layer.forward(params, x)
    with pytest.raises(ValueError, match=r"AffineCoupling: log-det cotangent must have shape \(3,\), got \(3, 1\)"):
        layer.backward(params, cache, z, logdet[:, None])
    with pytest.raises(ValueError, match=r"AffineCoupling: cotangent has size 3 on axis 1"):
        layer.inverse_backward(params, cache, z[:, :3], logdet)


def test_chain_names_itself_and_checks_entry():
    chain = Chain([AdditiveCoupling(3), AffineCoupling(3, flip=True)])
    x = np.ones((2, 3))
    params = chain.init(np.random.default_rng(0), x)
    with pytest.raises(ValueError, match="Chain: input has size 2 on axis 1, expected 3"):
        chain.forward(params, np.ones((2, 2)))


def test_construction_errors():
    with pytest.raises(ValueError, match="unknown scale map 'softmax'"):
        AffineCoupling(4, scale="softmax")
    with pytest.raises(ValueError, match="Partition: mask must copy at least one feature"):
        Partition(np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="Partition: a half split needs at least 2 features"):
        AffineCoupling(1)
    with pytest.raises(ValueError, match="MLP: unknown activation 'gelu'"):
        AffineCoupling(4, activation="gelu")
    with pytest.raises(ValueError, match="AffineCoupling: partition covers 5 features, layer has 4"):
        AffineCoupling(4, partition=Partition.half(5))
    with pytest.raises(ValueError, match=r"AffineCoupling: conditioner maps 2 → 3 features, the partition needs 2 → 4"):
        AffineCoupling(4, conditioner=MLP(2, 3))
