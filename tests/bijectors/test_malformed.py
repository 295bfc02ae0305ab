"""Every public entry point of every registered layer, driven with malformed arguments (issue 13, A).

For each case of :mod:`rawflow.check.registry` (plus Flatten and the numba backends), Hypothesis
picks an entry point (``init``, ``forward``, ``inverse``, ``backward``, ``inverse_backward``) and
a corruption of one argument; the call must raise ``ValueError`` naming the layer and the argument
(:func:`support.malformed.expect_error`), or, for inputs the rules accept (an empty batch, complex
input), return the correct result. Items follow the issue: 1 parameter trees, 2 non-finite log-det
cotangents, 3 scales that under/overflow, 4 dtypes, 5 empty batches, 6 malformed arguments.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rawflow import (ActNorm, AffineCoupling, Bijector, Chain, ChannelCoupling, ChannelRotationCoupling,
                     CheckerboardCoupling, DenseLinear, DiagonalScaling, Flatten, LULinear, MLP, MultiScale, Split,
                     tree)
from rawflow.check.registry import Case, cases, randomize
from support.malformed import (BAD_DTYPES, NON_FINITE, add, drop, expect_error, nodes, not_arrays,
                               other_shapes, paths, record, replace)

ENTRY = ["forward", "inverse", "backward", "inverse_backward"]


def _extra_cases() -> list[Case]:
    """Layers the registry does not list: Flatten, and the numba backends (same contract)."""
    rng = np.random.default_rng(5)
    out = [Case("flatten", Flatten((2, 3, 2)), {}, rng.normal(size=(2, 2, 3, 2)))]
    layer = AffineCoupling(4, scale="sigmoid", hidden=(3,), backend="numba")
    x = rng.normal(size=(3, 4))
    out.append(Case("affine-numba", layer, randomize(layer.init(rng, x), rng, 0.5), x))
    layer = ActNorm(3, spatial=2, backend="numba")
    x = rng.normal(size=(2, 3, 2, 2))
    out.append(Case("actnorm-numba", layer, randomize(layer.init(rng, x), rng, 0.5), x))
    return out


CASES = {c.name: c for c in cases() + _extra_cases()}
NAMES = sorted(CASES)
WITH_PARAMS = [n for n in NAMES if paths(CASES[n].params)]


@lru_cache(maxsize=None)
def point(name: str):
    """``(case, z, logdet, forward cache)`` at the case's input (computed once per case)."""
    c = CASES[name]
    z, logdet, cache = c.layer.forward(c.params, c.x)
    return c, z, logdet, cache


VALID = object()  # "the valid argument" (None is one of the malformed ones)


def call(name: str, method: str, *, params=VALID, u=VALID, cache=VALID, g=VALID, glogdet=VALID):
    """``layer.method`` with valid arguments except those given."""
    c, z, logdet, fcache = point(name)
    params = c.params if params is VALID else params
    if method == "forward":
        return c.layer.forward(params, c.x if u is VALID else u)
    if method == "inverse":
        return c.layer.inverse(params, z if u is VALID else u)
    if method == "init":
        return c.layer.init(np.random.default_rng(0), c.x if u is VALID else u)
    like = z if method == "backward" else c.x
    g = np.ones_like(like) if g is VALID else g
    glogdet = np.ones_like(logdet) if glogdet is VALID else glogdet
    return getattr(c.layer, method)(params, fcache if cache is VALID else cache, g, glogdet)


def _u(name: str, method: str) -> np.ndarray:
    c, z, _, _ = point(name)
    return z if method in ("inverse", "backward") else c.x


def _arg(method: str) -> str:
    return {"forward": "input", "init": "input", "inverse": "latent input"}.get(method, "cotangent")


