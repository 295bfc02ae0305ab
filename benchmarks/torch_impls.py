"""PyTorch baselines: what a user would write instead of rawflow, eager and under ``torch.compile``.

Nothing here imports torch at module import; every function does it on call, so the benchmarks
run (and list these rows as skipped) where torch is not installed. Gradients are PyTorch's
autograd: a backward-only timing builds the forward graph once, untimed, and re-runs
``torch.autograd.grad(..., retain_graph=True)`` on it.
"""

from __future__ import annotations

import importlib.util
import math
import time

from .runner import Skip


def missing() -> str | None:
    """Why the torch rows cannot run here, or ``None``."""
    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed"
    return None


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(int(n))


def compile_fn(ctx, fn, warm):
    """``torch.compile(fn)``, compiled now by calling ``warm(compiled)``; counts against the run's
    compile budget. Failures and an exhausted budget raise :class:`~benchmarks.runner.Skip`."""
    reason = ctx.compile_allowed()
    if reason:
        raise Skip(reason)
    import torch
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    t0 = time.perf_counter()
    try:
        cf = torch.compile(fn, dynamic=False)
        warm(cf)
    except Exception as e:  # noqa: BLE001  (inductor needs a C++ compiler etc.: report, do not fail)
        raise Skip(f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
    finally:
        ctx.compile_spent += time.perf_counter() - t0
    return cf


# ------------------------------------------------------------------------------------ coupling
def coupling_parts(h, scale: str):
    """``(log s, s, t)`` from ``h = [h_s | t]`` for the scale maps of :mod:`rawflow.bijectors.scales`."""
    import torch
    import torch.nn.functional as F

    m = h.shape[1] // 2
    hs, t = h[:, :m], h[:, m:]
    if scale == "exp":
        return hs, torch.exp(hs), t
    if scale == "sigmoid":
        u = hs + 2.0
        return F.logsigmoid(u), torch.sigmoid(u), t
    if scale == "bounded":
        log_s = 2.0 * torch.tanh(hs / 2.0)
        return log_s, torch.exp(log_s), t
    raise Skip(f"no torch baseline for scale map {scale!r}")


def _row_sum(a):
    return a.sum(dim=tuple(range(1, a.ndim)))


def coupling_forward(x, h, scale):
    log_s, s, t = coupling_parts(h, scale)
    return x * s + t, _row_sum(log_s)


def coupling_inverse(y, h, scale):
    log_s, s, t = coupling_parts(h, scale)
    return (y - t) / s, -_row_sum(log_s)


def grad_closure(forward, args, grad_in, cotangents, retain: bool):
    """A zero-argument callable returning autograd's gradients of ``forward(*args)`` with respect
    to ``args[i] for i in grad_in``. ``retain``: build the graph once (backward-only timing);
    otherwise every call runs forward + backward."""
    import torch

    leaves = list(args)
    for i in grad_in:
        leaves[i] = args[i].detach().requires_grad_()
    wrt = tuple(leaves[i] for i in grad_in)
    if retain:
        outs = forward(*leaves)

        def run():
            return torch.autograd.grad(outs, wrt, cotangents, retain_graph=True)

        return run

    def run():
        outs = forward(*leaves)
        return tuple(o.detach() for o in outs) + tuple(torch.autograd.grad(outs, wrt, cotangents))

    return run


# ------------------------------------------------------------------------------------ ActNorm
def actnorm_forward(x, bias, log_scale):
    import torch

    view = (1, -1) + (1,) * (x.ndim - 2)
    z = (x + bias.view(view)) * torch.exp(log_scale).view(view)
    hw = math.prod(x.shape[2:])
    return z, (hw * log_scale.sum()).expand(x.shape[0])


# ------------------------------------------------------------------------------------ 1×1 conv
def conv1x1_forward(x, w):
    import torch
    import torch.nn.functional as F

    z = F.conv2d(x, w[:, :, None, None])
    hw = math.prod(x.shape[2:])
    return z, (hw * torch.linalg.slogdet(w)[1]).expand(x.shape[0])
