"""Suite ``glow``: one full training step (mean NLL and its gradient for every parameter) of a Glow.

The model is :func:`rawflow.models.architectures.glow` (squeeze → K × [ActNorm → LU 1×1 conv → affine
coupling with Glow's CNN, ``sigmoid(h + 2)`` scale] → split with a learned conditional prior, L
levels, learned top) under a standard normal prior. Rows:

* ``rawflow reference`` — :meth:`rawflow.FlowModel.nll_and_grad`, NumPy (BLAS for the
  convolutions' GEMMs, multi-threaded); the baseline;
* ``rawflow reference, unvalidated`` — the same step without its argument checks
  (``FlowModel._nll_and_grad``): its ratio is the cost of checking the input and every parameter
  (keys, shapes, dtype, finiteness) once per step. A note also gives the checks' own time;
* ``rawflow numba`` — the same model with ``backend="numba"`` on its couplings (and ActNorms
  where the checkout has ActNorm kernels): the fused kernels inside a real step;
* ``torch eager`` / ``torch.compile`` — :mod:`benchmarks.torch_flows`: the *same* model in
  PyTorch (same structure, same parameters; verified against rawflow in float64 before timing:
  loss and every gradient), gradients by autograd.

The error column is the worst normwise relative difference of the loss or of any parameter's
gradient from rawflow's float64 step at the same parameters.
"""

from __future__ import annotations

import time

import numpy as np

from rawflow import tree

from . import models, torch_impls
from .runner import Candidate, Context, numba_threads, run_timed

NAME = "glow"
BASELINE = "rawflow reference"
UNVALIDATED = "rawflow reference, unvalidated"
FULL = [dict(K=4, L=2, width=64, shape=(3, 16, 16), batch=32)]
QUICK = [dict(K=1, L=1, width=4, shape=(1, 4, 4), batch=4)]


def label(cfg, dtype) -> str:
    return (f"K={cfg['K']} L={cfg['L']} width={cfg['width']} {'×'.join(map(str, cfg['shape']))} "
            f"batch {cfg['batch']} {dtype}")


def run(ctx: Context):
    opts = ctx.opts
    rows = []
    dtype = np.dtype(opts.dtype)
    for cfg in QUICK if opts.quick else FULL:
        case = label(cfg, opts.dtype)
        x64 = np.random.default_rng(opts.seed).uniform(size=(cfg["batch"], *cfg["shape"]))
        model = models.glow_model(cfg)
        params64 = models.perturbed_params(model, x64, seed=opts.seed + 1)
        loss64, grads64 = model.nll_and_grad(params64, x64)
        params, x = models.cast(params64, dtype), x64.astype(dtype)

        def check(out, _g=grads64["flow"], _l=loss64):
            loss, grads = out
            loss = float(loss.detach()) if hasattr(loss, "detach") else float(loss)
            return max(abs(loss - _l) / abs(_l), models.tree_error(grads["flow"], _g))

        def rawflow_step(backend, validated=True):
            def make():
                m = model if backend == "reference" else models.glow_model(cfg, backend)
                if not validated:
                    return lambda: m._nll_and_grad(params, x)
                return lambda: m.nll_and_grad(params, x)

            return make

        cands = [Candidate(BASELINE, rawflow_step("reference"), check, kind="baseline"),
                 Candidate(UNVALIDATED, rawflow_step("reference", validated=False), check,
                           note="the same step without its argument checks"),
                 Candidate(f"rawflow numba ({opts.threads} thr)", rawflow_step("numba"), check,
                           enter=numba_threads(opts.threads),
                           note="fused coupling kernels" + (", ActNorm kernels" if _actnorm_kernels() else ""))]
        equivalence = {}
        if opts.torch:

            def torch_step(compiled):
                def make():
                    import torch

                    from . import torch_flows

                    torch_impls.set_threads(opts.threads)
                    if not equivalence:
                        equivalence.update(torch_flows.check_same(model, params64, x64))
                    tp = torch_flows.to_torch(params["flow"], requires_grad=True)
                    pairs = list(torch_flows.leaves(tp))
                    xt = torch.from_numpy(x)

                    def f(p, xx):
                        return torch_flows.nll(model.bijector, p, xx)

                    def step(fn):
                        loss = fn(tp, xt)
                        gs = torch.autograd.grad(loss, [t for _, t in pairs], allow_unused=True)
                        flat = {"/".join(path): (torch.zeros_like(t) if g is None else g)
                                for (path, t), g in zip(pairs, gs)}
                        return loss, {"flow": _unflatten(flat)}

                    g = torch_impls.compile_fn(ctx, f, lambda cf: step(cf)) if compiled else f
                    return lambda: step(g)

                return make

            cands.append(Candidate(f"torch eager ({opts.threads} thr)", torch_step(False), check, kind="baseline",
                                   memory="torch", available=torch_impls.missing, note="same model, autograd"))
            cands.append(Candidate(f"torch.compile ({opts.threads} thr)", torch_step(True), check, kind="baseline",
                                   memory="torch", available=lambda: torch_impls.missing() or ctx.compile_allowed()))
        tol = 1e-3 if dtype == np.float32 else 1e-9
        case_rows = run_timed(ctx, NAME, case, "glow.step", cands, BASELINE, items=cfg["batch"], tol=tol)
        rows += case_rows
        _note_validation(ctx, case, case_rows, model, params, x)
        if equivalence:
            ctx.note(NAME, f"{case}: torch model = rawflow model in float64 before timing: loss rel. diff "
                           f"{equivalence['loss_rel']:.1e}, worst gradient rel. diff {equivalence['grad_rel']:.1e}")
            for r in case_rows:
                r.extra["torch_equivalence_float64"] = dict(equivalence)
    ctx.note(NAME, "err: worst normwise relative difference of the loss or any parameter gradient from rawflow's "
                   "float64 step "
                   "at the same parameters; items/s = training samples per second")
    return rows


def _note_validation(ctx: Context, case: str, rows, model, params, x) -> None:
    """The checks alone (what ``nll_and_grad`` adds to ``_nll_and_grad``), as a share of the step."""
    by = {r.impl: r for r in rows if r.status == "ok"}
    if BASELINE not in by or UNVALIDATED not in by:
        return
    checks = []
    for _ in range(max(5, min(200, ctx.opts.repeats * 10))):
        t0 = time.perf_counter()
        model._check(params, x, model.event_shape, "input", "nll_and_grad")
        checks.append(time.perf_counter() - t0)
    check_s = float(np.median(checks))
    step = by[BASELINE].median_s
    ctx.note(NAME, f"{case}: validated / unvalidated step = {step / by[UNVALIDATED].median_s:.3f} (interleaved "
                   f"medians, noisy); the checks alone take {check_s * 1e6:.0f} µs = {100 * check_s / step:.2f} % of "
                   f"the validated step ({sum(1 for _ in tree.leaves(params))} parameter leaves)")
    for r in rows:
        if r.impl == BASELINE:
            r.extra["validation_s"] = check_s


def _actnorm_kernels() -> bool:
    from .suite_actnorm import kernel_backend

    return kernel_backend() is not None


def _unflatten(flat: dict) -> dict:
    out: dict = {}
    for path, v in flat.items():
        node = out
        parts = path.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v.detach().numpy()
    return out