# ---------------------------------------------------------------------------- item 1: parameter trees
@pytest.mark.parametrize("method", ENTRY)
@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_params_are_checked_against_the_spec(name, method, data):
    c = CASES[name]
    kinds = ["extra"] + (["missing", "shape", "dtype", "nonfinite"] if name in WITH_PARAMS else [])
    kind = data.draw(st.sampled_from(kinds), label="kind")
    if kind == "extra":
        node = data.draw(st.sampled_from(nodes(c.params)), label="node")
        path = f"{node}/extra" if node else "extra"
        bad, want = add(c.params, node, "extra", np.zeros(2)), f"unexpected parameter '{path}'"
    else:
        path = data.draw(st.sampled_from(paths(c.params)), label="path")
        leaf = tree.get(c.params, path)
        if kind == "missing":
            bad, want = drop(c.params, path), f"parameter '{path}' is missing"
        elif kind == "shape":
            shape = data.draw(other_shapes(leaf.shape), label="shape")
            bad, want = replace(c.params, path, np.zeros(shape)), f"parameter '{path}' has shape {shape}"
        elif kind == "dtype":
            bad, want = replace(c.params, path, leaf.astype(np.float32)), f"parameter '{path}' has dtype float32"
        else:
            value = leaf.copy()
            index = data.draw(st.integers(0, value.size - 1), label="index")
            value.reshape(-1)[index] = data.draw(NON_FINITE, label="value")
            bad, want = replace(c.params, path, value), f"parameter '{path}' contains NaN or Inf"
            path = f"{path}[{index}]"
    expect_error(lambda: call(name, method, params=bad), c.layer.name, re.escape(want))
    record("1 parameter trees", "layer", method, name, kind, path)


def test_the_seen_cases():
    """The issue's examples: each returned a wrong answer without a word."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4))
    expect_error(lambda: DiagonalScaling(4).forward({"log_scale": np.array([0.5])}, x), "DiagonalScaling",
                 re.escape("parameter 'log_scale' has shape (1,), expected (4,)"))
    lu = LULinear(4)
    p = lu.init(rng, x)
    expect_error(lambda: lu.forward({**p, "log_scale": p["log_scale"][:1]}, x), "LULinear",
                 re.escape("parameter 'log_scale' has shape (1,), expected (4,)"))
    coupling = AffineCoupling(4, hidden=(5,), activation="relu")
    p = coupling.init(rng, x)
    w = p["net"]["0"]["w"].copy()
    w[2, 1] = np.nan  # ReLU used to map the NaN to 0 silently
    expect_error(lambda: coupling.forward(replace(p, "net/0/w", w), x), "AffineCoupling",
                 re.escape("parameter 'net/0/w' contains NaN or Inf (first at index (2, 1))"))


def test_the_seen_scale_dtype_and_empty_batch_cases():
    """The issue's other examples (items 3, 4, 5), each of which failed or answered wrongly."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4))
    # 3: z = 0 with a finite log-det, and a non-finite inverse
    params = {"bias": np.zeros(4), "log_scale": np.full(4, -1000.0)}
    for run in (ActNorm(4).forward, ActNorm(4).inverse):
        expect_error(lambda: run(params, x), "ActNorm", re.escape("underflows to 0 or overflows at channels [0, 1, 2, 3]"))
    # 4: LULinear.inverse returned float32 for float16 and float64 for long double; DenseLinear raised
    # NumPy's "unsupported in linalg"; ActNorm.init gave native params that forward then refused
    lu, dense = LULinear(4), DenseLinear(4)
    for dtype in (np.float16, np.longdouble):
        if np.dtype(dtype) == np.float64:
            continue
        cast = lambda p: tree.map(lambda a: a.astype(dtype), p)  # noqa: E731
        expect_error(lambda: lu.inverse(cast(lu.init(rng, x)), x.astype(dtype)), "LULinear", "latent input has dtype")
        expect_error(lambda: dense.forward(cast(dense.init(rng, x)), x.astype(dtype)), "DenseLinear", "input has dtype")
    expect_error(lambda: ActNorm(4).init(rng, x.astype(">f8")), "ActNorm", "non-native byte order")
    # 5: "cannot reshape array of size 0" (LU, dense, numba), NaN parameters from the image couplings
    for layer in (lu, dense, AffineCoupling(4, hidden=(3,), backend="numba")):
        p = layer.init(rng, x)
        z, ld, cache = layer.forward(p, x[:0])
        assert z.shape == (0, 4) and ld.shape == (0,) and layer.inverse(p, z)[0].shape == (0, 4)
    for layer in (ChannelCoupling(2, width=3), CheckerboardCoupling(2, width=3), ChannelRotationCoupling(3, width=3)):
        c = layer.event_shape[0]
        expect_error(lambda: layer.init(rng, np.zeros((0, c, 4, 4))), layer.name, "non-empty example batch")
        expect_error(lambda: layer.init(rng, np.zeros((2, c, 0, 0))), layer.name, "size 0 on axis 2")


