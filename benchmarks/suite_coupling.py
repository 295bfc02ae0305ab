"""Suite ``coupling``: the elementwise part of an affine coupling, forward / inverse / backward.

Operations (``x: (N, M)``, ``h = [h_s | t]: (N, 2M)``, ``gy: (N, M)``, ``glogdet: (N,)``, ``scale``
one of ``"exp" | "sigmoid" | "bounded"``; see :mod:`rawflow.bijectors.coupling` for the maths)::

    coupling.forward(x, h, scale)               -> (y, logdet)       y = x·s + t, logdet = Σ log s
    coupling.inverse(y, h, scale)               -> (x, logdet_inv)   x = (y − t)/s
    coupling.backward(x, h, gy, glogdet, scale) -> (gx, gh)          VJP of forward at x; gh = [gh_s | gt]
    coupling.fwd+bwd(x, h, gy, glogdet, scale)  -> (y, logdet, gx, gh)   a training step's share

Implementations: ``numpy reference`` (:class:`rawflow.AffineTransform`, the oracle and the
baseline of the ratios; NumPy ufuncs run on one thread), ``rawflow numba (k thr)``
(``AffineTransform(backend="numba")``: the fused kernels of :mod:`rawflow.kernels`, ``k`` Numba
threads), ``torch eager`` and ``torch.compile`` (the same maths written in PyTorch, autograd for
the gradients, ``--threads`` intra-op threads; ``torch.compile`` only for ``fwd+bwd`` unless
``--compile-all``: each compilation takes tens of seconds on this CPU). Compulsory traffic, in
arrays of N·M: forward/inverse read ``x, h_s, t`` and write ``y`` (4); the backward reads ``x, h_s,
gy`` (it does not need ``t``) and writes ``gx, gh_s`` and ``gt`` (= ``gy``, but the API returns it
inside ``gh``): 6; forward + backward 8 — every array either pass touches, once (``x, h_s, t, gy``
read, ``y, gx, gh_s, gt`` written): what a single fused pass would move; two separate passes read
``x`` and ``h_s`` twice, and the second read may partly hit cache. Per-row log-dets add a vector each.
"""

from __future__ import annotations

import numpy as np

from . import torch_impls
from .registry import Implementation, Operation, add_operation
from .runner import Context, Skip, numba_threads, run_operations

NAME = "coupling"
BASELINE = "numpy reference"
FULL_SIZES = [(64, 3072), (256, 12288), (1024, 12288)]
QUICK_SIZES = [(4, 8)]
TARGET_SIZE = (256, 12288)


# ------------------------------------------------------------------------------------ operations
def _inputs(case, dtype, rng):
    n, m = case
    x = rng.standard_normal((n, m)).astype(dtype)
    h = (0.5 * rng.standard_normal((n, 2 * m))).astype(dtype)
    gy = rng.standard_normal((n, m)).astype(dtype)
    gl = rng.standard_normal(n).astype(dtype)
    return x, h, gy, gl


def _parts64(h, scale):
    from rawflow.bijectors.scales import scale_map

    m = h.shape[1] // 2
    log_s, dlog_s = scale_map(scale)(h[:, :m])
    return log_s, dlog_s, np.exp(log_s), h[:, m:]


def _ref_forward(inp, opts):
    from rawflow import AffineTransform

    x, h = inp[:2]
    y, ld, _ = AffineTransform(opts.scale).forward(x, h)
    log_s, _, s, t = _parts64(h, opts.scale)
    return [(y, np.abs(x * s) + np.abs(t)), (ld, np.abs(log_s).sum(axis=1))]


def _ref_inverse(inp, opts):
    from rawflow import AffineTransform

    y, h = inp[:2]
    x, ld, _ = AffineTransform(opts.scale).inverse(y, h)
    log_s, _, s, t = _parts64(h, opts.scale)
    return [(x, (np.abs(y) + np.abs(t)) / s), (ld, np.abs(log_s).sum(axis=1))]


