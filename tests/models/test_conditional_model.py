"""Conditional models p(x | y): a conditional RealNVP on a float context, and openai/glow's
class-conditional Glow (``--ycond``, ``--learntop``, ``--weight_y``) with its classifier head.

The training objective's gradient (every parameter, the context) against the complex step; the
objective against openai's ``bits_x + weight_y·bits_y``; labels against one-hot rows; the
per-class log-densities against ``log_prob``; a fresh class-conditional Glow against the
unconditional one; sampling per class; every bad ``y`` a one-line error.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import rel_err
from rawflow import tree
from rawflow.distributions.priors import StandardNormal
from rawflow.models.architectures import class_conditional_glow, glow, realnvp
from rawflow.models.classifier import ClassifierHead, cross_entropy
from rawflow.models.model import FlowModel

FEW = max(4, settings.default.max_examples // 3)
CS = 1e-20


def cs_grads(fn, params, extra=None):
    """Complex-step gradient of the scalar ``fn(params, extra)`` for every leaf (and ``extra``)."""
    out = {}
    pc = tree.map(lambda a: a.astype(complex), params)
    ec = None if extra is None else extra.astype(complex)
    for path, leaf in tree.leaves(params):
        g = np.zeros(leaf.shape)
        for i in np.ndindex(leaf.shape):
            a = tree.get(pc, path)
            a[i] += 1j * CS
            g[i] = fn(pc, ec).imag / CS
            a[i] -= 1j * CS
        out[path] = g
    if extra is not None:
        g = np.zeros(extra.shape)
        for i in np.ndindex(extra.shape):
            ec[i] += 1j * CS
            g[i] = fn(pc, ec).imag / CS
            ec[i] -= 1j * CS
        out["context"] = g
    return out


def objective(model, x, y):
    """The training objective written from the model's definition (complex-safe)."""
    def fn(p, c):
        c = y if c is None else c
        xd = x.astype(next(a for _, a in tree.leaves(p)).dtype)
        lp = model.log_prob(p, xd, c)
        loss = -np.mean(lp)
        if model.classifier is not None and model.weight_y > 0:
            z = model.encode(p, xd, c)
            logits = model.classifier.apply(p["classifier"], z)[0]
            target = np.eye(model.classes)[y] if getattr(y, "ndim", 2) == 1 else c
            ce = cross_entropy(logits, target)[0]
            loss = loss + model.weight_y * math.prod(x.shape[1:]) * np.mean(ce)
        return loss
    return fn


@settings(max_examples=FEW)
@given(st.integers(0, 2**31), st.booleans())
def test_conditional_realnvp_gradients_and_context_gradient_meet_the_complex_step(seed, reconstruct):
    rng = np.random.default_rng(seed)
    model = FlowModel(realnvp(3, 3, hidden=(4,), activation="tanh", reconstruct=reconstruct, context=2),
                      StandardNormal((3,)))
    x, c = rng.normal(size=(4, 3)), rng.normal(size=(4, 2))
    params = tree.map(lambda a: rng.normal(scale=0.4, size=a.shape), model.init(rng, x, c))
    loss, grads, gc = model.nll_and_grad(params, x, c, context_grad=True)
    assert loss == pytest.approx(model.nll(params, x, c), rel=1e-15)
    ref = cs_grads(objective(model, x, None), params, c)
    for path, g in tree.leaves(grads):
        assert rel_err(g, ref[path]) <= 1e-12, path
    assert rel_err(gc, ref["context"]) <= 1e-12


def tiny_ycond(weight_y=0.01, split_prior=False, learn_top=True):
    return class_conditional_glow(1, 2, 2, (1, 4, 4), 3, weight_y=weight_y, split_prior=split_prior,
                                  learn_top=learn_top)


def moved(model, rng, x, y, scale=0.05):
    return tree.map(lambda a: a + rng.normal(scale=scale, size=a.shape), model.init(rng, x, y))


