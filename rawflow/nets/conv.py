"""2-D convolution (stride 1, "same" zero padding, odd square kernels) by im2col + one GEMM.

Layout NCHW, PyTorch's conventions: ``x: (N, C_in, H, W)``, ``w: (C_out, C_in, k, k)``,
``b: (C_out,)``, and — like ``torch.nn.functional.conv2d`` — a *cross-correlation*::

    y[n, o, h, v] = b[o] + Σ_{c, i, j} w[o, c, i, j] · x̃[n, c, h + i, v + j]

where ``x̃`` is ``x`` zero-padded by ``p = k // 2`` on each side of H and W, so ``y: (N, C_out, H, W)``.

im2col stacks the ``k²`` shifted windows of ``x̃`` into ``X: (k²·C_in, N·H·W)`` (row ``(i·k + j)·C_in + c``),
reorders ``w`` to ``W: (C_out, k²·C_in)`` to match, and the convolution is the single GEMM ``Y = W X + b``.
The VJP, for a cotangent ``gy`` reshaped to ``G: (C_out, N·H·W)``::

    gb = Σ_{n,h,v} gy               (row sums of G)
    gW = G Xᵀ                       (then reordered back to (C_out, C_in, k, k))
    gX = Wᵀ G,    gx = col2im(gX)   (each window's rows added back at its shift, padding cropped)

Only ``x`` and ``w`` are cached; ``X`` is rebuilt in the backward pass (a copy, no arithmetic), so the
cache costs the input's memory rather than ``k²`` times it. ``.T`` is a plain transpose, never a
conjugate, so every map here is analytic in ``x``, ``w`` and ``b``: complex-step oracles apply.
The code takes its namespace from the inputs and runs unchanged on NumPy and CuPy arrays.
"""

from __future__ import annotations

from .._array import Array, namespace


def _check(x: Array, w: Array, b: Array | None) -> int:
    for name, a, nd in (("x", x, 4), ("w", w, 4)):
        if not hasattr(a, "ndim") or a.ndim != nd:
            raise ValueError(f"conv2d: {name} must be a 4-D array, got shape {getattr(a, 'shape', a)}")
    c_out, c_in, k, k2 = w.shape
    if k != k2 or k % 2 == 0:
        raise ValueError(f"conv2d: the kernel must be square with an odd size, got {k}×{k2}")
    if x.shape[1] != c_in:
        raise ValueError(f"conv2d: x has {x.shape[1]} channels, w expects {c_in} (w shape {tuple(w.shape)})")
    if b is not None and tuple(b.shape) != (c_out,):
        raise ValueError(f"conv2d: b must have shape ({c_out},), got {tuple(b.shape)}")
    return k


def _im2col(x: Array, k: int) -> Array:
    """``(N, C, H, W) → (k²·C, N·H·W)``, row ``(i·k + j)·C + c`` is channel c shifted by (i, j)."""
    xp = namespace(x)
    n, c, h, v = x.shape
    p = k // 2
    xt = x.transpose(1, 0, 2, 3)  # (C, N, H, W): each window slice reshapes to rows of X
    if p:
        # Zero border by assignment rather than xp.pad, whose helpers leave reference-cycle garbage
        # that piles up between collections and shows as activation memory growing with depth.
        padded = xp.zeros((c, n, h + 2 * p, v + 2 * p), dtype=x.dtype)
        padded[:, :, p : p + h, p : p + v] = xt
        xt = padded
    cols = xp.empty((k * k, c, n, h, v), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            cols[i * k + j] = xt[:, :, i : i + h, j : j + v]
    return cols.reshape(k * k * c, n * h * v)


def _flat_weight(w: Array) -> Array:
    """``(C_out, C_in, k, k) → (C_out, k²·C_in)`` with column ``(i·k + j)·C_in + c``."""
    c_out = w.shape[0]
    return w.transpose(0, 2, 3, 1).reshape(c_out, -1)


def conv2d(x: Array, w: Array, b: Array | None = None):
    """``(y, cache)``: the "same" cross-correlation of ``x: (N, C_in, H, W)`` with ``w``, plus ``b``.

    ``b=None`` means no bias (then :func:`conv2d_backward` returns ``gb=None``).
    """
    k = _check(x, w, b)
    xp = namespace(x, w)
    n, _, h, v = x.shape
    c_out = w.shape[0]
    y = (_flat_weight(w) @ _im2col(x, k)).reshape(c_out, n, h, v)  # (C_out, N, H, W)
    if b is not None:
        y = y + b.reshape(c_out, 1, 1, 1)
    return xp.ascontiguousarray(y.transpose(1, 0, 2, 3)), (x, w, b is not None)


def conv2d_backward(cache, gy: Array):
    """VJP of :func:`conv2d`: ``(gx, gw, gb)`` for the cotangent ``gy: (N, C_out, H, W)``."""
    x, w, has_bias = cache
    xp = namespace(x, w, gy)
    n, c_in, h, v = x.shape
    c_out, _, k, _ = w.shape
    if tuple(gy.shape) != (n, c_out, h, v):
        raise ValueError(f"conv2d: cotangent must have shape {(n, c_out, h, v)}, got {tuple(gy.shape)}")
    g = gy.transpose(1, 0, 2, 3).reshape(c_out, n * h * v)  # (C_out, N·H·W)
    gb = g.sum(axis=1) if has_bias else None
    gw = (g @ _im2col(x, k).T).reshape(c_out, k, k, c_in).transpose(0, 3, 1, 2)
    gcols = (_flat_weight(w).T @ g).reshape(k * k, c_in, n, h, v)
    p = k // 2
    gxt = xp.zeros((c_in, n, h + 2 * p, v + 2 * p), dtype=gcols.dtype)
    for i in range(k):
        for j in range(k):
            gxt[:, :, i : i + h, j : j + v] += gcols[i * k + j]
    gx = gxt[:, :, p : p + h, p : p + v].transpose(1, 0, 2, 3)
    return xp.ascontiguousarray(gx), xp.ascontiguousarray(gw), gb
