"""Training and evaluating conditional models from ``(x, y)`` arrays: labels and context rows
follow their data rows through every batch, the run is deterministic, data-parallel ranks equal
one process, and a class-conditional Glow learns what its labels say."""

import numpy as np
import pytest

from rawflow import Adam, FlowModel, StandardNormal, realnvp, train, tree
from rawflow.data.images import dequantize
from rawflow.models.architectures import class_conditional_glow
from rawflow.training.loop import evaluate_nll
from support.threadcomm import run_ranks


def two_clusters(n, rng):
    """Two labelled Gaussian clusters in 2-D (label k at (4k − 2, 0)), and a context of the label."""
    y = rng.integers(0, 2, n)
    x = rng.normal(scale=0.3, size=(n, 2)) + np.stack([4.0 * y - 2.0, np.zeros(n)], axis=1)
    return x, y


def test_conditional_realnvp_learns_p_x_given_context_and_repeats_bit_for_bit():
    rng = np.random.default_rng(0)
    x, y = two_clusters(1024, rng)
    c = np.eye(2)[y]
    model = FlowModel(realnvp(2, 4, hidden=(16, 16), context=2), StandardNormal((2,)))
    runs = []
    for _ in range(2):
        r = np.random.default_rng(1)
        params = model.init(r, x[:256], c[:256])
        params, _, losses = train(model, params, x, Adam(3e-3), 300, 64, r, y=c)
        runs.append((params, losses))
    assert np.array_equal(runs[0][1], runs[1][1])
    params = runs[0][0]
    right = evaluate_nll(model, params, x, y=c)
    wrong = evaluate_nll(model, params, x, y=c[:, ::-1].copy())
    # the flow uses the context: the right one explains the points, the swapped one does not
    assert right < 0.5 and wrong > right + 5


def test_labels_are_checked_against_the_data():
    rng = np.random.default_rng(2)
    x, y = two_clusters(64, rng)
    model = FlowModel(realnvp(2, 2, hidden=(4,), context=2), StandardNormal((2,)), classes=2)
    params = model.init(rng, x, y)
    with pytest.raises(ValueError, match=r"train: y must hold one label or context row per data row \(64\), got shape \(63,\)"):
        train(model, params, x, Adam(1e-3), 1, 8, rng, y=y[:-1])
    with pytest.raises(ValueError, match=r"FlowModel.nll_and_grad: labels must lie in \[0, 2\)"):
        train(model, params, x, Adam(1e-3), 1, 8, rng, y=y + 1)
    with pytest.raises(ValueError, match="evaluate_nll: y must be an array, got list"):
        evaluate_nll(model, params, x, y=list(y))


@pytest.mark.parametrize("ranks", [2])
def test_data_parallel_with_labels_equals_one_process(ranks):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 8, size=(128, 1, 4, 4))
    labels = rng.integers(0, 3, 128)
    model = class_conditional_glow(1, 2, 4, (1, 4, 4), 3, weight_y=0.01)

    def batch_fn(rows, r):
        return dequantize(rows, 8, r) - 0.5

    def run(comm):
        r = np.random.default_rng(4)
        params = model.init(r, batch_fn(images[:32], r), labels[:32])
        return train(model, params, images, Adam(2e-3), 20, 16, r, batch_fn=batch_fn, comm=comm, y=labels)

    one = run(None)
    many = run_ranks(ranks, run)
    for params, _, losses in many:
        assert np.allclose(losses, one[2], rtol=1e-12, atol=0)
        for (p, a), (_, b) in zip(tree.leaves(params), tree.leaves(one[0])):
            scale = max(float(np.abs(b).max()), 1e-300)
            assert float(np.abs(a - b).max()) <= 1e-12 * scale, p
