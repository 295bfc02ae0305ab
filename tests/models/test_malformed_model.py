"""Every public method of :class:`rawflow.FlowModel`, driven with malformed arguments (issue 13, A).

Three small models (a vector RealNVP under a learned diagonal Gaussian, a NICE under the logistic
prior, a two-level Glow): each method must refuse a malformed argument with a ``ValueError``
naming ``FlowModel.<method>`` and the argument, or return the correct result (empty batches).
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rawflow import DiagonalGaussian, FlowModel, StandardLogistic, StandardNormal, glow, nice, realnvp, tree
from rawflow.check.registry import randomize
from support.malformed import (BAD_DTYPES, NON_FINITE, add, drop, expect_error, nodes, not_arrays, other_shapes,
                               paths, record, replace, want_for)

METHODS = ["log_prob", "nll", "nll_and_grad", "encode", "decode", "sample", "interpolate"]


@lru_cache(maxsize=None)
def model(name: str):
    """``(model, params, x, z)`` with parameters moved off their (identity) init."""
    rng = np.random.default_rng(3)
    if name == "realnvp-diag":
        m, x = FlowModel(realnvp(4, 2, hidden=(5,)), DiagonalGaussian((4,))), rng.normal(size=(3, 4))
    elif name == "nice-logistic":
        m, x = FlowModel(nice(4, 2, hidden=(3,)), StandardLogistic((4,))), rng.normal(size=(3, 4))
    else:
        m, x = FlowModel(glow(1, 2, 3, (1, 4, 4)), StandardNormal((16,))), rng.uniform(size=(3, 1, 4, 4))
    params = m.init(rng, x)
    params = tree.map(lambda a: a + rng.normal(scale=0.05, size=a.shape), params)
    return m, params, x, m.encode(params, x)


MODELS = ["realnvp-diag", "nice-logistic", "glow"]
VALID = object()


def call(name: str, method: str, *, params=VALID, u=VALID, **kw):
    m, p, x, z = model(name)
    p = p if params is VALID else params
    rng = np.random.default_rng(0)
    if method == "sample":
        return m.sample(p, kw.get("rng", rng), kw.get("n", 2), kw.get("temperature", 1.0), like=kw.get("like"))
    if method == "interpolate":
        return m.interpolate(p, x if u is VALID else u, kw.get("x1", x), kw.get("steps", 3))
    if method == "init":
        return m.init(kw.get("rng", rng), x if u is VALID else u)
    if method == "decode":
        return m.decode(p, z if u is VALID else u)
    return getattr(m, method)(p, x if u is VALID else u)


def _u(name: str, method: str):
    _, _, x, z = model(name)
    return z if method == "decode" else x


def _arg(method: str) -> str:
    return {"decode": "latent input", "interpolate": "x0"}.get(method, "input")


@pytest.mark.parametrize("name", MODELS)
@given(data=st.data())
def test_params_are_checked_against_the_models_spec(name, data):
    _, params, _, _ = model(name)
    method = data.draw(st.sampled_from(METHODS), label="method")
    kind = data.draw(st.sampled_from(["extra", "missing", "shape", "dtype", "nonfinite", "root", "leaf"]), label="kind")
    if kind == "extra":
        node = data.draw(st.sampled_from(nodes(params)), label="node")
        path = f"{node}/extra" if node else "extra"
        bad, want = add(params, node, "extra", np.zeros(2)), f"unexpected parameter '{path}'"
    elif kind == "root":
        path = data.draw(st.sampled_from(["None", "list", "flow only"]), label="what")
        bad = {"None": None, "list": [], "flow only": {"flow": params["flow"]}}[path]
        want = "parameter 'prior' is missing" if path == "flow only" else "params must be a dict"
    else:
        path = data.draw(st.sampled_from(paths(params)), label="path")
        leaf = tree.get(params, path)
        if kind == "missing":
            bad, want = drop(params, path), f"parameter '{path}' is missing"
        elif kind == "shape":
            shape = data.draw(other_shapes(leaf.shape), label="shape")
            bad, want = replace(params, path, np.zeros(shape)), f"parameter '{path}' has shape {shape}"
        elif kind == "dtype":
            bad = replace(params, path, leaf.astype(np.float32))
            want = f"parameter '{path}' has dtype float32" if method != "sample" else "has dtype float"
        elif kind == "leaf":
            what = data.draw(st.sampled_from(sorted(not_arrays(leaf))), label="what")
            bad, want = replace(params, path, not_arrays(leaf)[what]), f"parameter '{path}' {want_for(what)}"
            path = f"{path}={what}"
        else:
            value = leaf.copy()
            value.reshape(-1)[data.draw(st.integers(0, value.size - 1), label="index")] = data.draw(NON_FINITE)
            bad, want = replace(params, path, value), f"parameter '{path}' contains NaN or Inf"
    expect_error(lambda: call(name, method, params=bad), "FlowModel", re.escape(want))
    record("1 parameter trees", "FlowModel", method, name, kind, path)


def test_params_of_a_deeper_model_are_refused():
    """The issue's example: a 4-coupling model's params were accepted by a 2-coupling model."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4))
    deep, shallow = FlowModel(realnvp(4, 4), StandardNormal((4,))), FlowModel(realnvp(4, 2), StandardNormal((4,)))
    params = deep.init(rng, x)
    expect_error(lambda: shallow.log_prob(params, x), "FlowModel", "unexpected parameters 'flow/2', 'flow/3'")
    expect_error(lambda: deep.log_prob(shallow.init(rng, x), x), "FlowModel", "parameters 'flow/2', 'flow/3' are missing")


