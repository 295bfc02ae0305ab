"""The optimisers' ``init``/``update``, ``train`` and ``evaluate_nll``, driven with malformed
arguments (issue 13, A): each refuses with a ``ValueError`` naming itself and the argument."""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rawflow import SGD, Adam, Adamax, FlowModel, StandardNormal, evaluate_nll, realnvp, train, tree
from support.malformed import (BAD_DTYPES, NON_FINITE, add, drop, expect_error, not_arrays, other_shapes, paths,
                               record, replace, want_for)

OPTIMISERS = {"SGD": lambda: SGD(0.1, momentum=0.9), "Adam": lambda: Adam(1e-3), "Adamax": lambda: Adamax(1e-3)}


@lru_cache(maxsize=None)
def problem():
    rng = np.random.default_rng(0)
    model = FlowModel(realnvp(2, 2, hidden=(3,)), StandardNormal((2,)))
    data = rng.normal(size=(16, 2))
    params = model.init(rng, data)
    loss, grads = model.nll_and_grad(params, data)
    return model, params, grads, data


@pytest.mark.parametrize("name", sorted(OPTIMISERS))
@given(data=st.data())
def test_update_refuses_malformed_trees(name, data):
    opt = OPTIMISERS[name]()
    _, params, grads, _ = problem()
    state = opt.init(params)
    which = data.draw(st.sampled_from(["params", "grads", "state"]), label="tree")
    kind = data.draw(st.sampled_from(["missing", "extra", "shape", "dtype", "nonfinite", "leaf", "root"]), label="kind")
    tree_ = {"params": params, "grads": grads, "state": state}[which]
    if which == "state":
        slot = data.draw(st.sampled_from([k for k in state if k != "step"]), label="slot")
        tree_ = state[slot]
    path = data.draw(st.sampled_from(paths(tree_)), label="path")
    leaf = tree.get(tree_, path)
    if kind == "missing":
        bad = drop(tree_, path)
    elif kind == "extra":
        bad = add(tree_, "flow", "extra", np.zeros(2))
    elif kind == "shape":
        bad = replace(tree_, path, np.zeros(data.draw(other_shapes(leaf.shape), label="shape")))
    elif kind == "dtype":
        bad = replace(tree_, path, leaf.astype(np.float32))
    elif kind == "nonfinite":
        value = leaf.copy()
        value.reshape(-1)[data.draw(st.integers(0, value.size - 1), label="index")] = data.draw(NON_FINITE)
        bad = replace(tree_, path, value)
    elif kind == "leaf":
        what = data.draw(st.sampled_from(sorted(not_arrays(leaf))), label="what")
        bad = replace(tree_, path, not_arrays(leaf)[what])
    else:
        bad = None
    args = {"params": params, "grads": grads, "state": state}
    args[which] = {**state, slot: bad} if which == "state" else bad
    where = {"params": "params|parameter", "grads": "grads|gradient", "state": "state"}[which]
    expect_error(lambda: opt.update(args["params"], args["grads"], args["state"]), name, f"({where})")
    record("1 parameter trees" if kind in ("missing", "extra", "shape", "dtype", "nonfinite") else "6 malformed arguments",
           "optimiser update", name, which, kind, path)


@pytest.mark.parametrize("name", sorted(OPTIMISERS))
@pytest.mark.parametrize("what", ["state None", "state list", "step missing", "step float", "step negative",
                                  "params None", "init None", "init list leaf", "params float16"])
def test_update_and_init_refuse_malformed_arguments(name, what):
    opt = OPTIMISERS[name]()
    _, params, grads, _ = problem()
    state = opt.init(params)
    half = tree.map(lambda a: a.astype(np.float16), params)
    run, want = {
        "state None": (lambda: opt.update(params, grads, None), "state must be a dict"),
        "state list": (lambda: opt.update(params, grads, []), "state must be a dict"),
        "step missing": (lambda: opt.update(params, grads, {k: v for k, v in state.items() if k != "step"}), "step"),
        "step float": (lambda: opt.update(params, grads, {**state, "step": np.float64(2.0)}), "step"),
        "step negative": (lambda: opt.update(params, grads, {**state, "step": np.asarray(-1)}), "step"),
        "params None": (lambda: opt.update(None, grads, state), "params must be a dict"),
        "init None": (lambda: opt.init(None), "params must be a dict"),
        "init list leaf": (lambda: opt.init(replace(params, "flow/0/net/0/w", [1.0])), "must be an array"),
        "params float16": (lambda: opt.update(half, tree.map(lambda a: a.astype(np.float16), grads),
                                              opt.init(params)), "float16"),
    }[what]
    expect_error(run, name, want)
    record("4 dtypes" if "float16" in what else "6 malformed arguments", "optimiser", name, what)