def _ref_backward(inp, opts):
    from rawflow import AffineTransform

    x, h, gy, gl = inp
    tr = AffineTransform(opts.scale)
    _, _, cache = tr.forward(x, h)
    gx, gh = tr.backward(cache, gy, gl)
    _, dlog_s, s, _ = _parts64(h, opts.scale)
    gh_scale = np.concatenate([(np.abs(gy * s * x) + np.abs(gl)[:, None]) * np.abs(dlog_s), np.abs(gy)], axis=1)
    return [(gx, np.abs(gy * s)), (gh, gh_scale)]


def _ref_both(inp, opts):
    return _ref_forward(inp, opts) + _ref_backward(inp, opts)


def _nbytes(arrays_of_nm):
    def f(inp):
        x = inp[0]
        return (arrays_of_nm * x.size + (2 if arrays_of_nm == 8 else 1) * x.shape[0]) * x.itemsize

    return f


def _static(opts):
    return (opts.scale,)


FORWARD = add_operation(Operation(
    "coupling.forward", NAME, "fn(x, h, scale) -> (y, logdet)", _inputs, _ref_forward, _nbytes(4),
    static=_static, outputs=("y", "logdet"), args=(0, 1)))
INVERSE = add_operation(Operation(
    "coupling.inverse", NAME, "fn(y, h, scale) -> (x, logdet_inv)", _inputs, _ref_inverse, _nbytes(4),
    static=_static, outputs=("x", "logdet_inv"), args=(0, 1)))
BACKWARD = add_operation(Operation(
    "coupling.backward", NAME, "fn(x, h, gy, glogdet, scale) -> (gx, gh)", _inputs, _ref_backward, _nbytes(6),
    static=_static, outputs=("gx", "gh")))
BOTH = add_operation(Operation(
    "coupling.fwd+bwd", NAME, "fn(x, h, gy, glogdet, scale) -> (y, logdet, gx, gh)", _inputs, _ref_both,
    _nbytes(8), static=_static, outputs=("y", "logdet", "gx", "gh"),
    parts=(("coupling.forward", (0, 1)), ("coupling.backward", (0, 1, 2, 3)))))
OPERATIONS = [FORWARD, INVERSE, BACKWARD, BOTH]


# ------------------------------------------------------------------------------------ rawflow
def _numba_missing():
    try:
        from rawflow.kernels import cpu_coupling  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"rawflow.kernels unavailable: {type(e).__name__}: {e}"
    return None


def _transform_prepare(op: Operation, backend: str):
    def prepare(*args):
        from rawflow import AffineTransform

        x, h = args[0], args[1]
        tr = AffineTransform(args[-1], backend=backend)
        if op is FORWARD:
            return lambda: tr.forward(x, h)[:2]
        if op is INVERSE:
            return lambda: tr.inverse(x, h)[:2]
        gy, gl = args[2], args[3]
        if op is BACKWARD:
            cache = tr.forward(x, h)[2]
            return lambda: tr.backward(cache, gy, gl)

        def run():
            y, ld, cache = tr.forward(x, h)
            return (y, ld) + tuple(tr.backward(cache, gy, gl))

        return run

    return prepare


def thread_counts(threads: int) -> list[int]:
    return sorted({1, max(1, int(threads))})


def rawflow_impls(op: Operation, ctx: Context) -> list[Implementation]:
    impls = [Implementation(op.name, BASELINE, prepare=_transform_prepare(op, "reference"), kind="baseline",
                            note="rawflow AffineTransform, NumPy")]
    for k in thread_counts(ctx.opts.threads):
        impls.append(Implementation(op.name, f"rawflow numba ({k} thr)", prepare=_transform_prepare(op, "numba"),
                                    available=_numba_missing, kind="rawflow", enter=numba_threads(k),
                                    extra={"threads": k}))
    return impls