# ---------------------------------------------------------------------------- item 2: log-det cotangent
@pytest.mark.parametrize("method", ["backward", "inverse_backward"])
@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_non_finite_logdet_cotangent_is_refused(name, method, data):
    c, _, logdet, _ = point(name)
    gl = np.ones_like(logdet)
    index = data.draw(st.integers(0, gl.size - 1), label="index")
    value = data.draw(NON_FINITE, label="value")
    gl[index] = value
    expect_error(lambda: call(name, method, glogdet=gl), c.layer.name, "log-det cotangent contains NaN or Inf")
    record("2 log-det cotangent", method, name, index, value)


# ---------------------------------------------------------------------------- item 3: scales
def scale_paths(layer, prefix: str = "") -> list[tuple[str, str]]:
    """``(path of a log_scale, layer name)`` for every ActNorm / DiagonalScaling inside ``layer``."""
    if isinstance(layer, (ActNorm, DiagonalScaling)):
        return [(f"{prefix}log_scale", layer.name)]
    children = layer.layers if isinstance(layer, Chain) else layer.levels if isinstance(layer, MultiScale) else []
    return [p for i, child in enumerate(children) for p in scale_paths(child, f"{prefix}{i}/")]


SCALED = [n for n in NAMES if scale_paths(CASES[n].layer)]


@pytest.mark.parametrize("name", SCALED)
@given(data=st.data())
def test_scales_that_underflow_or_overflow_are_refused(name, data):
    c = CASES[name]
    path, owner = data.draw(st.sampled_from(scale_paths(c.layer)), label="log_scale")
    dtype = data.draw(st.sampled_from([np.float64, np.float32]), label="dtype")
    lo, hi = np.log(np.finfo(dtype).smallest_subnormal) - 1, np.log(np.finfo(dtype).max) + 1
    value = data.draw(st.one_of(st.floats(-1e4, lo), st.floats(hi, 1e4)), label="value")
    method = data.draw(st.sampled_from(["forward", "inverse"]), label="method")
    log_scale = tree.get(c.params, path).astype(dtype)
    channel = data.draw(st.integers(0, log_scale.size - 1), label="channel")
    log_scale[channel] = value
    params = replace(tree.map(lambda a: a.astype(dtype), c.params), path, log_scale)
    u = _u(name, method).astype(dtype)
    expect_error(lambda: getattr(c.layer, method)(params, u), owner,
                 re.escape(f"scale exp(log_scale) underflows to 0 or overflows at channels [{channel}]"))
    record("3 scales", method, name, path, np.dtype(dtype).name, channel, value)


# ---------------------------------------------------------------------------- item 4: dtypes
@pytest.mark.parametrize("method", ["init"] + ENTRY)
@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_dtypes_outside_the_rule_are_refused_everywhere(name, method, data):
    c = CASES[name]
    label = data.draw(st.sampled_from(sorted(BAD_DTYPES)), label="dtype")
    dtype, words = BAD_DTYPES[label]
    params = tree.map(lambda a: a.astype(dtype), c.params)  # the same dtype throughout: not a mismatch
    u = _u(name, method).astype(dtype)
    if method in ("backward", "inverse_backward"):
        run = lambda: call(name, method, params=params, g=u, glogdet=np.ones(u.shape[0], dtype))  # noqa: E731
    else:
        run = lambda: call(name, method, params=params, u=u)  # noqa: E731
    expect_error(run, c.layer.name, rf"{_arg(method)} .*({words})")
    record("4 dtypes", "layer", method, name, label)