@pytest.mark.parametrize("split_prior", [False, True])
def test_class_conditional_glow_objective_and_gradients_meet_the_complex_step(split_prior):
    rng = np.random.default_rng(1)
    model = tiny_ycond(weight_y=0.05, split_prior=split_prior)
    x, y = rng.uniform(size=(3, 1, 4, 4)) - 0.5, np.array([0, 2, 1])
    params = moved(model, rng, x, y)
    loss, grads = model.nll_and_grad(params, x, y)
    fn = objective(model, x, y)
    assert loss == pytest.approx(float(fn(params, None).real), rel=1e-13)
    ref = cs_grads(fn, params)
    for path, g in tree.leaves(grads):
        assert rel_err(g, ref[path]) <= 1e-11, path
    assert set(grads) == {"flow", "prior", "classifier"}


def test_objective_is_openai_bits_x_plus_weight_y_bits_y_times_d_ln2():
    rng = np.random.default_rng(2)
    model = tiny_ycond(weight_y=0.3)
    x, y = rng.uniform(size=(4, 1, 4, 4)) - 0.5, np.array([0, 1, 2, 1])
    params = moved(model, rng, x, y, 0.2)
    d = 16
    bits_x = -model.log_prob(params, x, y) / (d * math.log(2))
    logits = model.classifier_logits(params, x)
    bits_y = (np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(4), y]) / math.log(2)
    openai = np.mean(bits_x + 0.3 * bits_y)
    loss, _ = model.nll_and_grad(params, x, y)
    assert loss == pytest.approx(openai * d * math.log(2), rel=1e-13)


def test_labels_equal_their_one_hot_rows_and_per_class_log_probs_equal_log_prob():
    rng = np.random.default_rng(3)
    for model in (tiny_ycond(), tiny_ycond(split_prior=True)):
        x, y = rng.uniform(size=(5, 1, 4, 4)) - 0.5, np.array([0, 1, 2, 2, 0])
        params = moved(model, rng, x, y, 0.1)
        onehot = np.eye(3)[y]
        assert np.array_equal(model.log_prob(params, x, y), model.log_prob(params, x, onehot))
        per_class = model.log_prob_per_class(params, x)
        assert per_class.shape == (5, 3)
        for k in range(3):
            assert rel_err(per_class[:, k], model.log_prob(params, x, np.full(5, k))) <= 1e-15
        l1, g1 = model.nll_and_grad(params, x, y)
        l2, g2 = model.nll_and_grad(params, x, onehot)
        assert l1 == l2 and all(np.array_equal(a, tree.get(g2, p)) for p, a in tree.leaves(g1))


def test_a_fresh_class_conditional_glow_is_the_unconditional_glow_for_every_label():
    """Every class term starts at zero (openai's zero init), and the learned top starts at N(0, I)."""
    rng = np.random.default_rng(4)
    x = rng.uniform(size=(6, 1, 4, 4)) - 0.5
    cond = class_conditional_glow(1, 2, 2, (1, 4, 4), 3, split_prior=True, seed=7)
    plain = FlowModel(glow(1, 2, 2, (1, 4, 4), learn_top=False, seed=7), StandardNormal((16,)))
    pc, pp = cond.init(np.random.default_rng(5), x, np.zeros(6, dtype=int)), plain.init(np.random.default_rng(5), x)
    lp = plain.log_prob(pp, x)
    for label in range(3):
        assert rel_err(cond.log_prob(pc, x, np.full(6, label)), lp) <= 1e-15


def test_sampling_per_class_is_the_prior_class_mean_decoded():
    rng = np.random.default_rng(6)
    model = tiny_ycond(weight_y=0.0, learn_top=False)
    x, y = rng.uniform(size=(2, 1, 4, 4)) - 0.5, np.array([0, 1])
    params = moved(model, rng, x, y, 0.02)
    labels = np.array([2, 0, 1])
    draws = model.sample(params, np.random.default_rng(7), 3, temperature=0.5, y=labels)
    z = model.prior.sample(params["prior"], np.random.default_rng(7), 3, 0.5, context=np.eye(3)[labels])
    assert np.array_equal(draws, model.decode(params, z))
    back = model.encode(params, draws)
    assert rel_err(back, z) <= 1e-12
    with pytest.raises(ValueError, match=r"FlowModel.sample: y has 2 labels for 3 samples"):
        model.sample(params, rng, 3, y=labels[:2])


