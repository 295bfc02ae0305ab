"""Data-parallel training in one process: P ranks as threads (``support.threadcomm``).

The claims of :mod:`rawflow.distributed.parallel` and ``train(..., comm=)``: P ranks with global
batch B take the steps one process takes with batch B, to round-off (float64, ≤ 1e-12 relative on
every parameter after 50 steps, RealNVP and a small Glow, P = 2 and 4); runs repeat bit for bit for
the same P; sample i of every global batch gets the same dequantisation noise whatever P; the
replica checks catch one flipped bit; bad launches get a clear message.
"""

import numpy as np
import pytest

from rawflow import Adam, FlowModel, StandardNormal, glow, realnvp, train, tree, two_moons
from rawflow.data.images import dequantize
from rawflow.distributed import (DataParallel, ReplicaDivergence, SingleProcess, agree, check_replicas, digest,
                                 global_sum, together)
from rawflow.training.loop import evaluate_nll
from support.threadcomm import run_ranks

STEPS = 50


def _max_relative(a: dict, b: dict) -> float:
    """max over leaves of ``max|a − b| / max|a|`` (leaf-wise normwise relative difference)."""
    worst = 0.0
    for (pa, x), (pb, y) in zip(tree.leaves(a), tree.leaves(b)):
        assert pa == pb
        scale = float(np.abs(x).max())
        worst = max(worst, float(np.abs(x - y).max()) / (scale if scale > 0 else 1.0))
    return worst


def _realnvp_problem():
    data = two_moons(1024, np.random.default_rng(0))
    model = FlowModel(realnvp(2, n_couplings=4, hidden=(16, 16)), StandardNormal((2,)))
    return model, data, None, 64


def _glow_problem():
    images = np.random.default_rng(1).integers(0, 16, size=(256, 1, 8, 8))
    model = FlowModel(glow(2, 2, 8, (1, 8, 8)), StandardNormal((64,)))

    def batch_fn(rows, rng):
        return dequantize(rows, 16, rng) - 0.5

    return model, images, batch_fn, 32


PROBLEMS = {"realnvp": _realnvp_problem, "glow": _glow_problem}


def _run(problem, comm, steps=STEPS):
    model, data, batch_fn, batch = problem
    rng = np.random.default_rng(7)
    first = data[:64] if batch_fn is None else batch_fn(data[:64], rng)
    params = model.init(rng, first)  # every rank: the same init batch, so ActNorm sees the global statistics
    params, _, losses = train(model, params, data, Adam(2e-3), steps, batch, rng, batch_fn=batch_fn, comm=comm)
    return params, losses


@pytest.fixture(scope="module", params=sorted(PROBLEMS))
def single(request):
    problem = PROBLEMS[request.param]()
    return request.param, problem, _run(problem, None)


@pytest.mark.parametrize("size", [2, 4])
def test_p_ranks_equal_one_process_to_round_off(single, size):
    name, problem, (ref, ref_losses) = single
    out = run_ranks(size, lambda comm: _run(problem, comm))
    for params, losses in out[1:]:  # every rank holds the same parameters and losses, bit for bit
        assert tree.structure(params) == tree.structure(out[0][0])
        assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(tree.leaves(params), tree.leaves(out[0][0])))
        assert np.array_equal(losses, out[0][1])
    # float64, 50 Adam steps: the only difference is how the batch sum is associated (rank partial
    # sums then their sum, against one sum over B), a few ulps per step, not amplified this early.
    assert _max_relative(ref, out[0][0]) <= 1e-12, name
    assert np.abs(out[0][1] - ref_losses).max() <= 1e-12 * np.abs(ref_losses).max()


