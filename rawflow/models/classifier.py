"""openai/glow's classifier head (``--ycond --weight_y``): class logits from the pooled top latent.

For a class-conditional Glow the flat latent is ``z = [ε | vec(z_top)]`` (:class:`~rawflow.bijectors.conditional_prior.MultiScalePrior`);
openai's ``model.py`` reads ``z_top``, *before* the prior's class term, so the head predicts the class
from the image alone::

    p = mean_{h,w} z_top: (N, C)            (vectors: p = the last C entries of z)
    logits = LinearZeros(p): (N, K)         (see rawflow.nets.context; zero at init)
    CE = logsumexp(logits)·Σ_k t_k − Σ_k t_k·logits_k      (t: one-hot label, or any target weights)

and the training objective adds ``weight_y · bits_y`` to openai's ``bits_x`` (both per image). In
rawflow's nats per example that objective is ``NLL + weight_y·D·CE`` (``D`` = dimensions of ``x``):
:meth:`rawflow.models.model.FlowModel.nll_and_grad` minimises exactly that. VJPs::

    glogits = gCE ⊙ (softmax(logits)·Σ t − t),     gt = gCE ⊙ (logsumexp − logits)
    gp = LinearZerosᵀ(glogits),                    gz_top = gp / (H·W) at every pixel

Complex-step safe (the logsumexp shift uses the real part, which leaves the value unchanged).
"""

from __future__ import annotations

import math

import numpy as np

from .._array import Array, namespace
from ..nets.context import LinearZeros


class ClassifierHead:
    """Logits ``LinearZeros(mean-pooled top latent)`` from a flat latent of ``size`` entries.

    ``top_shape``: ``(C, H, W)`` for an image flow's top latent (the last ``C·H·W`` entries of ``z``),
    or ``(C,)`` for a vector flow (the last ``C`` entries, no pooling).
    """

    def __init__(self, size: int, top_shape, n_classes: int):
        try:
            self.top_shape = tuple(int(d) for d in top_shape)
        except (TypeError, ValueError):
            raise ValueError(f"ClassifierHead: top_shape must be (C, H, W) or (C,), got {top_shape!r}") from None
        if len(self.top_shape) not in (1, 3) or min(self.top_shape) < 1:
            raise ValueError(f"ClassifierHead: top_shape must be (C, H, W) or (C,) of positive sizes, got {top_shape!r}")
        self.top_size = math.prod(self.top_shape)
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < self.top_size:
            raise ValueError(f"ClassifierHead: size must be an integer ≥ {self.top_size}, got {size!r}")
        if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
            raise ValueError(f"ClassifierHead: n_classes must be an integer ≥ 2, got {n_classes!r}")
        self.size, self.n_classes = int(size), int(n_classes)
        self.linear = LinearZeros(self.top_shape[0], self.n_classes)

    def __repr__(self) -> str:
        return f"ClassifierHead({self.size}, top_shape={self.top_shape}, n_classes={self.n_classes})"

    def param_spec(self) -> dict:
        return self.linear.param_spec()

    def _pooled(self, z: Array) -> Array:
        top = z[:, self.size - self.top_size:].reshape((z.shape[0],) + self.top_shape)
        return top if top.ndim == 2 else top.mean(axis=(2, 3))  # (N, C)

    def init(self, rng, z: Array) -> dict:
        return self.linear.init(rng, self._pooled(z))

    def apply(self, params: dict, z: Array):
        """``(logits: (N, K), cache)`` for the flat latent ``z: (N, size)``."""
        return self.linear.apply(params, self._pooled(z))

    def backward(self, params: dict, cache, glogits: Array):
        """``(gz: (N, size), gparams)``."""
        gp, gparams = self.linear.backward(params, cache, glogits)
        xp = namespace(gp)
        n = gp.shape[0]
        if len(self.top_shape) == 3:
            c, h, w = self.top_shape
            gp = xp.broadcast_to((gp / (h * w))[:, :, None, None], (n, c, h, w))
        gz = xp.zeros((n, self.size), dtype=gp.dtype)
        gz[:, self.size - self.top_size:] = gp.reshape(n, self.top_size)
        return gz, gparams


def cross_entropy(logits: Array, target: Array):
    """``(ce: (N,), dce/dlogits, dce/dtarget)``: ``ce = lse·Σt − Σ t·logits`` per row (see module doc)."""
    xp = namespace(logits, target)
    shift = logits.real.max(axis=1, keepdims=True)  # any shift is exact; the real part keeps it complex-safe
    e = xp.exp(logits - shift)
    total = e.sum(axis=1, keepdims=True)
    lse = xp.log(total) + shift  # (N, 1)
    mass = target.sum(axis=1, keepdims=True)
    ce = (lse * mass).reshape(-1) - (target * logits).sum(axis=1)
    return ce, (e / total) * mass - target, lse - logits


def one_hot(labels: Array, n_classes: int, dtype, xp) -> Array:
    """``(N, K)`` rows with a 1 at each label (``labels``: integers in ``[0, K)``)."""
    out = xp.zeros((labels.shape[0], n_classes), dtype=dtype)
    out[xp.arange(labels.shape[0]), labels] = 1
    return out