@pytest.mark.parametrize("name", NAMES)
def test_complex_inputs_keep_working_on_the_reference_paths(name):
    """The complex-step oracle's inputs: a complex copy of a real point gives the real answer (to
    round-off: complex ``exp``/``tanh`` round differently from the real ones)."""
    c, z, logdet, _ = point(name)
    if getattr(c.layer, "backend", getattr(getattr(c.layer, "transform", None), "backend", "reference")) != "reference":
        pytest.skip("a kernel backend serves real arrays only ('auto' sends complex ones to the reference)")
    params = tree.map(lambda a: a.astype(np.complex128), c.params)
    zc, ldc, cache = c.layer.forward(params, c.x.astype(np.complex128))
    eps = np.finfo(np.float64).eps
    assert zc.dtype == ldc.dtype == np.complex128 and not np.any(zc.imag) and not np.any(ldc.imag)
    np.testing.assert_allclose(zc.real, z, rtol=64 * eps, atol=64 * eps * np.abs(z).max())
    np.testing.assert_allclose(ldc.real, logdet, rtol=64 * eps, atol=64 * eps * max(1.0, np.abs(logdet).max()))
    gx, gp = c.layer.backward(params, cache, zc, ldc)
    assert gx.dtype == np.complex128 and tree.structure(gp) == tree.structure(params)
    record("4 dtypes", "layer complex accepted", name)


# ---------------------------------------------------------------------------- item 5: empty batches
@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_gives_empty_outputs_and_zero_gradients(name):
    c, z, _, _ = point(name)
    layer, params, x = c.layer, c.params, c.x[:0]
    z0, ld0, cache = layer.forward(params, x)
    assert z0.shape == (0,) + z.shape[1:] and ld0.shape == (0,) and z0.dtype == ld0.dtype == x.dtype
    gx, gp = layer.backward(params, cache, z0, ld0)
    assert gx.shape == x.shape and tree.structure(gp) == tree.structure(params)
    assert not any(np.any(a) for _, a in tree.leaves(gp))
    x0, ldi, cache = layer.inverse(params, z0)
    assert x0.shape == x.shape and ldi.shape == (0,)
    gz, gp = layer.inverse_backward(params, cache, x0, ldi)
    assert gz.shape == z0.shape and not any(np.any(a) for _, a in tree.leaves(gp))
    if layer.data_dependent:
        expect_error(lambda: layer.init(np.random.default_rng(0), x), layer.name, "non-empty example batch")
    else:
        assert tree.shapes(layer.init(np.random.default_rng(0), x)) == layer.param_spec()
    record("5 empty batches", "layer", name, "N=0")


IMAGES = [n for n in NAMES if CASES[n].x.ndim == 4 and not isinstance(CASES[n].layer, (MultiScale, Flatten))]


@pytest.mark.parametrize("name", IMAGES)
@given(data=st.data())
def test_empty_images_are_refused(name, data):
    c = CASES[name]
    method = data.draw(st.sampled_from(["init", "forward", "inverse"]), label="method")
    u = _u(name, method)
    axis = data.draw(st.sampled_from([2, 3]), label="axis")
    empty = np.take(u, [], axis=axis)
    expect_error(lambda: call(name, method, u=empty), c.layer.name, rf"size 0 on axis {axis}")
    record("5 empty batches", "layer empty image", method, name, axis)


