"""Every public method of every prior, driven with malformed arguments (issue 13, A).

``init``, ``log_prob``, ``backward`` and ``sample`` of the four priors and Glow's learned top
prior must refuse a malformed argument with a ``ValueError`` naming the prior and the argument,
or return the correct result (an empty batch).
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rawflow import DiagonalGaussian, GlowTopPrior, StandardLogistic, StandardNormal, Uniform, tree
from support.malformed import (BAD_DTYPES, NON_FINITE, drop, expect_error, not_arrays, other_shapes, paths, record,
                               replace, want_for)

PRIORS = {
    "StandardNormal": lambda: StandardNormal((3,)),
    "StandardLogistic": lambda: StandardLogistic((3,)),
    "DiagonalGaussian": lambda: DiagonalGaussian((3, None)),
    "Uniform": lambda: Uniform((3,), -5.0, 5.0),
    "GlowTopPrior": lambda: GlowTopPrior(2),
}
NAMES = sorted(PRIORS)


@lru_cache(maxsize=None)
def prior(name: str):
    """``(prior, params, z, lp, cache)`` with learned parameters moved off zero."""
    rng = np.random.default_rng(4)
    p = PRIORS[name]()
    z = rng.uniform(-1, 1, size=(3, 2, 2, 2) if name == "GlowTopPrior" else (3, 3, 2) if name == "DiagonalGaussian"
                    else (3, 3))
    params = tree.map(lambda a: a + rng.normal(scale=0.1, size=a.shape), p.init(rng, z))
    lp, cache = p.log_prob(params, z)
    return p, params, z, lp, cache


def _shape(name):
    _, _, z, _, _ = prior(name)
    return z.shape[1:]


def calls_for(name: str) -> dict:
    """Every malformed call of the prior ``name``: ``{label: (call, words its error contains)}``."""
    p, params, z, lp, cache = prior(name)
    rng = np.random.default_rng(0)
    shape = z.shape[1:]
    calls = {
        "log_prob params None": (lambda: p.log_prob(None, z), "params must be a dict"),
        "log_prob params extra": (lambda: p.log_prob({**params, "extra": np.zeros(1)}, z), "unexpected parameter 'extra'"),
        "log_prob z NaN": (lambda: p.log_prob(params, np.where(z > 0, np.nan, z)), "input contains NaN"),
        "log_prob z empty event": (lambda: p.log_prob(params, z[:, :0]), "size 0 on axis 1"),
        "log_prob z no batch axis": (lambda: p.log_prob(params, z[0]), "dimensions"),
        "backward cache None": (lambda: p.backward(params, None, lp), "cache must be the cache returned by"),
        "backward cache raw": (lambda: p.backward(params, cache.value, lp), "cache must be the cache returned by"),
        "backward cache foreign": (lambda: p.backward(params, prior(NAMES[NAMES.index(name) - 1])[4], lp),
                                   "cache was made by another"),
        "backward glp None": (lambda: p.backward(params, cache, None), "log-prob cotangent must be an array"),
        "backward glp list": (lambda: p.backward(params, cache, lp.tolist()), "log-prob cotangent must be an array"),
        "backward glp float": (lambda: p.backward(params, cache, 1.0), "log-prob cotangent must be an array"),
        "backward glp short": (lambda: p.backward(params, cache, lp[:-1]), "log-prob cotangent must have shape"),
        "backward glp column": (lambda: p.backward(params, cache, lp[:, None]), "log-prob cotangent must have shape"),
        "backward glp float32": (lambda: p.backward(params, cache, lp.astype(np.float32)), "dtype float32 differs"),
        "sample rng None": (lambda: p.sample(params, None, 2, shape=shape), "rng must be"),
        "sample rng int": (lambda: p.sample(params, 3, 2, shape=shape), "rng must be"),
        "sample rng RandomState": (lambda: p.sample(params, np.random.RandomState(0), 2, shape=shape), "rng must be"),
        "sample n -1": (lambda: p.sample(params, rng, -1, shape=shape), "number of samples"),
        "sample n 2.5": (lambda: p.sample(params, rng, 2.5, shape=shape), "number of samples"),
        "sample n True": (lambda: p.sample(params, rng, True, shape=shape), "number of samples"),
        "sample temperature nan": (lambda: p.sample(params, rng, 2, float("nan"), shape=shape), "temperature"),
        "sample temperature 0": (lambda: p.sample(params, rng, 2, 0.0, shape=shape), "temperature"),
        "sample like list": (lambda: p.sample(params, rng, 2, like=[1.0], shape=shape), "like must be an array"),
        "sample shape wrong": (lambda: p.sample(params, rng, 2, shape=(7,) * len(shape)), "sample shape"),
        "sample shape floats": (lambda: p.sample(params, rng, 2, shape=(1.5,) * len(shape)), "sample shape"),
        "init rng int": (lambda: p.init(3, z), "rng must be"),
        "init z list": (lambda: p.init(rng, z.tolist()), "input must be an array"),
    }
    for label, (dtype, words) in BAD_DTYPES.items():
        cast = tree.map(lambda a, d=dtype: a.astype(d), params)
        calls[f"log_prob z {label}"] = (lambda d=dtype, c=cast: p.log_prob(c, z.astype(d)), f"input .*({words})")
        calls[f"sample like {label}"] = (lambda d=dtype: p.sample(params, rng, 2, like=np.zeros(1, d), shape=shape),
                                         f"like .*({words})|has dtype")
    for what, bad in not_arrays(z).items():
        calls[f"log_prob z {what}"] = (lambda b=bad: p.log_prob(params, b), f"input {want_for(what)}")
    for path in paths(params):
        leaf = tree.get(params, path)
        calls[f"log_prob {path} missing"] = (lambda q=path: p.log_prob(drop(params, q), z),
                                             re.escape(f"parameter '{path}' is missing"))
        calls[f"log_prob {path} list"] = (lambda q=path, v=leaf.tolist(): p.log_prob(replace(params, q, v), z),
                                          re.escape(f"parameter '{path}' must be an array"))
        calls[f"backward {path} NaN"] = (lambda q=path, v=leaf * np.nan: p.backward(replace(params, q, v), cache, lp),
                                         re.escape(f"parameter '{path}' contains NaN"))
        calls[f"sample {path} float32"] = (lambda q=path, v=leaf.astype(np.float32):
                                           p.sample(replace(params, q, v), rng, 2, shape=shape), "has dtype float")
    return calls


CALLS = [(name, label) for name in NAMES for label in sorted(calls_for(name))]


@pytest.mark.parametrize("name, label", CALLS, ids=[f"{n}-{lab}" for n, lab in CALLS])
def test_malformed_arguments_are_refused(name, label):
    run, want = calls_for(name)[label]
    expect_error(run, name, want)
    params = prior(name)[1]
    item = ("4 dtypes" if any(k in label for k in BAD_DTYPES) else
            "1 parameter trees" if any(f" {q} " in label for q in paths(params)) or "params" in label else
            "6 malformed arguments")
    record(item, "prior", name, label)


@pytest.mark.parametrize("name", [n for n in NAMES if paths(prior(n)[1])])
@given(data=st.data())
def test_learned_parameter_shapes_are_checked(name, data):
    p, params, z, _, _ = prior(name)
    path = data.draw(st.sampled_from(paths(params)), label="path")
    shape = data.draw(other_shapes(tree.get(params, path).shape), label="shape")
    expect_error(lambda: p.log_prob(replace(params, path, np.zeros(shape)), z), name,
                 re.escape(f"parameter '{path}' has shape {shape}"))
    record("1 parameter trees", "prior", name, path, shape)


@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_gives_empty_results(name):
    p, params, z, _, _ = prior(name)
    lp, cache = p.log_prob(params, z[:0])
    gz, gp = p.backward(params, cache, lp)
    assert lp.shape == (0,) and gz.shape == z[:0].shape and tree.structure(gp) == tree.structure(params)
    assert not any(np.any(a) for _, a in tree.leaves(gp))
    assert p.sample(params, np.random.default_rng(0), 0, shape=_shape(name)).shape == z[:0].shape
    record("5 empty batches", "prior", name, "N=0")


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_non_finite_log_prob_cotangent_is_refused(name, data):
    p, params, _, lp, cache = prior(name)
    g = np.ones_like(lp)
    index, value = data.draw(st.integers(0, g.size - 1), label="index"), data.draw(NON_FINITE, label="value")
    g[index] = value
    expect_error(lambda: p.backward(params, cache, g), name, "log-prob cotangent contains NaN or Inf")
    record("2 log-det cotangent", "prior", name, index, value)


@pytest.mark.parametrize("name", [n for n in NAMES if paths(prior(n)[1])])
@given(data=st.data())
def test_non_finite_learned_parameters_are_refused(name, data):
    p, params, z, _, _ = prior(name)
    path = data.draw(st.sampled_from(paths(params)), label="path")
    leaf = tree.get(params, path).copy()
    index, value = data.draw(st.integers(0, leaf.size - 1), label="index"), data.draw(NON_FINITE, label="value")
    leaf.reshape(-1)[index] = value
    method = data.draw(st.sampled_from(["log_prob", "sample"]), label="method")
    bad = replace(params, path, leaf)
    run = (lambda: p.log_prob(bad, z)) if method == "log_prob" else \
        (lambda: p.sample(bad, np.random.default_rng(0), 2, shape=z.shape[1:]))
    expect_error(run, name, re.escape(f"parameter '{path}' contains NaN or Inf"))
    record("1 parameter trees", "prior", method, name, path, index, value)
