"""Whole models for the model-level suites: Glow / RealNVP built by rawflow, with a kernel backend
switched on where asked, plus perturbed parameters and float32/float64 copies."""

from __future__ import annotations

import inspect

import numpy as np


def glow_model(cfg: dict, backend: str = "reference"):
    """``FlowModel(glow(K, L, width, shape), StandardNormal)``; ``backend`` for its kernels."""
    from rawflow import FlowModel, StandardNormal
    from rawflow.models.architectures import glow

    kw = {}
    if backend != "reference" and "backend" in inspect.signature(glow).parameters:
        kw["backend"] = backend
    flow = glow(cfg["K"], cfg["L"], cfg["width"], cfg["shape"], **kw)
    if backend != "reference" and not kw:
        set_backend(flow, backend)
    return FlowModel(flow, StandardNormal((int(np.prod(cfg["shape"])),)))


def realnvp_model(cfg: dict, backend: str = "reference"):
    from rawflow import FlowModel, StandardNormal, realnvp

    flow = realnvp(cfg["features"], cfg["couplings"], cfg["hidden"])
    if backend != "reference":
        set_backend(flow, backend)
    return FlowModel(flow, StandardNormal((cfg["features"],)))


def set_backend(bijector, backend: str) -> list[str]:
    """Switch every coupling transform (and ActNorm, where it takes ``backend=``) of a freshly built
    flow to ``backend``. Returns what was switched. (rawflow layers are immutable by contract;
    this rewires a flow the benchmark has just built and owns, before any use.)"""
    from rawflow import ActNorm, AdditiveTransform, AffineTransform, Chain, Coupling
    from rawflow.bijectors.multiscale import MultiScale

    actnorm_backend = "backend" in inspect.signature(ActNorm.__init__).parameters
    done = []

    def walk(b):
        if isinstance(b, MultiScale):
            for lvl in b.levels:
                walk(lvl)
        elif isinstance(b, Chain):
            for i, layer in enumerate(b.layers):
                if isinstance(layer, ActNorm) and actnorm_backend:
                    b.layers[i] = ActNorm(layer.features, layer.spatial, data_init=layer.data_init, backend=backend)
                    done.append("ActNorm")
                else:
                    walk(layer)
        elif isinstance(b, Coupling):
            t = b.transform
            if isinstance(t, AffineTransform):
                b.transform = AffineTransform(t.scale, backend=backend)
            elif isinstance(t, AdditiveTransform):
                b.transform = AdditiveTransform(backend=backend)
            done.append(type(b).__name__)

    walk(bijector)
    return sorted(set(done))


def perturbed_params(model, x, seed: int = 1, scale: float = 0.01) -> dict:
    """Parameters from ``model.init`` on ``x`` plus small noise, so no zero-initialised layer
    (the conditioners' last convolutions, the split priors) makes the gradient trivially sparse."""
    from rawflow import tree

    rng = np.random.default_rng(seed)
    params = model.init(rng, x)
    return tree.map(lambda a: a + scale * rng.standard_normal(a.shape).astype(a.dtype), params)


def cast(params, dtype):
    from rawflow import tree

    return tree.map(lambda a: np.asarray(a, dtype=dtype), params)


def tree_error(actual, expected) -> float:
    """Worst normwise relative difference over the leaves of two parameter trees."""
    from rawflow import tree

    worst = 0.0
    for path, e in tree.leaves(expected):
        a = np.asarray(tree.get(actual, path), dtype=np.float64)
        e = np.asarray(e, dtype=np.float64)
        worst = max(worst, float(np.max(np.abs(a - e))) / max(float(np.max(np.abs(e))), 1e-300))
    return worst
