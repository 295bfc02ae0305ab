"""Optimisers: a few steps against the papers' formulas evaluated by hand in Python floats,
purity, dtypes, checkpointable state, schedules, gradient clipping, and Adam on a quadratic."""

import math

import numpy as np
import pytest

from rawflow import tree
from rawflow.training.optim import SGD, Adam, Adamax, clip_grad_norm, global_norm

EPS64 = np.finfo(np.float64).eps


def make_problem():
    """A two-leaf nested tree and three gradient trees with mixed signs and magnitudes."""
    params = {"a": np.array([1.0, -2.0, 0.5]), "net": {"w": np.array([[0.3, -0.7], [1.5, 0.0]])}}
    grads = [
        {"a": np.array([0.1, -3.0, 0.0]), "net": {"w": np.array([[2.0, -0.5], [1e-3, 4.0]])}},
        {"a": np.array([-0.2, 1.0, 0.7]), "net": {"w": np.array([[-1.0, 0.25], [0.0, -2.0]])}},
        {"a": np.array([0.05, 0.5, -0.3]), "net": {"w": np.array([[0.5, 0.5], [-1e-3, 1.0]])}},
    ]
    return params, grads


def flat(t):
    return [float(v) for _, leaf in tree.leaves(t) for v in leaf.reshape(-1)]


def run(opt, params, grads):
    state = opt.init(params)
    history = []
    for g in grads:
        params, state = opt.update(params, g, state)
        history.append(flat(params))
    return history, state


def by_hand(rule, params, grads):
    """Apply ``rule(theta, g, slots, t) -> theta`` element by element in Python floats."""
    theta = flat(params)
    slots = [{} for _ in theta]
    history = []
    for t, g in enumerate(grads, start=1):
        theta = [rule(th, gi, s, t) for th, gi, s in zip(theta, flat(g), slots)]
        history.append(theta)
    return history


def assert_close_ulps(got, want, ulps=4):
    got, want = np.array(got), np.array(want)
    assert np.all(np.abs(got - want) <= ulps * EPS64 * np.maximum(np.abs(want), 1.0)), (got - want)


def test_sgd_plain_and_momentum_by_hand():
    params, grads = make_problem()

    def plain(th, g, s, t):
        return th - 0.1 * g

    def momentum(th, g, s, t):
        s["b"] = 0.9 * s.get("b", 0.0) + g  # PyTorch form: b₁ = g₁
        return th - 0.1 * s["b"]

    assert_close_ulps(run(SGD(0.1), params, grads)[0], by_hand(plain, params, grads))
    assert_close_ulps(run(SGD(0.1, momentum=0.9), params, grads)[0], by_hand(momentum, params, grads))


@pytest.mark.parametrize("betas,eps", [((0.9, 0.999), 1e-8), ((0.5, 0.8), 0.1)])
def test_adam_by_hand(betas, eps):
    """Kingma & Ba (2015), Algorithm 1, with bias-corrected m̂ and v̂."""
    params, grads = make_problem()
    lr, b1, b2 = 0.01, *betas

    def adam(th, g, s, t):
        s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
        s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
        m_hat = s["m"] / (1 - b1**t)
        v_hat = s["v"] / (1 - b2**t)
        return th - lr * m_hat / (math.sqrt(v_hat) + eps)

    got, state = run(Adam(lr, betas, eps), params, grads)
    assert_close_ulps(got, by_hand(adam, params, grads))
    assert int(state["step"]) == 3


def test_adam_first_step_is_lr_times_sign():
    # Bias correction makes step 1 −lr·g/(|g| + eps): a step of lr against the gradient's sign,
    # up to eps/|g| (≤ 1e-5 here), and no step for a zero gradient.
    params = {"p": np.array([0.0, 0.0, 0.0])}
    g = {"p": np.array([3.0, -1e-3, 0.0])}
    opt = Adam(0.1)
    new, _ = opt.update(params, g, opt.init(params))
    np.testing.assert_allclose(new["p"], [-0.1, 0.1, 0.0], rtol=1e-5, atol=0)


@pytest.mark.parametrize("betas,eps", [((0.9, 0.999), 1e-8), ((0.5, 0.8), 0.0)])
def test_adamax_by_hand(betas, eps):
    """Kingma & Ba (2015), Algorithm 2 (ε = 0 is the paper's form; zero gradients avoided)."""
    params, grads = make_problem()
    grads[0]["a"][2] = 1e-4  # u must be nonzero for ε = 0
    lr, b1, b2 = 0.002, *betas

    def adamax(th, g, s, t):
        s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
        s["u"] = max(b2 * s.get("u", 0.0), abs(g))
        return th - (lr / (1 - b1**t)) * s["m"] / (s["u"] + eps)

    got, state = run(Adamax(lr, betas, eps), params, grads)
    assert_close_ulps(got, by_hand(adamax, params, grads))


