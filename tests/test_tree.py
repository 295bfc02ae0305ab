"""``rawflow.tree``: ``rebuild`` is the inverse of ``leaves`` (the distributed gradient allreduce and
the check probes rebuild trees from flat leaves with it)."""

import numpy as np
import pytest

from rawflow import tree


def test_rebuild_inverts_leaves_including_empty_subtrees():
    t = {"b": {"y": np.arange(3.0), "x": np.ones((2, 2))}, "a": np.zeros(1), "empty": {}}
    back = tree.rebuild(t, dict(tree.leaves(t)))
    assert back.keys() == t.keys() and back["empty"] == {}
    assert all(x is y for (_, x), (_, y) in zip(tree.leaves(back), tree.leaves(t)))


def test_rebuild_takes_each_leaf_from_its_path():
    like = {"net": {"w": None, "b": None}, "s": None}
    out = tree.rebuild(like, {"net/w": 1, "net/b": 2, "s": 3})
    assert out == {"net": {"w": 1, "b": 2}, "s": 3}
    with pytest.raises(KeyError):
        tree.rebuild(like, {"net/w": 1, "s": 3})
