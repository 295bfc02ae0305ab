import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness import (
    check_gradients,
    check_logdet,
    check_roundtrip,
    check_structure,
    randomize,
    rel_err,
)
from rawflow import AdditiveCoupling, AffineCoupling, Chain, tree
from rawflow.training.memory import peak_step_memory


def build_chain(d, depth, reconstruct, hidden=(8,), scale="exp", activation="tanh"):
    layers = []
    for k in range(depth):
        if k % 3 == 2:
            layers.append(AdditiveCoupling(d, flip=bool(k % 2), hidden=hidden, activation=activation))
        else:
            layers.append(AffineCoupling(d, flip=bool(k % 2), hidden=hidden, activation=activation, scale=scale))
    return Chain(layers, reconstruct=reconstruct)


@st.composite
def chains(draw):
    d = draw(st.integers(2, 5))
    n = draw(st.integers(1, 3))
    depth = draw(st.integers(1, 4))
    reconstruct = draw(st.booleans())
    scale = draw(st.sampled_from(["exp", "bounded", "sigmoid"]))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    chain = build_chain(d, depth, reconstruct, scale=scale)
    x = rng.normal(size=(n, d))
    params = randomize(chain.init(rng, x), rng, draw(st.floats(0.05, 0.5)))
    return chain, params, x, rng


def chain_kappa(chain, params, x):
    """Product over layers of 1/min s: how much the inverse chain can amplify a round-off error."""
    kappa = 1.0
    for i, layer in enumerate(chain.layers):
        _, _, (_, tcache) = layer.forward(params[str(i)], x)
        if tcache is not None:
            kappa *= max(1.0, float(np.max(1 / tcache[1])))
        x = layer.forward(params[str(i)], x)[0]
    return kappa


@given(chains())
def test_chain_roundtrip(case):
    chain, params, x, _ = case
    # Each layer adds at most 6 units (see test_coupling), amplified by the layers after it.
    check_roundtrip(chain, params, x, bound_ulps=6 * len(chain), kappa=chain_kappa(chain, params, x))


@given(chains())
def test_chain_logdet_matches_jacobian(case):
    chain, params, x, _ = case
    check_logdet(chain, params, x)


@given(chains())
def test_chain_logdets_cancel_to_roundoff(case):
    chain, params, x, _ = case
    z, logdet, _ = chain.forward(params, x)
    _, logdet_inv, _ = chain.inverse(params, z)
    terms = sum(np.abs(chain.layers[i].forward(params[str(i)], x)[1]) for i in range(len(chain)))
    # Per-layer log-dets cancel exactly at matching points; the chain's inverse visits points that
    # differ by round-off, so the sums cancel up to eps times the size of the summed terms.
    budget = 64 * len(chain) * np.finfo(float).eps * (1 + np.max(terms))
    assert np.max(np.abs(logdet + logdet_inv)) <= budget


@given(chains(), st.sampled_from(["forward", "inverse"]))
def test_chain_gradients_match_finite_differences(case, direction):
    chain, params, x, rng = case
    if direction == "inverse":
        x = chain.forward(params, x)[0]
    check_gradients(chain, params, x, rng, direction)


@given(chains())
def test_chain_structure(case):
    chain, params, x, rng = case
    check_structure(chain, params, x, rng)


@given(chains(), st.sampled_from([np.float32, np.float64]))
def test_reconstructing_and_cached_backward_agree(case, dtype):
    chain, params, x, rng = case
    params = tree.map(lambda a: a.astype(dtype), params)
    x = x.astype(dtype)
    cached = Chain(chain.layers, reconstruct=False)
    lean = Chain(chain.layers, reconstruct=True)
    eps = np.finfo(dtype).eps
    for direction in ("forward", "inverse"):
        inp = x if direction == "forward" else cached.forward(params, x)[0]
        results = []
        for c in (cached, lean):
            run = c.forward if direction == "forward" else c.inverse
            vjp = c.backward if direction == "forward" else c.inverse_backward
            out, logdet, cache = run(params, inp)
            g = np.random.default_rng(7).normal(size=out.shape).astype(dtype)
            gl = np.random.default_rng(8).normal(size=logdet.shape).astype(dtype)
            results.append(vjp(params, cache, g, gl))
        (gx_c, gp_c), (gx_l, gp_l) = results
        # The rebuilt inputs differ from the originals by the inverse's round-off; the VJP is smooth
        # in its point, so the gradients differ by a few eps times the chain's amplification.
        bound = 1e3 * len(chain) * chain_kappa(chain, tree.map(lambda a: a.astype(float), params), x.astype(float)) * eps
        assert rel_err(gx_l, gx_c) <= bound
        for path, leaf in tree.leaves(gp_c):
            assert rel_err(tree.get(gp_l, path), leaf) <= bound, path


def test_reconstructing_backward_memory_is_flat_in_depth():
    """Item 5 of the core issue: peak activation memory, depth 4 vs 32, same data."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 16))
    peaks, grads = {}, {}
    for reconstruct in (False, True):
        for depth in (4, 32):
            chain = build_chain(16, depth, reconstruct, hidden=(64, 64), activation="relu")
            params = randomize(chain.init(np.random.default_rng(1), x), np.random.default_rng(2), 0.1)
            result = peak_step_memory(chain, params, x)
            peaks[reconstruct, depth] = result["peak_bytes"]
            grads[reconstruct, depth] = result
    lean_ratio = peaks[True, 32] / peaks[True, 4]
    cached_ratio = peaks[False, 32] / peaks[False, 4]
    print(f"peak activation bytes: {peaks}; lean 32/4 = {lean_ratio:.3f}, cached 32/4 = {cached_ratio:.2f}")
    assert lean_ratio <= 1.15, peaks
    assert cached_ratio >= 4.0, peaks
    for depth in (4, 32):
        a, b = grads[False, depth], grads[True, depth]
        assert rel_err(b["gx"], a["gx"]) <= 1e-12
        for path, leaf in tree.leaves(a["gparams"]):
            assert rel_err(tree.get(b["gparams"], path), leaf) <= 1e-12, path


def test_chain_rejects_bad_layers():
    with pytest.raises(ValueError, match="Chain: needs at least one layer"):
        Chain([])
    with pytest.raises(ValueError, match="not a Bijector"):
        Chain([object()])
    with pytest.raises(ValueError, match="expects"):
        Chain([AffineCoupling(3), AffineCoupling(4)])