# ---------------------------------------------------------------------------- item 6: malformed arguments
@pytest.mark.parametrize("method", ENTRY)
@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_malformed_parameter_trees(name, method, data):
    c = CASES[name]
    leaves = paths(c.params)
    inner = [n for n in nodes(c.params) if n]
    kinds = ["root"] + (["leaf", "key"] if leaves else []) + (["node"] if inner else [])
    kind = data.draw(st.sampled_from(kinds), label="kind")
    if kind == "root":
        what = data.draw(st.sampled_from(["None", "list", "float", "array"]), label="what")
        bad = {"None": None, "list": [], "float": 1.0, "array": np.zeros(3)}[what]
        want = "params must be a dict"
    elif kind == "leaf":
        path = data.draw(st.sampled_from(leaves), label="path")
        what = data.draw(st.sampled_from(sorted(not_arrays(tree.get(c.params, path))) + ["dict"]), label="what")
        value = {} if what == "dict" else not_arrays(tree.get(c.params, path))[what]
        bad = replace(c.params, path, value)
        want = f"parameter '{path}' " + ("must be an array" if what not in ("masked", "np.matrix", "dict")
                                         else "must be a plain array" if what != "dict" else "")
        what = f"{path}={what}"
    elif kind == "node":
        node = data.draw(st.sampled_from(inner), label="node")
        bad, want, what = replace(c.params, node, np.zeros(2)), f"parameter '{node}' must be a dict", node
    else:
        node = data.draw(st.sampled_from(nodes(c.params)), label="node")
        bad, want, what = add(c.params, node, 0, np.zeros(2)), "keys must be strings", node
    expect_error(lambda: call(name, method, params=bad), c.layer.name, re.escape(want))
    record("6 malformed arguments", "layer params", method, name, kind, what)


@pytest.mark.parametrize("method", ["init"] + ENTRY)
@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_malformed_arrays(name, method, data):
    c = CASES[name]
    u = _u(name, method)
    choices = {**not_arrays(u), "no batch axis": u[0], "extra axis": u[..., None], "0-d": np.float64(1.0)}
    if method in ("forward", "init"):
        choices["wrong event size"] = np.concatenate([u, u[:, :1]], axis=1)
    what = data.draw(st.sampled_from(sorted(choices)), label="what")
    bad = choices[what]
    want = {"masked": "must be a plain array", "np.matrix": "must be a plain array", "no batch axis": "dimensions",
            "extra axis": "dimensions", "wrong event size": "on axis 1"}.get(what, "must be an array")
    if method in ("backward", "inverse_backward"):
        run = lambda: call(name, method, g=bad)  # noqa: E731
    else:
        run = lambda: call(name, method, u=bad)  # noqa: E731
    expect_error(run, c.layer.name, rf"{_arg(method)} .*{re.escape(want)}")
    record("6 malformed arguments", "layer array", method, name, what)


@pytest.mark.parametrize("method", ["backward", "inverse_backward"])
@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_malformed_logdet_cotangents(name, method, data):
    c, _, logdet, _ = point(name)
    n = logdet.shape[0]
    choices = {**not_arrays(logdet), "column": logdet[:, None], "short": logdet[:-1],
               "float32": logdet.astype(np.float32), "0-d": np.array(1.0), "numpy scalar": np.float64(1.0)}
    choices.pop("masked")  # a masked (N,) array is an ndarray subclass: refused like the others below
    what = data.draw(st.sampled_from(sorted(choices)), label="what")
    want = {"column": rf"must have shape \({n},\)", "short": rf"must have shape \({n},\)", "0-d": "must have shape",
            "float32": "dtype float32 differs", "np.matrix": "plain array"}.get(what, "must be an array")
    expect_error(lambda: call(name, method, glogdet=choices[what]), c.layer.name, f"log-det cotangent {want}")
    record("6 malformed arguments", "log-det cotangent", method, name, what)


@pytest.mark.parametrize("method", ["backward", "inverse_backward"])
@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_none_raw_foreign_and_stale_caches_are_refused(name, method, data):
    c, z, logdet, fcache = point(name)
    what = data.draw(st.sampled_from(["None", "raw", "tuple", "other layer", "other batch"]), label="what")
    if what == "other layer":
        # another object: registry cases that reuse one layer object at other parameters (the saturated ones) are not
        other = data.draw(st.sampled_from([n for n in NAMES if CASES[n].layer is not CASES[name].layer]), label="other")
        cache, want = point(other)[3], "cache was made by another object"
        what = f"{what} {other}"
    elif what == "other batch":
        if c.x.shape[0] < 2:
            return
        cache, want = c.layer.forward(c.params, c.x[:1])[2], "cache describes a point"
    else:
        cache = {"None": None, "raw": fcache.value, "tuple": (None, None)}[what]
        want = "cache must be the cache returned by"
    expect_error(lambda: call(name, method, cache=cache), c.layer.name, want)
    record("6 malformed arguments", "cache", method, name, what)


