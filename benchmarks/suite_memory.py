"""Suite ``memory``: activation memory of a training step against depth, cached vs reconstructing.

A :class:`~rawflow.Chain` (and :class:`~rawflow.bijectors.multiscale.MultiScale`) either keeps every
layer's cache for the backward pass (``reconstruct=False``, memory grows with depth) or keeps
only its input and output and rebuilds each layer's input with its inverse during the backward
(``reconstruct=True``). Rows per depth: one forward + backward of each, timed; ``peak MiB`` is
the activation memory (:func:`rawflow.training.memory.peak_step_memory`: traced NumPy peak above the
state before the step, excluding the returned gradients); ``err`` on the reconstructing row is
its worst relative gradient difference from the cached one; ``×base`` its speed against cached.
Same models as ``benchmarks/memory_depth.py`` (coupling stacks, and Glow for ``K`` steps per level).
"""

from __future__ import annotations

import numpy as np

from . import models
from .memory_depth import coupling_stack
from .runner import Candidate, Context, run_timed

NAME = "memory"
FULL = dict(batch=512, features=16, depths=[4, 8, 16, 32], glow_ks=[2, 4, 8], glow_batch=32)
QUICK = dict(batch=16, features=4, depths=[2, 4], glow_ks=[1], glow_batch=4)


def _step(bijector, params, x, gz, gl):
    def run():
        _, _, cache = bijector.forward(params, x)
        return bijector.backward(params, cache, gz, gl)

    return run


def _pair(ctx, case, build, x, params_fn):
    from rawflow import tree
    from rawflow.training.memory import peak_step_memory

    flows = {rec: build(rec) for rec in (False, True)}
    params = params_fn(flows[False])
    rng = np.random.default_rng(ctx.opts.seed + 2)
    z = flows[False].forward(params, x)[0]
    gz = rng.standard_normal(z.shape).astype(x.dtype)
    gl = np.full(x.shape[0], -1.0 / x.shape[0], dtype=x.dtype)
    peaks = {rec: peak_step_memory(flows[rec], params, x) for rec in (False, True)}
    ref = peaks[False]["gparams"]
    diff = models.tree_error(peaks[True]["gparams"], ref)
    cands = [Candidate("cached backward", lambda: _step(flows[False], params, x, gz, gl), kind="baseline"),
             Candidate("reconstructing backward", lambda: _step(flows[True], params, x, gz, gl),
                       check=lambda out: diff, note="err: gradient difference from cached")]
    rows = run_timed(ctx, NAME, case, "step (fwd+bwd)", cands, "cached backward", items=x.shape[0])
    for r in rows:
        rec = r.impl.startswith("reconstructing")
        r.peak_bytes, r.mem_method = peaks[rec]["peak_bytes"], "tracemalloc (activations)"
        r.extra["params_bytes"] = tree.nbytes(params)
    return rows


def run(ctx: Context):
    cfg = QUICK if ctx.opts.quick else FULL
    rows = []
    x = np.random.default_rng(ctx.opts.seed).standard_normal((cfg["batch"], cfg["features"]))

    def stack_params(flow):
        from rawflow import tree

        rng = np.random.default_rng(ctx.opts.seed + 1)
        return tree.map(lambda a: rng.normal(scale=0.05, size=a.shape), flow.init(rng, x))

    for depth in cfg["depths"]:
        case = f"coupling stack depth {depth}, {cfg['batch']}×{cfg['features']} float64"
        rows += _pair(ctx, case, lambda rec, d=depth: coupling_stack(cfg["features"], d, rec), x, stack_params)
    from rawflow.models.architectures import glow

    xi = np.random.default_rng(ctx.opts.seed).uniform(size=(cfg["glow_batch"], 1, 8, 8))
    for k in cfg["glow_ks"]:
        case = f"Glow K={k} L=2 width 16 1×8×8, batch {cfg['glow_batch']} float64"

        def glow_params(flow):
            from rawflow import tree

            rng = np.random.default_rng(ctx.opts.seed + 1)
            return tree.map(lambda a: a + rng.normal(scale=0.01, size=a.shape), flow.init(rng, xi))

        rows += _pair(ctx, case, lambda rec, kk=k: glow(kk, 2, 16, (1, 8, 8), reconstruct=rec), xi, glow_params)
    ctx.note(NAME, "peak MiB: activation memory of one step (traced NumPy peak minus the state before the step and "
                   "the returned gradients); deterministic, unlike the timings")
    return rows