def test_float32_stays_float32_and_tracks_one_process(single):
    name, (model, data, batch_fn, batch), _ = single
    if batch_fn is None:
        problem = (model, data.astype(np.float32), None, batch)
    else:
        problem = (model, data, lambda rows, rng: batch_fn(rows, rng).astype(np.float32), batch)
    ref = _run(problem, None, steps=20)
    out = run_ranks(2, lambda comm: _run(problem, comm, steps=20))[0]
    assert {a.dtype for _, a in tree.leaves(out[0])} == {np.dtype(np.float32)}
    # measured ≈ 6 eps32 after 20 Adam steps (the float32 batch sums associated differently); the
    # bound leaves a factor of 10 for other BLAS builds
    assert _max_relative(ref[0], out[0]) <= 64 * np.finfo(np.float32).eps, name


def test_same_p_repeats_bit_for_bit(single):
    _, problem, _ = single
    first = run_ranks(2, lambda comm: _run(problem, comm, steps=10))[0]
    again = run_ranks(2, lambda comm: _run(problem, comm, steps=10))[0]
    assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(tree.leaves(first[0]), tree.leaves(again[0])))
    assert np.array_equal(first[1], again[1])


def test_one_rank_is_the_single_process_loop_bit_for_bit(single):
    _, problem, _ = single
    alone = _run(problem, None, steps=10)
    one = _run(problem, SingleProcess(), steps=10)
    assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(tree.leaves(alone[0]), tree.leaves(one[0])))
    assert np.array_equal(alone[1], one[1])


class _Recording(FlowModel):
    """A model that records every batch it computes a gradient on."""

    def __init__(self, model):
        super().__init__(model.bijector, model.prior)
        self.seen = []

    def nll_and_grad(self, params, x):
        self.seen.append(np.array(x, copy=True))
        return super().nll_and_grad(params, x)


def test_sample_i_gets_the_same_noise_whatever_p():
    base, images, batch_fn, batch = _glow_problem()

    def inputs(comm):
        model = _Recording(base)
        rng = np.random.default_rng(3)
        params = model.init(rng, batch_fn(images[:32], rng))
        train(model, params, images, Adam(1e-3), 3, batch, rng, batch_fn=batch_fn, comm=comm)
        return model.seen

    single = inputs(None)
    shards = run_ranks(4, inputs)
    for step in range(3):
        assert np.array_equal(np.concatenate([shards[r][step] for r in range(4)]), single[step])
        assert shards[0][step].shape[0] == batch // 4


def test_polyak_average_is_identical_on_every_rank_and_tracks_one_process():
    """``EMA`` keeps the average in the optimiser state: a pure function of the parameter
    trajectory, so every rank's average is bitwise the same (``train`` also compares its digest
    across ranks at the end), and it equals one process's to round-off like the parameters."""
    from rawflow import EMA

    model, data, batch_fn, batch = _realnvp_problem()

    def run(comm):
        rng = np.random.default_rng(7)
        params = model.init(rng, data[:64])
        return train(model, params, data, EMA(Adam(2e-3), 0.9), 20, batch, rng, comm=comm)[1]["ema"]

    ref = run(None)
    out = run_ranks(2, run)
    assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(tree.leaves(out[0]), tree.leaves(out[1])))
    assert _max_relative(ref, out[0]) <= 1e-12


def test_ranks_whose_averages_differ_are_stopped():
    from rawflow import EMA

    model, data, _, batch = _realnvp_problem()

    def run(comm):
        rng = np.random.default_rng(7)
        params = model.init(rng, data[:64])
        opt = EMA(Adam(2e-3), 0.9)
        state = opt.init(params)
        if comm.rank == 1:  # one rank's average drifted (a bug, a bit flip): the end-of-run check sees it
            state["ema"] = tree.map(lambda a: a + 1e-9, state["ema"])
        return train(model, params, data, opt, 2, batch, rng, opt_state=state, comm=comm)

    with pytest.raises(ReplicaDivergence, match="moving average"):
        run_ranks(2, run)