# ------------------------------------------------------------------------------------ torch
def torch_impls_for(op: Operation, ctx: Context) -> list[Implementation]:
    if not ctx.opts.torch:
        return []
    threads = ctx.opts.threads

    def prepare_with(compiled: bool):
        state = {}  # one compiled function per (op, case), shared by the input sets

        def prepare(*args):
            import torch

            torch_impls.set_threads(threads)
            scale = args[-1]
            arrays = args[:-1]
            fwd = torch_impls.coupling_inverse if op is INVERSE else torch_impls.coupling_forward

            def f(*a):
                return fwd(*a, scale)

            if op in (FORWARD, INVERSE):
                if compiled:
                    if "cf" not in state:
                        state["cf"] = torch_impls.compile_fn(ctx, f, lambda cf: cf(*arrays[:2]))
                    f = state["cf"]

                def run():
                    with torch.no_grad():
                        return f(*arrays[:2])

                return run
            x, h, gy, gl = arrays
            if compiled and "cf" not in state:
                def warm(cf):
                    torch_impls.grad_closure(cf, (x, h), (0, 1), (gy, gl), retain=False)()

                state["cf"] = torch_impls.compile_fn(ctx, f, warm)
            g = state["cf"] if compiled else f
            return torch_impls.grad_closure(g, (x, h), (0, 1), (gy, gl), retain=(op is BACKWARD))

        return prepare

    impls = [Implementation(op.name, f"torch eager ({threads} thr)", prepare=prepare_with(False), array="torch",
                            kind="baseline", available=torch_impls.missing, note="autograd for gradients")]
    if not (op.parts or ctx.opts.compile_all):
        ctx.note(NAME, "torch.compile is timed on the fwd+bwd rows only (--compile-all for every operation)")
        return impls
    impls.append(Implementation(op.name, f"torch.compile ({threads} thr)", prepare=prepare_with(True), array="torch",
                                kind="baseline", available=lambda: torch_impls.missing() or ctx.compile_allowed(op)))
    return impls


# ------------------------------------------------------------------------------------ suite
def run(ctx: Context):
    opts = ctx.opts
    sizes = opts.sizes or (QUICK_SIZES if opts.quick else FULL_SIZES)
    if opts.scale not in ("exp", "sigmoid", "bounded"):
        raise Skip(f"unknown scale map {opts.scale!r}")
    cases = [(f"{n}×{m} {opts.dtype} {opts.scale}", (n, m)) for n, m in sizes]
    rows = run_operations(ctx, NAME, cases, OPERATIONS,
                          lambda op: rawflow_impls(op, ctx) + torch_impls_for(op, ctx), BASELINE)
    ctx.note(NAME, "ratios: numpy reference median / row median (>1 = faster); %copy: compulsory bytes / median "
                   "against the same run's copy bandwidth")
    return rows


def targets(rows, opts) -> list[dict]:
    """Issue 5's CPU targets, read off the coupling rows (256 × 12288 float32, 2 threads, fwd+bwd)."""
    n, m = TARGET_SIZE
    label = f"{n}×{m} float32 {opts.scale}"
    by = {r.impl: r for r in rows if r.case == label and r.op == BOTH.name and r.status == "ok"}
    kern = by.get("rawflow numba (2 thr)")
    if kern is None:
        return []
    out = []
    ref = by.get(BASELINE)
    eager = next((r for k, r in by.items() if k.startswith("torch eager")), None)
    if ref is not None:
        out.append({"target": "≥ 3× the NumPy reference", "measured": ref.median_s / kern.median_s,
                    "from_min": ref.min_s / kern.min_s, "unit": "×", "goal": 3.0})
    if eager is not None:
        out.append({"target": f"≥ 2× PyTorch eager ({eager.impl})", "measured": eager.median_s / kern.median_s,
                    "from_min": eager.min_s / kern.min_s, "unit": "×", "goal": 2.0})
    if kern.pct_copy is not None:
        out.append({"target": "≥ 60 % of copy bandwidth", "measured": kern.pct_copy,
                    "from_min": 100 * kern.bytes / kern.min_s / 1e9 / kern.copy_gbps, "unit": "%", "goal": 60.0})
    for t in out:
        t["met"] = bool(t["measured"] >= t["goal"])
    return out
