"""Suite ``conv1x1``: Glow's invertible 1×1 convolution, its log-det (dense against LU) and the conv.

Operations (``W: (C, C)``, ``x, gz: (N, C, H, W)``, ``glogdet: (N,)``)::

    conv1x1.logdet(W)                  -> logabsdet            log|det W|
    conv1x1.forward(x, W)              -> (z, logdet)          z = W x at every pixel, logdet = HW·log|det W|
    conv1x1.backward(x, W, gz, glogdet) -> (gx, gW)            gx = Wᵀ gz, gW = gz xᵀ + γ W⁻ᵀ, γ = HW·Σ glogdet

Implementations:

* ``numpy slogdet (DenseLinear)`` — the dense layer's O(C³) log-det (:func:`rawflow._array.logabsdet`);
  the baseline of ``conv1x1.logdet``.
* ``LU: Σ log s`` — :class:`rawflow.LULinear` keeps ``W = P·L·(U + diag(sign·e^{log s}))`` as its
  parameters, so its log-det is ``Σ log s``, O(C). The factors come from ``scipy.linalg.lu(W)``,
  untimed (they *are* the parameters). ``LU: assemble W + Σ log s`` adds what every LU forward
  pays to rebuild ``W`` from the factors (an O(C³) triangular product, BLAS-fast).
* ``numpy reference (DenseLinear)`` / ``LULinear`` — the layers' ``_forward`` / ``_backward``
  (column matrix + one GEMM); DenseLinear is the baseline of the conv rows.
* ``torch eager`` — ``F.conv2d`` with a 1×1 kernel plus ``torch.linalg.slogdet``, autograd.
Compulsory traffic of the conv: read ``x`` (and ``gz``), write ``z`` (``gx``); ``W`` is small.
"""

from __future__ import annotations

import math

import numpy as np

from . import torch_impls
from .registry import Implementation, Operation, add_operation
from .runner import Context, run_operations

NAME = "conv1x1"
DENSE = "numpy slogdet (DenseLinear)"
DENSE_CONV = "numpy reference (DenseLinear)"
LOGDET_SIZES = [12, 48, 96, 192, 512]
CONV_SIZES = [(64, 12, 32, 32), (64, 48, 16, 16), (64, 192, 8, 8)]
QUICK_LOGDET = [4]
QUICK_CONV = [(2, 4, 4, 4)]


def _weight(c, dtype, rng):
    """A well-conditioned, non-orthogonal ``W`` (random orthogonal times a random positive diagonal)."""
    from rawflow.bijectors.linear import random_orthogonal

    q = random_orthogonal(c, int(rng.integers(2**31)))
    return (q * np.exp(0.3 * rng.standard_normal(c))[None, :]).astype(dtype)


def _logdet_inputs(case, dtype, rng):
    return (_weight(case, dtype, rng),)


def _conv_inputs(case, dtype, rng):
    n, c, h, w = case
    return (rng.standard_normal(case).astype(dtype), _weight(c, dtype, rng),
            rng.standard_normal(case).astype(dtype), rng.standard_normal(n).astype(dtype))


def _cond_scale(w):
    # |Δ log|det W|| ≤ C·cond(W)·‖ΔW‖/‖W‖ to first order: judge errors against C·cond(W).
    return w.shape[0] * np.linalg.cond(w)


def _ref_logdet(inp, opts):
    (w,) = inp
    return [(np.linalg.slogdet(w)[1], _cond_scale(w))]


def _columns(a):
    from rawflow.bijectors.linear import to_columns

    return to_columns(a)


def _ref_forward(inp, opts):
    from rawflow import DenseLinear

    x, w = inp[:2]
    z, ld, _ = DenseLinear(w.shape[0], spatial=2)._forward({"weight": w}, x)
    from rawflow.bijectors.linear import from_columns

    zscale = from_columns(np.abs(w) @ np.abs(_columns(x)), x.shape)
    hw = math.prod(x.shape[2:])
    return [(z, zscale), (ld, np.full(x.shape[0], hw * _cond_scale(w)))]


def _ref_backward(inp, opts):
    from rawflow import DenseLinear
    from rawflow.bijectors.linear import from_columns

    x, w, gz, gl = inp
    layer = DenseLinear(w.shape[0], spatial=2)
    _, _, cache = layer._forward({"weight": w}, x)
    gx, gp = layer._backward({"weight": w}, cache, gz, gl)
    gamma = math.prod(x.shape[2:]) * gl.sum()
    winv_t = np.linalg.inv(w).T
    gw_scale = np.abs(_columns(gz)) @ np.abs(_columns(x)).T + abs(gamma) * np.linalg.cond(w) * np.abs(winv_t)
    return [(gx, from_columns(np.abs(w).T @ np.abs(_columns(gz)), x.shape)), (gp["weight"], gw_scale)]


def _conv_bytes(arrays):
    return lambda inp: (arrays * inp[0].size + inp[1].size + inp[0].shape[0]) * inp[0].itemsize