def test_batch_not_divisible_by_p_is_refused():
    model, data, _, _ = _realnvp_problem()
    params = model.init(np.random.default_rng(0), data[:64])
    with pytest.raises(ValueError, match="global batch size 63 is not divisible by the 2 processes"):
        run_ranks(2, lambda comm: train(model, params, data, Adam(1e-3), 1, 63, np.random.default_rng(0), comm=comm))


def test_ranks_starting_from_different_parameters_are_refused():
    model, data, _, _ = _realnvp_problem()

    def body(comm):  # each rank initialises from its own generator: the mistake ActNorm users make
        rng = np.random.default_rng(comm.rank)
        params = model.init(rng, data[:64])
        return train(model, params, data, Adam(1e-3), 1, 64, rng, comm=comm)

    with pytest.raises(ReplicaDivergence, match=r"differ between ranks at the start of training: rank\(s\) 1"):
        run_ranks(2, body)


@pytest.mark.parametrize("value", [np.float64(-0.0), np.nextafter(1.0, 2.0), np.float64(-1.0)])
def test_digest_sees_one_changed_element(value):
    params = {"a": {"w": np.ones((3, 4))}, "b": np.zeros(5, dtype=np.float32)}
    changed = tree.set(params, "a/w", params["a"]["w"].copy())
    changed["a"]["w"][2, 1] = value
    assert digest(params) != digest(changed)
    swapped = tree.set(params, "b", np.array([0, 0, 1, 0, 0], dtype=np.float32))
    swapped2 = tree.set(params, "b", np.array([0, 1, 0, 0, 0], dtype=np.float32))
    assert digest(swapped) != digest(swapped2)  # same multiset of bits, different places

    def body(comm):
        check_replicas(comm, params if comm.rank != 1 else changed, "in the test")

    with pytest.raises(ReplicaDivergence, match=r"rank\(s\) 1 disagree with rank 0 \(first at a/w\)"):
        run_ranks(3, body)


def test_agree_names_the_keys_and_ranks_that_differ():
    def body(comm):
        agree(comm, "run configurations", {"lr": 1e-3 if comm.rank != 2 else 2e-3, "seed": 0})

    with pytest.raises(ReplicaDivergence, match="rank 2 differs from rank 0 in lr"):
        run_ranks(3, body)
    run_ranks(3, lambda comm: agree(comm, "run configurations", {"lr": 1e-3}))


class _DataMissing(ValueError):
    pass


def test_together_fails_every_rank_with_the_reason():
    def body(comm):
        def read():
            if comm.rank == 1:
                raise _DataMissing("no data file")
            return comm.rank

        try:
            return together(comm, read, (KeyError, _DataMissing))
        except _DataMissing as exc:
            return str(exc)

    assert run_ranks(3, body) == ["no data file (on rank 1 of 3)"] * 3
    assert run_ranks(2, lambda comm: together(comm, lambda: comm.rank, (KeyError,))) == [0, 1]

    def both(comm):
        try:
            together(comm, lambda: {}["x" if comm.rank else "y"], (KeyError,))
        except KeyError as exc:
            return exc.args[0]

    assert run_ranks(2, both) == ["rank 0: 'y'; rank 1: 'x'"] * 2


def test_distributed_evaluation_equals_one_process():
    model, data, _, _ = _realnvp_problem()
    params = model.init(np.random.default_rng(0), data[:64])
    ref = evaluate_nll(model, params, data[:301], batch_size=64)
    out = run_ranks(3, lambda comm: evaluate_nll(model, params, data[:301], batch_size=64, comm=comm))
    assert out[0] == out[1] == out[2]
    assert abs(out[0] - ref) <= 1e-14 * abs(ref)
    assert run_ranks(2, lambda comm: global_sum(comm, float(comm.rank + 1))) == [3.0, 3.0]


def test_shard_is_this_ranks_rows():
    dp = run_ranks(4, lambda comm: DataParallel(comm, 8).shard(np.arange(8)))
    assert [list(s) for s in dp] == [[0, 1], [2, 3], [4, 5], [6, 7]]
