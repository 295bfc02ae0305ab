"""Polyak averaging (``EMA``): the update rule, its start, dtypes, the checks it inherits, and that
a split run (state saved and restored between calls) equals the whole one bit for bit."""

import numpy as np
import pytest

from rawflow import SGD, Adam, Adamax, EMA, FlowModel, StandardNormal, realnvp, train, tree, two_moons


def test_average_follows_tensorflows_update_after_every_step():
    rng = np.random.default_rng(0)
    params = {"a": rng.normal(size=3), "b": {"c": rng.normal(size=(2, 2))}}
    opt = EMA(Adam(0.1), decay=0.9)
    state = opt.init(params)
    assert set(state) == {"m", "v", "step", "ema"}
    assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(tree.leaves(state["ema"]), tree.leaves(params)))
    assert state["ema"]["a"] is not params["a"]  # a copy: nothing aliases the parameters
    inner, inner_state = Adam(0.1), Adam(0.1).init(params)
    avg = tree.map(np.copy, params)
    for _ in range(5):
        grads = tree.map(lambda p: rng.normal(size=p.shape), params)
        new, state = opt.update(params, grads, state)
        want, inner_state = inner.update(params, grads, inner_state)
        for (_, x), (_, y) in zip(tree.leaves(new), tree.leaves(want)):  # the inner step is untouched
            assert np.array_equal(x, y)
        avg = tree.map(lambda a, p: a - (1 - 0.9) * (a - p), avg, want)
        for (_, x), (_, y) in zip(tree.leaves(EMA.average(state)), tree.leaves(avg)):
            assert np.array_equal(x, y)
        params = new
    # in exact arithmetic the same as d·θ̄ + (1 − d)·θ
    assert np.allclose(EMA.average(state)["a"], avg["a"], rtol=1e-15)


def test_a_leaf_that_stops_moving_stays_exactly_put():
    params = {"w": np.array([1.0, -2.0, 3.0])}
    opt = EMA(SGD(0.5), decay=0.99)
    state = opt.init(params)
    for _ in range(3):
        params, state = opt.update(params, {"w": np.zeros(3)}, state)
    assert np.array_equal(EMA.average(state)["w"], np.array([1.0, -2.0, 3.0]))


@pytest.mark.parametrize("inner", [lambda: Adam(1e-2), lambda: Adamax(1e-2), lambda: SGD(1e-2, 0.9), lambda: SGD(1e-2)])
def test_float32_stays_float32_and_every_optimiser_can_be_wrapped(inner):
    params = {"w": np.ones((2, 3), dtype=np.float32)}
    opt = EMA(inner(), 0.999)
    state = opt.init(params)
    params, state = opt.update(params, {"w": np.full((2, 3), 0.5, dtype=np.float32)}, state)
    assert params["w"].dtype == state["ema"]["w"].dtype == np.float32 and int(state["step"]) == 1


def test_state_slots_are_checked_like_the_optimisers():
    params = {"w": np.ones(2)}
    opt = EMA(Adam(), 0.9)
    state = opt.init(params)
    with pytest.raises(ValueError, match="^EMA: state slot 'ema' does not match params"):
        opt.update(params, {"w": np.ones(2)}, {**state, "ema": {"w": np.ones(3)}})
    with pytest.raises(ValueError, match="^EMA: state slot 'ema'"):
        opt.update(params, {"w": np.ones(2)}, {k: v for k, v in state.items() if k != "ema"})
    with pytest.raises(ValueError, match="no moving average"):
        EMA.average(Adam().init(params))


@pytest.mark.parametrize("decay", [0, 1, -0.5, 1.5, float("nan"), True, "0.9"])
def test_bad_decay_is_refused(decay):
    with pytest.raises(ValueError, match="^EMA: decay must be a number in"):
        EMA(Adam(), decay)


def test_nested_or_foreign_optimisers_are_refused():
    with pytest.raises(ValueError, match="not an EMA"):
        EMA(EMA(Adam(), 0.9), 0.9)
    with pytest.raises(ValueError, match="rawflow optimiser"):
        EMA(object(), 0.9)


def test_training_in_two_calls_equals_one_call_bit_for_bit():
    """The average is part of ``opt_state``: passing the state on continues the run exactly."""
    data = two_moons(512, np.random.default_rng(1))
    model = FlowModel(realnvp(2, n_couplings=2, hidden=(8,)), StandardNormal((2,)))
    params0 = model.init(np.random.default_rng(2), data[:64])
    opt = EMA(Adam(1e-2), 0.95)
    from rawflow.training.loop import EpochLoader

    rng = np.random.default_rng(3)
    whole, state_w, _ = train(model, params0, data, opt, 20, 64, rng, loader=EpochLoader(512, 64))
    rng = np.random.default_rng(3)
    loader = EpochLoader(512, 64)
    half, state_h, _ = train(model, params0, data, opt, 9, 64, rng, loader=loader)
    half, state_h, _ = train(model, half, data, opt, 11, 64, rng, opt_state=state_h, loader=loader)
    for (pa, x), (_, y) in zip(tree.leaves(state_w), tree.leaves(state_h)):
        assert np.array_equal(x, y), pa
    assert not np.array_equal(state_w["ema"]["flow"]["0"]["net"]["0"]["w"], whole["flow"]["0"]["net"]["0"]["w"])