@pytest.mark.parametrize("what", ["rng None", "rng int", "data list", "data empty", "data matrix", "data float16",
                                  "batch_size 0", "batch_size too big", "steps -1", "params missing",
                                  "opt_state foreign", "opt_state NaN"])
def test_train_refuses_malformed_arguments(what):
    model, params, _, data = problem()
    rng = np.random.default_rng(1)
    kw = dict(model=model, params=params, data=data, optimizer=Adam(1e-3), steps=2, batch_size=4, rng=rng)
    bad, owner, want = {
        "rng None": ({"rng": None}, "train", "rng must be a numpy.random.Generator"),
        "rng int": ({"rng": 0}, "train", "rng must be a numpy.random.Generator"),
        "data list": ({"data": data.tolist()}, "train", "data must be an array"),
        "data empty": ({"data": data[:0]}, "train", "data is empty"),
        "data matrix": ({"data": not_arrays(data)["np.matrix"]}, "train", "data must be a plain array"),
        "data float16": ({"data": data.astype(np.float16)}, "FlowModel", "input has dtype float16"),
        "batch_size 0": ({"batch_size": 0}, "train", "batch_size"),
        "batch_size too big": ({"batch_size": 17}, "train", "batch_size"),
        "steps -1": ({"steps": -1}, "train", "steps"),
        "params missing": ({"params": drop(params, "flow/1")}, "FlowModel", re.escape("parameter 'flow/1' is missing")),
        # train checks the optimiser's state on its first step (later steps reuse what it made)
        "opt_state foreign": ({"opt_state": Adam().init({"w": np.zeros(2)})}, "Adam", "state slot 'm' does not match"),
        "opt_state NaN": ({"opt_state": tree.map(lambda a: a * np.nan, Adam().init(params))}, "Adam",
                          "state slot 'm' .*contains NaN"),
    }[what]
    kw.update(bad)
    expect_error(lambda: train(**kw), owner, want)
    record("4 dtypes" if "float16" in what else "5 empty batches" if "empty" in what else "6 malformed arguments",
           "train", what)


@pytest.mark.parametrize("what", ["data empty", "data list", "data None", "batch_size 0", "batch_size -1",
                                  "batch_size 2.5", "data longdouble", "data NaN"])
def test_evaluate_nll_refuses_malformed_arguments(what):
    model, params, _, data = problem()
    if what == "data longdouble" and "longdouble" not in BAD_DTYPES:
        pytest.skip("long double is float64 on this platform")
    bad, owner, want = {
        "data empty": ({"data": data[:0]}, "evaluate_nll", "data is empty"),
        "data list": ({"data": data.tolist()}, "evaluate_nll", "data must be an array"),
        "data None": ({"data": None}, "evaluate_nll", "data must be an array"),
        "batch_size 0": ({"batch_size": 0}, "evaluate_nll", "batch_size"),
        "batch_size -1": ({"batch_size": -1}, "evaluate_nll", "batch_size"),
        "batch_size 2.5": ({"batch_size": 2.5}, "evaluate_nll", "batch_size"),
        "data longdouble": ({"data": data.astype(np.longdouble)}, "FlowModel", "input has dtype"),
        "data NaN": ({"data": np.where(data > 1, np.nan, data)}, "FlowModel", "input contains NaN"),
    }[what]
    kw = dict(model=model, params=params, data=data, batch_size=5)
    kw.update(bad)
    expect_error(lambda: evaluate_nll(**kw), owner, want)
    record("4 dtypes" if "longdouble" in what else "5 empty batches" if "empty" in what else "6 malformed arguments",
           "evaluate_nll", what)


def test_a_valid_step_still_runs():
    model, params, grads, data = problem()
    for name, make in OPTIMISERS.items():
        opt = make()
        new, state = opt.update(params, grads, opt.init(params))
        assert tree.structure(new) == tree.structure(params) and int(state["step"]) == 1
    assert np.isfinite(evaluate_nll(model, params, data, batch_size=5))
    assert want_for("list") == "must be an array"