@pytest.mark.parametrize("y, message", [
    (None, "the model is conditional: pass y, integer labels"),
    (np.array([0, 1, 3]), r"labels must lie in \[0, 3\), got values from 0 to 3"),
    (np.array([0, -1, 1]), r"labels must lie in \[0, 3\)"),
    (np.array([0.0, 1.0, 2.0]), "labels y must be integers, got dtype float64"),
    (np.array([0, 1]), "y has 2 labels for 3 samples"),
    (np.zeros((3, 2)), "y has size 2 on axis 1, expected 3"),
    ([0, 1, 2], "y must be an array, got list"),
    (np.array([True, False, True]), "labels y must be integers, got dtype bool"),
])
def test_bad_labels_are_one_line_errors(y, message):
    rng = np.random.default_rng(8)
    model = tiny_ycond()
    x = rng.uniform(size=(3, 1, 4, 4)) - 0.5
    params = model.init(rng, x, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="FlowModel.log_prob: " + message):
        model.log_prob(params, x, y)


def test_unconditional_models_refuse_y_and_construction_errors():
    rng = np.random.default_rng(9)
    model = FlowModel(realnvp(2, 2, hidden=(3,)), StandardNormal((2,)))
    x = rng.normal(size=(3, 2))
    params = model.init(rng, x)
    with pytest.raises(ValueError, match="FlowModel.log_prob: takes no y"):
        model.log_prob(params, x, np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="FlowModel: a classifier head needs classes="):
        FlowModel(realnvp(2, 2), StandardNormal((2,)), classifier=ClassifierHead(2, (2,), 3))
    with pytest.raises(ValueError, match="weight_y > 0 weighs a classifier's cross-entropy"):
        FlowModel(realnvp(2, 2, context=3), StandardNormal((2,)), classes=3, weight_y=0.1)
    with pytest.raises(ValueError, match=r"take a context of shape \(2,\), not the one-hot label of 3 classes"):
        FlowModel(realnvp(2, 2, context=2), StandardNormal((2,)), classes=3)
    with pytest.raises(ValueError, match="context_grad needs a model conditioned on a float context"):
        cond = tiny_ycond()
        xi = rng.uniform(size=(2, 1, 4, 4))
        cond.nll_and_grad(cond.init(rng, xi, np.array([0, 1])), xi, np.array([0, 1]), context_grad=True)


def test_classifier_head_pools_the_top_latent_before_the_class_term():
    rng = np.random.default_rng(10)
    model = tiny_ycond(weight_y=0.01)
    x, y = rng.uniform(size=(4, 1, 4, 4)) - 0.5, np.array([0, 1, 2, 0])
    params = moved(model, rng, x, y, 0.3)
    z = model.encode(params, x)
    top = z[:, -model.classifier.top_size:].reshape(4, *model.classifier.top_shape)
    p = params["classifier"]
    want = (top.mean(axis=(2, 3)) @ p["w"].T + p["b"]) * np.exp(3 * p["logs"])
    assert rel_err(model.classifier_logits(params, x), want) <= 1e-15
    # with the class in the split priors too, the top latent the head reads still ignores the label
    split = tiny_ycond(weight_y=0.01, split_prior=True)
    params = moved(split, rng, x, y, 0.3)
    tops = [split.encode(params, x, np.full(4, k))[:, -split.classifier.top_size:] for k in range(3)]
    assert np.array_equal(tops[0], tops[1]) and np.array_equal(tops[0], tops[2])
    assert not np.array_equal(split.encode(params, x, np.zeros(4, int)), split.encode(params, x, np.ones(4, int)))
    assert np.array_equal(split.classifier_logits(params, x, y), split.classifier_logits(params, x, np.zeros(4, int)))
