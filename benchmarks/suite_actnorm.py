"""Suite ``actnorm``: Glow's ActNorm ``z = (x + bias) ⊙ exp(log_scale)`` per channel, and its VJP.

Operations (``x, gz: (N, C, H, W)``, ``bias, log_scale: (C,)``, ``glogdet: (N,)``)::

    actnorm.forward(x, bias, log_scale)               -> (z, logdet)          logdet = HW·Σ log_scale
    actnorm.backward(x, bias, log_scale, gz, glogdet) -> (gx, gbias, glog_scale)
    actnorm.fwd+bwd(x, bias, log_scale, gz, glogdet)  -> (z, logdet, gx, gbias, glog_scale)

Implementations: ``numpy reference`` (:class:`rawflow.ActNorm`'s ``_forward``/``_backward``,
what a :class:`~rawflow.Chain` calls: the public methods add input validation), fused kernels
when this checkout's ``ActNorm`` takes ``backend=`` (``rawflow numba (k thr)``), and the same maths
in PyTorch (eager, ``torch.compile``) with autograd. Compulsory traffic: forward reads ``x`` and
writes ``z`` (2 arrays), backward reads ``x`` (or ``z``) and ``gz`` and writes ``gx`` (3), both
together 4 (``x, gz`` read, ``z, gx`` written).
"""

from __future__ import annotations

import inspect
import math

import numpy as np

from . import torch_impls
from .registry import Implementation, Operation, add_operation
from .runner import Context, numba_threads, run_operations

NAME = "actnorm"
BASELINE = "numpy reference"
FULL_SIZES = [(64, 12, 32, 32), (256, 48, 16, 16), (64, 96, 32, 32)]
QUICK_SIZES = [(2, 4, 4, 4)]


def _inputs(case, dtype, rng):
    n, c, h, w = case
    x = rng.standard_normal(case).astype(dtype)
    bias = (0.3 * rng.standard_normal(c)).astype(dtype)
    log_scale = (0.3 * rng.standard_normal(c)).astype(dtype)
    gz = rng.standard_normal(case).astype(dtype)
    gl = rng.standard_normal(n).astype(dtype)
    return x, bias, log_scale, gz, gl


def _layer(c, backend=None):
    from rawflow import ActNorm

    if backend is None:
        return ActNorm(c, spatial=2)
    return ActNorm(c, spatial=2, backend=backend)


def _view(v):
    return v.reshape(1, -1, 1, 1)


def _ref_forward(inp, opts):
    x, b, ls = inp[:3]
    z, ld, _ = _layer(x.shape[1])._forward({"bias": b, "log_scale": ls}, x)
    hw = math.prod(x.shape[2:])
    e = np.exp(ls)
    return [(z, (np.abs(x) + np.abs(_view(b))) * _view(e)), (ld, np.full(x.shape[0], hw * np.abs(ls).sum()))]


def _ref_backward(inp, opts):
    x, b, ls, gz, gl = inp
    layer = _layer(x.shape[1])
    params = {"bias": b, "log_scale": ls}
    z, _, cache = layer._forward(params, x)
    gx, gp = layer._backward(params, cache, gz, gl)
    e = _view(np.exp(ls))
    axes = (0, 2, 3)
    hw = math.prod(x.shape[2:])
    return [(gx, np.abs(gz) * e), (gp["bias"], (np.abs(gz) * e).sum(axis=axes)),
            (gp["log_scale"], (np.abs(gz * z)).sum(axis=axes) + hw * np.abs(gl).sum())]


def _ref_both(inp, opts):
    return _ref_forward(inp, opts) + _ref_backward(inp, opts)


def _nbytes(arrays):
    return lambda inp: (arrays * inp[0].size + inp[0].shape[0]) * inp[0].itemsize


FORWARD = add_operation(Operation(
    "actnorm.forward", NAME, "fn(x, bias, log_scale) -> (z, logdet)", _inputs, _ref_forward, _nbytes(2),
    outputs=("z", "logdet"), args=(0, 1, 2)))
BACKWARD = add_operation(Operation(
    "actnorm.backward", NAME, "fn(x, bias, log_scale, gz, glogdet) -> (gx, gbias, glog_scale)", _inputs,
    _ref_backward, _nbytes(3), outputs=("gx", "gbias", "glog_scale")))
