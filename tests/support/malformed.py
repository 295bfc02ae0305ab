"""Malformed arguments for the property tests of issue 13 (part A): strategies, the error check,
and a tally of the distinct malformed inputs the tests drive.

Every malformed call must raise ``ValueError`` (or ``TypeError``) whose message starts with the
name of what was called (``"AffineCoupling: "``, ``"FlowModel.sample: "``, ``"Adam: "``) and names
the argument (``"parameter 'net/0/w'"``, ``"log-det cotangent"``, ``"cache"``, ``"rng"``, ...).

Tally: each test calls :func:`record` with the issue item and a signature of the input it drove
(entry point, case, kind of corruption, where). ``RAWFLOW_COUNT_MALFORMED=FILE`` writes the
distinct signatures per item to ``FILE`` (JSON) when the test process exits.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import warnings
from collections import defaultdict

import numpy as np
from hypothesis import strategies as st

from rawflow import tree

DRIVEN: dict[str, set] = defaultdict(set)


def record(item: str, *signature) -> None:
    DRIVEN[item].add(tuple(str(s) for s in signature))


@atexit.register
def _dump() -> None:
    path = os.environ.get("RAWFLOW_COUNT_MALFORMED")
    if path and DRIVEN:
        counts = {item: len(sigs) for item, sigs in sorted(DRIVEN.items())}
        with open(path, "w") as f:
            json.dump({"counts": counts, "total": sum(counts.values()),
                       "signatures": {k: sorted(map(list, v)) for k, v in sorted(DRIVEN.items())}}, f, indent=1)


def expect_error(call, owner: str, argument: str):
    """``call()`` raises ``ValueError``/``TypeError`` whose message starts with ``owner`` (or
    ``owner.method``) and contains the regex ``argument``. Returns the message."""
    try:
        call()
    except (ValueError, TypeError) as e:
        message = str(e)
    else:
        raise AssertionError(f"no error: expected '{owner}: ... {argument} ...'")
    assert re.match(rf"{re.escape(owner)}(\.\w+)?: ", message), f"not named after {owner!r}: {message!r}"
    assert re.search(argument, message), f"does not name {argument!r}: {message!r}"
    assert "Traceback" not in message
    return message


# ---------------------------------------------------------------------------- tree surgery
def paths(params: dict) -> list[str]:
    return [p for p, _ in tree.leaves(params)]


def nodes(params: dict, prefix: str = "") -> list[str]:
    """Paths of every dict node ('' for the root)."""
    out = [prefix]
    for key in sorted(params):
        if isinstance(params[key], dict):
            out += nodes(params[key], f"{prefix}/{key}" if prefix else key)
    return out


def replace(params: dict, path: str, value) -> dict:
    """A copy of ``params`` with the leaf (or node) at ``path`` replaced by ``value``."""
    key, _, rest = path.partition("/")
    out = dict(params)
    out[key] = replace(params[key], rest, value) if rest else value
    return out


def drop(params: dict, path: str) -> dict:
    key, _, rest = path.partition("/")
    out = dict(params)
    if rest:
        out[key] = drop(params[key], rest)
    else:
        del out[key]
    return out


def add(params: dict, node: str, key: str, value) -> dict:
    if not node:
        return {**params, key: value}
    head, _, rest = node.partition("/")
    return {**params, head: add(params[head], rest, key, value)}


@st.composite
def other_shapes(draw, shape: tuple):
    """A shape different from ``shape``: one size changed, an axis added or an axis removed."""
    how = draw(st.sampled_from(["size", "add", "remove"] if shape else ["add"]))
    if how == "size":
        axis = draw(st.integers(0, len(shape) - 1))
        size = draw(st.integers(0, 6).filter(lambda s: s != shape[axis]))
        return shape[:axis] + (size,) + shape[axis + 1:]
    if how == "add":
        axis = draw(st.integers(0, len(shape)))
        return shape[:axis] + (draw(st.integers(1, 3)),) + shape[axis:]
    axis = draw(st.integers(0, len(shape) - 1))
    return shape[:axis] + shape[axis + 1:]


NON_FINITE = st.sampled_from([np.nan, np.inf, -np.inf])

#: dtypes outside the rule, with the words their error contains
BAD_DTYPES = {
    "float16": (np.float16, "float16"),
    "longdouble": (np.longdouble, "float128|longdouble|float64"),  # float128 where long double is extended
    "clongdouble": (np.clongdouble, "complex256|clongdouble|complex128"),
    "big-endian float64": (np.dtype(">f8"), "byte order"),
    "big-endian float32": (np.dtype(">f4"), "byte order"),
    "int64": (np.int64, "floating-point"),
    "bool": (np.bool_, "floating-point"),
}
if np.dtype(np.longdouble) == np.float64:  # no distinct long double on this platform: not malformed
    del BAD_DTYPES["longdouble"], BAD_DTYPES["clongdouble"]


class ArrayLike:
    """Has ``shape`` and ``dtype`` like an array from another library (a torch.Tensor, say)."""

    def __init__(self, a):
        self.shape, self.dtype, self.ndim = a.shape, a.dtype, a.ndim


def not_arrays(a: np.ndarray) -> dict:
    """Things passed where the array ``a`` belongs, by name."""
    out = {"None": None, "list": a.tolist(), "float": 1.0, "string": "x", "array-like": ArrayLike(a),
           "masked": np.ma.masked_array(a, mask=np.zeros(a.shape, bool))}
    if a.ndim == 2:
        with warnings.catch_warnings():  # numpy discourages np.matrix: that is the point
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            out["np.matrix"] = np.asmatrix(a)
    return out


def want_for(what: str) -> str:
    """The words the error for the non-array ``what`` (a key of :func:`not_arrays`) contains."""
    return "must be a plain array" if what in ("masked", "np.matrix") else "must be an array"