def test_update_is_pure_and_state_is_checkpointable(tmp_path):
    params, grads = make_problem()
    for opt in (SGD(0.1, momentum=0.5), Adam(0.01), Adamax(0.01)):
        state = opt.init(params)
        params_copy, state_copy = tree.map(np.copy, params), tree.map(np.copy, state)
        new_params, new_state = opt.update(params, grads[0], state)
        # inputs untouched
        for a, b in ((params, params_copy), (state, state_copy)):
            assert all(np.array_equal(u, v) for (_, u), (_, v) in zip(tree.leaves(a), tree.leaves(b)))
        assert isinstance(new_state["step"], np.ndarray) and new_state["step"].dtype == np.int64
        assert new_state["step"].shape == () and int(new_state["step"]) == 1
        # save every leaf, reload, continue: identical to the uninterrupted run
        path = tmp_path / f"{type(opt).__name__}.npz"
        np.savez(path, **{k.replace("/", "|"): v for k, v in tree.leaves(new_state)})
        loaded = {}
        with np.load(path) as f:
            for key in f.files:
                node = loaded
                parts = key.split("|")
                for part in parts[:-1]:
                    node = node.setdefault(part, {})
                node[parts[-1]] = f[key]
        direct, _ = opt.update(new_params, grads[1], new_state)
        resumed, _ = opt.update(new_params, grads[1], loaded)
        assert all(np.array_equal(u, v) for (_, u), (_, v) in zip(tree.leaves(direct), tree.leaves(resumed)))


@pytest.mark.parametrize("opt", [SGD(0.1, momentum=0.9), Adam(0.01), Adamax(0.01)], ids=lambda o: o.name)
def test_float32_stays_float32(opt):
    params, grads = make_problem()
    p32 = tree.map(lambda a: a.astype(np.float32), params)
    state = opt.init(p32)
    for g in grads:
        p32, state = opt.update(p32, tree.map(lambda a: a.astype(np.float32), g), state)
    assert all(a.dtype == np.float32 for _, a in tree.leaves(p32))
    assert all(a.dtype == np.float32 for k, a in tree.leaves(state) if k != "step")


def test_learning_rate_schedule_gets_one_based_step():
    seen = []
    opt = SGD(lambda t: seen.append(t) or 0.5 / t)
    params, grads = make_problem()
    history, _ = run(opt, params, grads)
    assert seen == [1, 2, 3]
    assert_close_ulps(history, by_hand(lambda th, g, s, t: th - (0.5 / t) * g, params, grads))


def test_adam_minimises_an_ill_conditioned_quadratic():
    """f(θ) = ½ Σ_i a_i (θ_i − c_i)², a spanning 4 decades; ∇f = a ⊙ (θ − c)."""
    rng = np.random.default_rng(0)
    a = np.logspace(-2, 2, 10)
    c = rng.normal(size=10)
    params = {"theta": np.zeros(10)}
    opt = Adam(0.05)
    state = opt.init(params)
    f0 = 0.5 * np.sum(a * c**2)
    for t in range(3000):
        g = {"theta": a * (params["theta"] - c)}
        params, state = opt.update(params, g, state)
    f = 0.5 * np.sum(a * (params["theta"] - c) ** 2)
    assert f < 1e-6 * f0, (f, f0)
    np.testing.assert_allclose(params["theta"], c, atol=1e-3)


def test_clip_grad_norm():
    grads = {"a": np.array([3.0, 0.0]), "b": {"c": np.array([[4.0]])}}
    assert global_norm(grads) == 5.0
    clipped, norm = clip_grad_norm(grads, 1.0)
    assert norm == 5.0
    assert tree.structure(clipped) == tree.structure(grads)
    assert abs(global_norm(clipped) - 1.0) <= 2 * EPS64
    np.testing.assert_allclose(clipped["a"], [0.6, 0.0], rtol=EPS64)
    same, norm = clip_grad_norm(grads, 10.0)
    assert norm == 5.0 and same is grads  # untouched below the threshold
    bad = {"a": np.array([np.inf, 1.0])}
    out, norm = clip_grad_norm(bad, 1.0)
    assert math.isinf(norm) and out is bad
    with pytest.raises(ValueError, match="clip_grad_norm"):
        clip_grad_norm(grads, 0.0)


def test_bad_arguments_raise_value_error_naming_the_optimiser():
    params, grads = make_problem()
    with pytest.raises(ValueError, match="Adam"):
        Adam(-1.0)
    with pytest.raises(ValueError, match="Adam"):
        Adam(0.1, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="Adamax"):
        Adamax(0.1, eps=-1.0)
    with pytest.raises(ValueError, match="SGD"):
        SGD(0.1, momentum=1.0)
    opt = Adam(0.1)
    state = opt.init(params)
    with pytest.raises(ValueError, match="Adam.*structure"):
        opt.update(params, {"a": grads[0]["a"]}, state)
    with pytest.raises(ValueError, match="Adam.*state"):
        opt.update(params, grads[0], SGD(0.1).init(params))