LOGDET = add_operation(Operation(
    "conv1x1.logdet", NAME, "fn(W) -> logabsdet", _logdet_inputs, _ref_logdet, lambda inp: inp[0].nbytes,
    items=lambda inp: None, outputs=("logabsdet",)))
FORWARD = add_operation(Operation(
    "conv1x1.forward", NAME, "fn(x, W) -> (z, logdet)", _conv_inputs, _ref_forward, _conv_bytes(2),
    outputs=("z", "logdet"), args=(0, 1)))
BACKWARD = add_operation(Operation(
    "conv1x1.backward", NAME, "fn(x, W, gz, glogdet) -> (gx, gW)", _conv_inputs, _ref_backward, _conv_bytes(3),
    outputs=("gx", "gW")))
OPERATIONS = [LOGDET, FORWARD, BACKWARD]


def lu_layer(w):
    """A :class:`~rawflow.interop.lu.FactoredLULinear` and its parameters representing ``w``."""
    import scipy.linalg

    from rawflow.interop.lu import FactoredLULinear

    p, lower, upper = scipy.linalg.lu(np.asarray(w, dtype=np.float64))
    d = np.diag(upper)
    layer = FactoredLULinear(w.shape[0], perm=np.argmax(p, axis=1), sign=np.sign(d), spatial=2)
    params = {"lower": np.tril(lower, -1).astype(w.dtype), "upper": np.triu(upper, 1).astype(w.dtype),
              "log_scale": np.log(np.abs(d)).astype(w.dtype)}
    return layer, params


def builtin(op: Operation, ctx: Context) -> list[Implementation]:
    impls = []
    threads = ctx.opts.threads
    if op is LOGDET:
        from rawflow._array import logabsdet

        impls.append(Implementation(op.name, DENSE, fn=logabsdet, kind="baseline", note="O(C³) LU with pivoting"))

        def lu_sum(w):
            _, params = lu_layer(w)
            ls = params["log_scale"]
            return lambda: ls.sum()

        def lu_assemble(w):
            layer, params = lu_layer(w)

            def run():
                layer.weight(params)
                return params["log_scale"].sum()

            return run

        impls.append(Implementation(op.name, "LU: Σ log s (LULinear)", prepare=lu_sum, note="O(C); factors are the parameters"))
        impls.append(Implementation(op.name, "LU: assemble W + Σ log s", prepare=lu_assemble,
                                    note="what each LULinear forward pays"))
        if ctx.opts.torch:
            def torch_slogdet(w):
                import torch

                torch_impls.set_threads(threads)
                return lambda: torch.linalg.slogdet(w)[1]

            impls.append(Implementation(op.name, f"torch slogdet ({threads} thr)", prepare=torch_slogdet, array="torch",
                                        kind="baseline", available=torch_impls.missing))
        return impls

    from rawflow import DenseLinear

    def dense(x, w, gz=None, gl=None):
        layer, params = DenseLinear(w.shape[0], spatial=2), {"weight": w}
        if op is FORWARD:
            return lambda: layer._forward(params, x)[:2]
        cache = layer._forward(params, x)[2]
        return lambda: (lambda g: (g[0], g[1]["weight"]))(layer._backward(params, cache, gz, gl))

    impls.append(Implementation(op.name, DENSE_CONV, prepare=dense, kind="baseline", note="slogdet + GEMM"))
    if op is FORWARD:
        def lu(x, w):
            layer, params = lu_layer(w)
            return lambda: layer._forward(params, x)[:2]

        impls.append(Implementation(op.name, "LULinear", prepare=lu, note="assemble W + GEMM + Σ log s"))
    if ctx.opts.torch:
        def torch_conv(x, w, gz=None, gl=None):
            import torch

            torch_impls.set_threads(threads)
            f = torch_impls.conv1x1_forward
            if op is FORWARD:
                def run():
                    with torch.no_grad():
                        return f(x, w)

                return run
            return torch_impls.grad_closure(f, (x, w), (0, 1), (gz, gl), retain=True)

        impls.append(Implementation(op.name, f"torch eager ({threads} thr)", prepare=torch_conv, array="torch",
                                    kind="baseline", available=torch_impls.missing, note="F.conv2d 1×1 + slogdet"))
    return impls


def run(ctx: Context):
    opts = ctx.opts
    ld_sizes = QUICK_LOGDET if opts.quick else LOGDET_SIZES
    conv_sizes = QUICK_CONV if opts.quick else CONV_SIZES
    rows = run_operations(ctx, NAME, [(f"C={c} {opts.dtype}", c) for c in ld_sizes], [LOGDET],
                          lambda op: builtin(op, ctx), DENSE)
    rows += run_operations(ctx, NAME, [("×".join(map(str, s)) + f" {opts.dtype}", s) for s in conv_sizes],
                           [FORWARD, BACKWARD], lambda op: builtin(op, ctx), DENSE_CONV)
    ctx.note(NAME, "the GEMMs and LUs run in NumPy's BLAS and PyTorch with --threads threads; "
                   "the log-det rows' error is judged against C·cond(W)")
    return rows
