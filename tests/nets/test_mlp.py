import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness import _fd_scalar_grad, randomize, rel_err
from rawflow import MLP, tree
from rawflow.nets.mlp import Activation


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


# ------------------------------------------------------------------ the fast paths
SPECIAL = [0.0, -0.0, 1e-45, -1e-45, 5e-324, -5e-324, 1.0, -1.0, 3.4e38, -3.4e38, 1e308, -1e308, np.inf, -np.inf]


def _bits(a):
    a = np.ascontiguousarray(a)
    return a.view({4: np.uint32, 8: np.uint64, 16: np.uint64}[a.dtype.itemsize])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("inplace", [False, True])
def test_fast_relu_equals_the_reference_expression_bit_for_bit(dtype, inplace):
    """``maximum(a, 0)`` (real arrays) against ``where(a.real > 0, a, 0)`` (the complex-safe
    reference), signed zeros, subnormals and infinities included; a NaN stays NaN (documented)."""
    rng = np.random.default_rng(0)
    with np.errstate(over="ignore"):
        a = np.concatenate([np.array(SPECIAL).astype(dtype), rng.normal(size=257).astype(dtype)])
    act = Activation("relu")
    ref = np.where(a.real > 0, a, 0)
    b = a.copy()
    got = act.apply(b, inplace=inplace)
    assert got.dtype == dtype and np.array_equal(_bits(got), _bits(ref))
    assert (got is b) == inplace and (inplace or np.array_equal(_bits(b), _bits(a)))
    assert np.isnan(act.apply(np.array([np.nan], dtype=dtype)))[0]


@pytest.mark.parametrize("name, slope", [("relu", 0.01), ("leaky_relu", 0.01), ("leaky_relu", -0.5), ("tanh", 0.01)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex128])
def test_activation_backward_equals_g_times_grad_bit_for_bit(name, slope, dtype):
    rng = np.random.default_rng(1)
    act = Activation(name, slope)
    a = rng.normal(size=(7, 5)).astype(dtype)
    a[0, :3] = [0.0, -0.0, 1e-30]
    out = act.apply(a.copy())
    g = rng.normal(size=a.shape).astype(dtype)
    ref = g * act.grad(a, out)
    keep = g.copy()
    got = act.backward(g, None if not act.needs_input else a, out)
    assert np.array_equal(_bits(got), _bits(ref)) and np.array_equal(g, keep)
    got_inplace = act.backward(g, a if act.needs_input else None, out, inplace=True)
    assert np.array_equal(_bits(got_inplace), _bits(ref))
    assert act.needs_input == (name == "tanh" or slope < 0)


@pytest.mark.parametrize("activation", ["relu", "tanh", "leaky_relu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_apply_no_cache_equals_apply_and_nothing_is_overwritten(activation, dtype):
    rng = np.random.default_rng(2)
    net = MLP(3, 4, hidden=(6, 5), activation=activation)
    x = rng.normal(size=(9, 3)).astype(dtype)
    params = randomize(net.init(rng, x), rng, 0.7)
    keep_x, keep_p = x.copy(), tree.map(lambda a: a.copy(), params)
    y, cache = net.apply(params, x)
    assert np.array_equal(_bits(net.apply_no_cache(params, x)), _bits(y))
    gy = rng.normal(size=y.shape).astype(dtype)
    keep_gy = gy.copy()
    first = net.backward(params, cache, gy)
    second = net.backward(params, cache, gy)  # the cache survives a backward pass
    assert np.array_equal(first[0], second[0])
    for path, leaf in tree.leaves(first[1]):
        assert np.array_equal(leaf, tree.get(second[1], path))
    assert np.array_equal(x, keep_x) and np.array_equal(gy, keep_gy)
    for path, leaf in tree.leaves(params):
        assert np.array_equal(leaf, tree.get(keep_p, path))
