"""Parameter trees: nested ``dict[str, ...]`` with arrays at the leaves.

Every parameter set in rawflow (a layer's, a chain's, a model's, an optimiser's state) is such a
tree, and every gradient has exactly the structure of its parameters, so optimisers, checkers and
checkpoint writers walk both the same way. Leaf paths are ``/``-joined keys, e.g. ``"flow/3/net/1/w"``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from ._array import Array, namespace

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