@pytest.mark.parametrize("name", MODELS)
@given(data=st.data())
def test_malformed_inputs(name, data):
    method = data.draw(st.sampled_from(["init", "log_prob", "nll", "nll_and_grad", "encode", "decode", "interpolate"]),
                       label="method")
    u = _u(name, method)
    dtypes = {k: v for k, v in BAD_DTYPES.items()}
    choices = sorted(not_arrays(u)) + [f"dtype {k}" for k in dtypes] + ["NaN", "extra axis", "empty event"]
    what = data.draw(st.sampled_from(choices), label="what")
    if what.startswith("dtype "):
        dtype, words = dtypes[what[6:]]
        bad, want = u.astype(dtype), f"({words})"
    elif what == "NaN":
        bad, want = np.where(u > u.mean(), np.nan, u), "contains NaN or Inf"
    elif what == "extra axis":
        bad, want = u[..., None], "dimensions"
    elif what == "empty event":
        bad, want = u[:, :0], "size 0 on axis 1"
    else:
        bad, want = not_arrays(u)[what], re.escape(want_for(what))
    expect_error(lambda: call(name, method, u=bad), "FlowModel", rf"({_arg(method)}) .*{want}")
    record("4 dtypes" if what.startswith("dtype ") else "6 malformed arguments", "FlowModel input", method, name, what)


@pytest.mark.parametrize("name", MODELS)
@given(data=st.data())
def test_malformed_sampling_arguments(name, data):
    _, params, x, _ = model(name)
    arg = data.draw(st.sampled_from(["rng", "n", "temperature", "like", "steps", "x1", "init rng"]), label="argument")
    values = {
        "rng": {"None": None, "int": 3, "RandomState": np.random.RandomState(0), "string": "seed"},
        "init rng": {"int": 3, "RandomState": np.random.RandomState(0), "string": "seed"},
        "n": {"-1": -1, "2.5": 2.5, "True": True, "string": "3", "None": None},
        "temperature": {"0": 0.0, "-1": -1.0, "nan": float("nan"), "inf": float("inf"), "string": "1"},
        "like": {"list": [1.0], **{f"dtype {k}": np.zeros(1, v[0]) for k, v in BAD_DTYPES.items()},
                 "float32 vs float64 params": np.zeros(1, np.float32)},
        "steps": {"1": 1, "2.5": 2.5, "True": True, "None": None},
        "x1": {"None": None, "list": x.tolist(), "other shape": x[:1], "float16": x.astype(np.float16)},
    }[arg]
    what = data.draw(st.sampled_from(sorted(values)), label="what")
    value = values[what]
    method = "interpolate" if arg in ("steps", "x1") else "init" if arg == "init rng" else "sample"
    arg = "rng" if arg == "init rng" else arg
    want = {"rng": "rng must be a numpy.random.Generator", "n": "number of samples", "temperature": "temperature",
            "steps": "steps", "x1": "x1|differ in shape"}.get(arg, "like|has dtype")
    expect_error(lambda: call(name, method, **{arg: value}), "FlowModel", want)
    record("6 malformed arguments", "FlowModel", method, name, arg, what)


@pytest.mark.parametrize("name", MODELS)
def test_empty_batches(name):
    m, params, x, z = model(name)
    e = x[:0]
    assert m.log_prob(params, e).shape == (0,)
    assert m.encode(params, e).shape == (0,) + z.shape[1:]
    assert m.decode(params, z[:0]).shape == e.shape
    assert m.sample(params, np.random.default_rng(0), 0).shape == e.shape
    assert m.interpolate(params, e, e, 3).shape == (3,) + e.shape
    for method in ("nll", "nll_and_grad"):
        expect_error(lambda: getattr(m, method)(params, e), "FlowModel", "mean NLL of an empty batch")
    if m.bijector.data_dependent:
        expect_error(lambda: m.init(np.random.default_rng(0), e), "FlowModel", "non-empty")
    else:
        assert tree.shapes(m.init(np.random.default_rng(0), e)) == m.param_spec()
    record("5 empty batches", "FlowModel", name, "N=0")


def test_randomized_params_stay_valid():
    """The params the other tests corrupt are themselves accepted (the corruption is the only fault)."""
    for name in MODELS:
        m, params, x, _ = model(name)
        loss, grads = m.nll_and_grad(params, x)
        assert np.isfinite(loss) and tree.shapes(grads) == m.param_spec()
        assert tree.shapes(randomize(params, np.random.default_rng(0), 0.1)) == m.param_spec()