@pytest.mark.parametrize("what", ["int", "RandomState", "string", "float"])
@pytest.mark.parametrize("name", NAMES)
def test_init_refuses_a_generator_that_is_not_one(name, what):
    c = CASES[name]
    rng = {"int": 0, "RandomState": np.random.RandomState(0), "string": "seed", "float": 0.5}[what]
    expect_error(lambda: c.layer.init(rng, c.x), c.layer.name, "rng must be a numpy.random.Generator")
    record("6 malformed arguments", "init rng", name, what)


def test_init_without_a_generator_names_the_layer_that_needs_one():
    x = np.random.default_rng(0).normal(size=(2, 4))
    assert tree.shapes(LULinear(4).init(None, x)) == LULinear(4).param_spec()  # draws nothing: fine
    expect_error(lambda: Chain([LULinear(4), AffineCoupling(4)]).init(None, x), "Chain", "needs a numpy.random.Generator")


# ---------------------------------------------------------------------------- Split's multi-scale interface
SPLIT_CALLS = ["factor_backward cache None", "factor_backward cache foreign", "factor_backward glogp list",
               "factor_backward glogp NaN", "factor_backward gkept None", "factor_backward geps shape",
               "factor params None", "unfactor rng int", "unfactor eps and rng", "unfactor eps float16",
               "unfactor_backward cache None", "unfactor_backward glogp None", "sample_eps rng None",
               "sample_eps temperature nan", "sample_eps kept list"]


@pytest.mark.parametrize("what", SPLIT_CALLS)
def test_split_interface_refuses_malformed_arguments(what):
    c = CASES["split"]
    layer, params, x = c.layer, c.params, c.x
    kept, logp, eps, cache = layer.factor(params, x)
    rng = np.random.default_rng(0)
    calls = {
        "factor_backward cache None": (lambda: layer.factor_backward(params, None, kept, logp), "cache must be"),
        "factor_backward cache foreign": (lambda: layer.factor_backward(params, point("squeeze")[3], kept, logp),
                                          "cache was made by another"),
        "factor_backward glogp list": (lambda: layer.factor_backward(params, cache, kept, logp.tolist()),
                                       "log-prob cotangent must be an array"),
        "factor_backward glogp NaN": (lambda: layer.factor_backward(params, cache, kept, logp * np.nan),
                                      "log-prob cotangent contains NaN"),
        "factor_backward gkept None": (lambda: layer.factor_backward(params, cache, None, logp),
                                       "kept-half cotangent must be an array"),
        "factor_backward geps shape": (lambda: layer.factor_backward(params, cache, kept, logp, eps[:, :, :1]),
                                       "eps cotangent has shape"),
        "factor params None": (lambda: layer.factor(None, x), "params must be a dict"),
        "unfactor rng int": (lambda: layer.unfactor(params, kept, rng=3), "rng must be a numpy.random.Generator"),
        "unfactor eps and rng": (lambda: layer.unfactor(params, kept, eps, rng=rng), "not both"),
        "unfactor eps float16": (lambda: layer.unfactor(params, kept, eps.astype(np.float16)), "eps has dtype float16"),
        "unfactor_backward cache None": (lambda: layer.unfactor_backward(params, None, x, logp), "cache must be"),
        "unfactor_backward glogp None": (lambda: layer.unfactor_backward(params, cache, x, None),
                                         "log-prob cotangent must be an array"),
        "sample_eps rng None": (lambda: layer.sample_eps(kept, None), "rng must be"),
        "sample_eps temperature nan": (lambda: layer.sample_eps(kept, rng, float("nan")), "temperature"),
        "sample_eps kept list": (lambda: layer.sample_eps(kept.tolist(), rng), "kept half must be an array"),
    }
    assert sorted(calls) == sorted(SPLIT_CALLS)
    run, want = calls[what]
    expect_error(run, "Split", want)
    record("6 malformed arguments", "Split", what)