BOTH = add_operation(Operation(
    "actnorm.fwd+bwd", NAME, "fn(x, bias, log_scale, gz, glogdet) -> (z, logdet, gx, gbias, glog_scale)", _inputs,
    _ref_both, _nbytes(4), outputs=("z", "logdet", "gx", "gbias", "glog_scale"),
    parts=(("actnorm.forward", (0, 1, 2)), ("actnorm.backward", (0, 1, 2, 3, 4)))))
OPERATIONS = [FORWARD, BACKWARD, BOTH]


def kernel_backend() -> str | None:
    """``"numba"`` when this checkout's ActNorm takes ``backend=`` and the kernel imports, else ``None``."""
    from rawflow import ActNorm

    if "backend" not in inspect.signature(ActNorm.__init__).parameters:
        return None
    try:
        layer = _layer(2, "numba")
        x = np.zeros((2, 2, 2, 2), np.float32)
        layer._forward({"bias": np.zeros(2, np.float32), "log_scale": np.zeros(2, np.float32)}, x)
    except Exception:  # noqa: BLE001
        return None
    return "numba"


def _layer_prepare(op, backend):
    def prepare(x, b, ls, *rest):
        layer = _layer(x.shape[1], backend)
        params = {"bias": b, "log_scale": ls}
        if op is FORWARD:
            return lambda: layer._forward(params, x)[:2]
        gz, gl = rest
        if op is BACKWARD:
            cache = layer._forward(params, x)[2]

            def run():
                gx, gp = layer._backward(params, cache, gz, gl)
                return gx, gp["bias"], gp["log_scale"]

            return run

        def run():
            z, ld, cache = layer._forward(params, x)
            gx, gp = layer._backward(params, cache, gz, gl)
            return z, ld, gx, gp["bias"], gp["log_scale"]

        return run

    return prepare


def builtin(op: Operation, ctx: Context) -> list[Implementation]:
    from .suite_coupling import thread_counts

    impls = [Implementation(op.name, BASELINE, prepare=_layer_prepare(op, None), kind="baseline",
                            note="rawflow ActNorm, NumPy")]
    if kernel_backend():
        for k in thread_counts(ctx.opts.threads):
            impls.append(Implementation(op.name, f"rawflow numba ({k} thr)", prepare=_layer_prepare(op, "numba"),
                                        enter=numba_threads(k), extra={"threads": k}))
    if not ctx.opts.torch:
        return impls
    threads = ctx.opts.threads

    def prepare_with(compiled):
        state = {}

        def prepare(x, b, ls, *rest):
            import torch

            torch_impls.set_threads(threads)
            f = torch_impls.actnorm_forward
            if op is FORWARD:
                if compiled and "cf" not in state:
                    state["cf"] = torch_impls.compile_fn(ctx, f, lambda cf: cf(x, b, ls))
                g = state["cf"] if compiled else f

                def run():
                    with torch.no_grad():
                        return g(x, b, ls)

                return run
            gz, gl = rest
            if compiled and "cf" not in state:
                state["cf"] = torch_impls.compile_fn(
                    ctx, f, lambda cf: torch_impls.grad_closure(cf, (x, b, ls), (0, 1, 2), (gz, gl), retain=False)())
            g = state["cf"] if compiled else f
            return torch_impls.grad_closure(g, (x, b, ls), (0, 1, 2), (gz, gl), retain=(op is BACKWARD))

        return prepare

    impls.append(Implementation(op.name, f"torch eager ({threads} thr)", prepare=prepare_with(False), array="torch",
                                kind="baseline", available=torch_impls.missing, note="autograd for gradients"))
    if not (op.parts or ctx.opts.compile_all):
        ctx.note(NAME, "torch.compile is timed on the fwd+bwd rows only (--compile-all for every operation)")
        return impls
    impls.append(Implementation(op.name, f"torch.compile ({threads} thr)", prepare=prepare_with(True), array="torch",
                                kind="baseline", available=lambda: torch_impls.missing() or ctx.compile_allowed(op)))
    return impls


def run(ctx: Context):
    opts = ctx.opts
    sizes = QUICK_SIZES if opts.quick else FULL_SIZES
    cases = [("×".join(map(str, s)) + f" {opts.dtype}", s) for s in sizes]
    rows = run_operations(ctx, NAME, cases, OPERATIONS, lambda op: builtin(op, ctx), BASELINE)
    if kernel_backend() is None:
        ctx.note(NAME, "no fused ActNorm kernel in this checkout (rawflow.ActNorm takes no backend=): "
                       "the NumPy reference against PyTorch only")
    return rows
