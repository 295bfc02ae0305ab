import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness import _fd_scalar_grad, randomize, rel_err
from rawflow import MLP, tree


@given(
    st.integers(1, 4),
    st.integers(1, 5),
    st.integers(1, 5),
    st.lists(st.integers(1, 6), max_size=3),
    st.sampled_from(["relu", "tanh", "leaky_relu"]),
    st.integers(0, 2**31),
)
def test_mlp_backward_matches_finite_differences(n, d_in, d_out, hidden, activation, seed):
    rng = np.random.default_rng(seed)
    net = MLP(d_in, d_out, hidden=hidden, activation=activation)
    x = rng.normal(size=(n, d_in))
    params = randomize(net.init(rng, x), rng, 0.7)
    gy = rng.normal(size=(n, d_out))
    y, cache = net.apply(params, x)
    gx, gparams = net.backward(params, cache, gy)
    assert tree.structure(gparams) == tree.structure(params)

    def objective():
        return float(np.sum(gy * net.apply(params, x)[0]))

    assert rel_err(gx, _fd_scalar_grad(objective, x)) <= 1e-7
    for path, leaf in tree.leaves(params):
        assert rel_err(tree.get(gparams, path), _fd_scalar_grad(objective, leaf)) <= 1e-7, path


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mlp_last_layer_starts_at_zero_and_keeps_dtype(dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4)).astype(dtype)
    net = MLP(4, 2, hidden=(5, 5))
    params = net.init(rng, x)
    assert all(leaf.dtype == dtype for _, leaf in tree.leaves(params))
    assert not np.any(params["2"]["w"]) and not np.any(params["2"]["b"])
    assert np.any(params["0"]["w"])
    y, _ = net.apply(params, x)
    assert y.dtype == dtype and not np.any(y)


def test_mlp_rejects_bad_widths():
    with pytest.raises(ValueError, match="MLP: all widths must be positive"):
        MLP(3, 0)