@pytest.mark.parametrize("what", ["params None", "params shape", "gweight list", "gweight shape", "gweight float32"])
def test_lu_weight_refuses_malformed_arguments(what):
    c = CASES["lu-linear"]
    layer, params = c.layer, c.params
    g = np.ones((4, 4))
    run, want = {
        "params None": (lambda: layer.weight(None), "params must be a dict"),
        "params shape": (lambda: layer.weight({**params, "lower": np.eye(3)}), "parameter 'lower' has shape"),
        "gweight list": (lambda: layer.weight_backward(params, g.tolist()), "weight cotangent must be an array"),
        "gweight shape": (lambda: layer.weight_backward(params, g[:3]), "weight cotangent"),
        "gweight float32": (lambda: layer.weight_backward(params, g.astype(np.float32)), "weight cotangent"),
    }[what]
    expect_error(run, "LULinear", want)
    record("6 malformed arguments", "LULinear.weight", what)


class _Undeclared:
    """A user's conditioner without ``param_spec``: an MLP that does not declare its shapes."""

    def __init__(self, mlp):
        self.mlp, self.in_features, self.out_features = mlp, mlp.in_features, mlp.out_features
        self.init, self.apply, self.backward = mlp.init, mlp.apply, mlp.backward


class _UserScale(Bijector):
    """A user's layer that declares no spec: ``z = x ⊙ exp(a)``."""

    event_shape = (3,)

    def _init(self, rng, x):
        return {"a": np.zeros(3, dtype=x.dtype)}

    def _forward(self, params, x):
        return x * np.exp(params["a"]), np.full(x.shape[0], params["a"].sum()), x

    def _inverse(self, params, z):
        return z * np.exp(-params["a"]), np.full(z.shape[0], -params["a"].sum()), z

    def _backward(self, params, cache, gz, glogdet):
        return gz * np.exp(params["a"]), {"a": (gz * cache * np.exp(params["a"])).sum(0) + glogdet.sum()}

    def _inverse_backward(self, params, cache, gx, glogdet):
        return gx * np.exp(-params["a"]), {"a": -(gx * cache).sum(0) - glogdet.sum()}


def test_layers_without_a_declared_spec_still_get_their_leaves_checked():
    """A user's layer or conditioner that declares no spec (``tree.ANY``): its keys and shapes are
    its own business, but leaves must still be finite arrays of the input's dtype."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4))
    layer = AffineCoupling(4, conditioner=_Undeclared(MLP(2, 4, hidden=(3,))))
    assert layer.param_spec() == {"net": tree.ANY}
    params = layer.init(rng, x)
    assert np.array_equal(layer.forward(params, x)[0], x)  # a fresh coupling is the identity
    bad = replace(params, "net/0/w", params["net"]["0"]["w"] * np.nan)
    expect_error(lambda: layer.forward(bad, x), "AffineCoupling", "parameter 'net/0/w' contains NaN")
    expect_error(lambda: layer.forward(replace(params, "net/0/b", [0.0]), x), "AffineCoupling", "must be an array")
    expect_error(lambda: layer.forward({}, x), "AffineCoupling", "parameter 'net' is missing")
    user = _UserScale()
    p = user.init(rng, x[:, :3])
    expect_error(lambda: user.forward({"a": p["a"].astype(np.float32)}, x[:, :3]), "_UserScale", "has dtype float32")
    expect_error(lambda: user.forward(None, x[:, :3]), "_UserScale", "params must be a dict")
    z, ld, cache = user.forward(p, x[:, :3])
    expect_error(lambda: user.backward(p, cache, z, np.full_like(ld, np.inf)), "_UserScale", "log-det cotangent contains NaN")
    record("1 parameter trees", "user layer", "undeclared spec")


def test_every_registered_layer_declares_the_spec_its_init_produces():
    for name in NAMES:
        c = CASES[name]
        assert tree.shapes(c.layer.init(np.random.default_rng(1), c.x)) == c.layer.param_spec(), name
    assert isinstance(Split(4).param_spec()["prior"], dict)
