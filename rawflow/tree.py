"""Parameter trees: nested ``dict[str, ...]`` with arrays at the leaves.

Every parameter set in rawflow (a layer's, a chain's, a model's, an optimiser's state) is such a
tree, and every gradient has exactly the structure of its parameters, so optimisers, checkers and
checkpoint writers walk both the same way. Leaf paths are ``/``-joined keys, e.g. ``"flow/3/net/1/w"``.

A *spec* is the same nesting with shape tuples at the leaves (:func:`shapes`; a layer's
``param_spec()``); :func:`check` holds a tree against one and names the first bad path.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

from ._array import Array, namespace
from ._checks import array_problem, dtype_problem

Tree = dict  # dict[str, Tree | Array]


def leaves(tree: Tree, prefix: str = "") -> Iterator[tuple[str, Array]]:
    """Yield ``(path, leaf)`` in a deterministic (sorted-key) order."""
    for key in sorted(tree):
        value = tree[key]
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            yield from leaves(value, path)
        else:
            yield path, value


def rebuild(like: Tree, values: dict[str, Array], prefix: str = "") -> Tree:
    """``like``'s structure with the leaf at each path taken from ``values[path]`` (the inverse of
    :func:`leaves`: ``rebuild(t, dict(leaves(t)))`` equals ``t``)."""
    out = {}
    for key, value in like.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        out[key] = rebuild(value, values, path) if isinstance(value, dict) else values[path]
    return out


def map(fn: Callable[..., Array], tree: Tree, *rest: Tree) -> Tree:  # noqa: A001 - mirrors jax.tree.map
    """Apply ``fn`` leaf-wise over trees of identical structure."""
    out = {}
    for key, value in tree.items():
        others = [r[key] for r in rest]
        out[key] = map(fn, value, *others) if isinstance(value, dict) else fn(value, *others)
    return out


def zeros_like(tree: Tree) -> Tree:
    return map(lambda a: namespace(a).zeros_like(a), tree)


def add(a: Tree, b: Tree) -> Tree:
    return map(lambda u, v: u + v, a, b)


def scale(tree: Tree, c: float) -> Tree:
    return map(lambda u: u * c, tree)


def vdot(a: Tree, b: Tree):
    """``Σ a·b`` over all leaves (a Python/0-d scalar)."""
    total = 0.0
    for (_, u), (_, v) in zip(leaves(a), leaves(b)):
        total = total + (u * v).sum()
    return total


def nbytes(tree: Tree) -> int:
    return sum(int(a.nbytes) for _, a in leaves(tree))


def structure(tree: Tree) -> dict[str, tuple]:
    """``{path: shape}``: two trees with equal structure give equal results."""
    return {path: tuple(a.shape) for path, a in leaves(tree)}


def get(tree: Tree, path: str) -> Array:
    node: Any = tree
    for key in path.split("/"):
        node = node[key]
    return node


def set(tree: Tree, path: str, value: Array) -> Tree:  # noqa: A001
    """Return a copy of ``tree`` with the leaf at ``path`` replaced (other leaves shared)."""
    key, _, rest = path.partition("/")
    out = dict(tree)
    out[key] = set(tree[key], rest, value) if rest else value
    return out


# ---------------------------------------------------------------------------- specs and checks
class _Any:
    """Spec placeholder for a subtree whose structure its owner does not declare (a user's own
    layer or conditioner): its leaves are still checked (arrays, dtype, finite), not its keys."""

    def __repr__(self) -> str:
        return "tree.ANY"


#: A spec subtree that accepts any tree (see :func:`check`).
ANY = _Any()

#: A spec: nested ``dict[str, Spec]`` whose leaves are shape tuples, or :data:`ANY`.
Spec = Any


def shapes(tree: Tree) -> Spec:
    """The spec of ``tree``: the same nesting with each leaf replaced by its shape tuple."""
    return {key: shapes(v) if isinstance(v, dict) else tuple(v.shape) for key, v in tree.items()}


def check(owner: str, tree: Any, spec: Spec, dtype=None, *, what: str = "parameter",
          root: str = "params", finite: bool = True) -> None:
    """Check ``tree`` against ``spec``; raise ``ValueError("<owner>: ...")`` naming the first bad path.

    * the same keys at every level (a missing or an unexpected key is named by its path);
    * every leaf a NumPy/CuPy array of the spec's shape;
    * every leaf of dtype ``dtype`` (the input's), or, with ``dtype=None``, all leaves of one
      dtype that rawflow computes in;
    * every leaf finite (one reduction per leaf), unless ``finite=False``.

    Cost: O(number of leaves) plus one finiteness reduction per leaf.
    """
    if not isinstance(tree, dict):
        raise ValueError(f"{owner}: {root} must be a dict (a parameter tree), got {type(tree).__name__}")
    _check_node(owner, tree, spec, [dtype, "the input"], "", what, finite)


def _join(path: str, key) -> str:
    return f"{path}/{key}" if path else str(key)


def _check_node(owner, node, spec, dtype, path, what, finite) -> None:
    # Paths are joined only for children that are dicts or that fail: most leaves pass.
    if spec is ANY:
        for key in node:
            if not isinstance(key, str):
                raise ValueError(f"{owner}: {what} keys must be strings, got {key!r} under '{path or '/'}'")
        for key in sorted(node):
            value = node[key]
            if isinstance(value, dict):
                _check_node(owner, value, ANY, dtype, _join(path, key), what, finite)
            else:
                _check_leaf(owner, value, None, dtype, path, key, what, finite)
        return
    if node.keys() != spec.keys():
        for key in node:
            if not isinstance(key, str):
                raise ValueError(f"{owner}: {what} keys must be strings, got {key!r} under '{path or '/'}'")
        missing = sorted(spec.keys() - node.keys())
        if missing:
            names = ", ".join(f"'{_join(path, k)}'" for k in missing)
            raise ValueError(f"{owner}: {what}{'s' if len(missing) > 1 else ''} {names} "
                             f"{'are' if len(missing) > 1 else 'is'} missing")
        extra = sorted(node.keys() - spec.keys())
        names = ", ".join(f"'{_join(path, k)}'" for k in extra)
        raise ValueError(f"{owner}: unexpected {what}{'s' if len(extra) > 1 else ''} {names} "
                         "(not in this object's parameters: params of another layer or model?)")
    for key in sorted(spec):
        sub, value = spec[key], node[key]
        if isinstance(sub, dict) or sub is ANY:
            if not isinstance(value, dict):
                raise ValueError(f"{owner}: {what} '{_join(path, key)}' must be a dict (a subtree), "
                                 f"got {type(value).__name__}")
            _check_node(owner, value, sub, dtype, _join(path, key), what, finite)
        else:
            _check_leaf(owner, value, sub, dtype, path, key, what, finite)


def _check_leaf(owner, leaf, shape, dtype, parent, key, what, finite) -> None:
    plain = type(leaf) is np.ndarray  # the common case, without the subclass tests
    if not plain:
        problem = array_problem(leaf)
        if problem:
            raise ValueError(f"{owner}: {what} '{_join(parent, key)}' {problem}")
    if shape is not None and leaf.shape != shape:
        raise ValueError(f"{owner}: {what} '{_join(parent, key)}' has shape {tuple(leaf.shape)}, expected {shape}")
    if dtype[0] is None:
        problem = dtype_problem(leaf.dtype)
        if problem:
            raise ValueError(f"{owner}: {what} '{_join(parent, key)}' {problem}")
        dtype[:] = [leaf.dtype, f"{what} '{_join(parent, key)}'"]
    elif leaf.dtype != dtype[0]:
        raise ValueError(f"{owner}: {what} '{_join(parent, key)}' has dtype {leaf.dtype} but {dtype[1]} has dtype "
                         f"{dtype[0]}; cast one to match")
    if finite and not (np.isfinite(leaf).all() if plain else bool(namespace(leaf).isfinite(leaf).all())):
        xp = namespace(leaf)
        first = int(xp.argmin(xp.isfinite(leaf).reshape(-1)))
        where = tuple(int(i) for i in xp.unravel_index(first, leaf.shape))
        raise ValueError(f"{owner}: {what} '{_join(parent, key)}' contains NaN or Inf (first at index {where})")
