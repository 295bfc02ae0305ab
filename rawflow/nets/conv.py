"""2-D convolution (stride 1, "same" zero padding, odd square kernels) by GEMMs over shifted windows.

Layout NCHW at the public functions, PyTorch's conventions: ``x: (N, C_in, H, W)``,
``w: (C_out, C_in, k, k)``, ``b: (C_out,)``, and — like ``torch.nn.functional.conv2d`` — a
*cross-correlation*::

    y[n, o, h, v] = b[o] + Σ_{c, i, j} w[o, c, i, j] · x̃[n, c, h + i, v + j]

where ``x̃`` is ``x`` zero-padded by ``p = k // 2`` on each side of H and W, so ``y: (N, C_out, H, W)``.

**Channel-major form.** The work is done on *channel-major* arrays ``(C, N, H, W)``, whose
``(C, N·H·W)`` matrix view is what a GEMM reads and writes: :func:`conv_cm` / :func:`conv_cm_backward`
take and return that layout (the CNNs of :mod:`rawflow.nets.cnn` stay in it between layers, so a
1×1 convolution is one GEMM with no copy at all). Tap ``t = (i, j)`` reads ``x`` shifted by
``d_t = (i − p, j − p)``; ``S_t`` below is that shift with zero fill, ``W_t = w[:, :, i, j]: (C_out, C_in)``::

    Y = Σ_t W_t · S_t(X) + b                      X: (C_in, M), Y: (C_out, M), M = N·H·W

Every k² shifted copy is made of whichever side has **fewer channels** (copies cost memory
traffic; the GEMM's flops are the same either way):

* input side (``C_in ≤ C_out``), im2col: ``Y = w.reshape(C_out, C_in·k²) · cols(X)``, one GEMM with
  ``K = C_in·k²``, where row ``c·k² + t`` of ``cols(X)`` is channel ``c`` of ``S_t(X)``;
* output side (``C_in > C_out``): ``Z = [W_0; …; W_{k²−1}] · X`` (one GEMM, ``k²·C_out`` rows), then
  ``Y = Σ_t S_t(Z_t)``, added in tap order onto zeros.

The VJP, for a cotangent ``G: (C_out, M)``, with ``S_t`` 's adjoint ``S_tᵀ = S_{−t}`` (shift back,
zero fill)::

    gb  = Σ_m G[:, m]
    gW_t = G · S_t(X)ᵀ = S_{−t}(G) · Xᵀ
    gX  = Σ_t S_{−t}(W_tᵀ G) = [W_0ᵀ … W_{k²−1}ᵀ] · [S_{−0}(G); …; S_{−(k²−1)}(G)]

again copying the smaller side: with ``C_in ≤ C_out`` the first form of ``gW`` (im2col of ``X``
rebuilt, a copy, no arithmetic) and col2im for ``gX`` (one GEMM to ``(k², C_in, M)``, then the
shifted sum); with ``C_in > C_out`` the shifted copies of ``G`` serve both GEMMs. Only ``x`` and
``w`` are cached.

A shifted copy is made one of two ways, with identical results: for large arrays, each tap is one
contiguous slab per channel along the flattened ``N·H·W`` axis (a shift by ``d = di·W + dj``
there wraps across rows and images exactly at the positions that must be zero, which are zeroed);
for small NumPy arrays (the digits demo's 4×4 images), where NumPy's per-call overhead dominates,
one gather through a cached index map, with a zero column for the outside positions. Any
evaluation order of these sums is within Higham's ``γ_K·Σ|terms|`` (``K = C_in·k² + 1``) of the
exact value, which the tests hold it to; ``.T`` is a plain transpose,
never a conjugate, so every map is analytic in ``x``, ``w`` and ``b`` (complex-step oracles apply).
The code takes its namespace from the inputs and runs unchanged on NumPy and CuPy arrays.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

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


def _shifts(k: int):
    """``(t, di, dj)`` for every tap ``t = i·k + j`` of a k×k kernel."""
    p = k // 2
    return [(i * k + j, i - p, j - p) for i in range(k) for j in range(k)]


def _outside(a4: Array, di: int, dj: int) -> None:
    """Zero the positions ``(h, v)`` of ``a4: (C, N, H, W)`` whose shifted partner
    ``(h + di, v + dj)`` lies outside the image."""
    h, v = a4.shape[2:]
    if di > 0:
        a4[:, :, max(h - di, 0) :] = 0
    elif di < 0:
        a4[:, :, : min(-di, h)] = 0
    if dj > 0:
        a4[:, :, :, max(v - dj, 0) :] = 0
    elif dj < 0:
        a4[:, :, :, : min(-dj, v)] = 0


def _slab(d: int, m: int) -> tuple[slice, slice]:
    """``out[q] = in[q + d]`` for every flat position where both exist: ``(out range, in range)``."""
    lo, hi = max(0, -d), min(m, m - d)
    hi = max(lo, hi)
    return slice(lo, hi), slice(lo + d, hi + d)


#: below this many gathered elements a NumPy shift is one gather: measured break-even of the
#: slabs' per-tap overhead (≈ 45 NumPy calls, ~90 µs) against the gather's ≈ 1.3 ns per element
GATHER_BELOW = 1 << 16


@lru_cache(maxsize=128)
def _tap_index(n: int, h: int, v: int, k: int, flip: bool) -> np.ndarray:
    """``(k², 1, M)`` flat source index of ``S_t`` (``S_{−t}`` if ``flip``) at each position,
    ``M`` (a zero column) where the source is outside the image. Read-only, cached."""
    hh, vv = np.meshgrid(np.arange(h), np.arange(v), indexing="ij")
    base = np.arange(n * h * v).reshape(n, h, v)
    out = np.empty((k * k, n, h, v), dtype=np.intp)
    for t, di, dj in _shifts(k):
        if flip:
            di, dj = -di, -dj
        valid = (0 <= hh + di) & (hh + di < h) & (0 <= vv + dj) & (vv + dj < v)
        out[t] = np.where(valid, base + di * v + dj, n * h * v)
    out = out.reshape(k * k, 1, n * h * v)
    out.flags.writeable = False
    return out


@lru_cache(maxsize=32)  # each entry < GATHER_BELOW indices (≤ 512 KiB): ≤ 16 MiB in all
def _sum_index(n: int, h: int, v: int, k: int, flip: bool, c: int) -> np.ndarray:
    """``(k², C, M)`` index into the flattened ``(k², C, M + 1)`` taps-with-zero-column array:
    one flat ``take`` instead of ``take_along_axis`` (which broadcasts the ``(k², 1, M)`` tap
    index over ``C`` in a slow inner loop; measured 3–7× slower, the same elements)."""
    m = n * h * v
    rows = (np.arange(k * k)[:, None] * c + np.arange(c)[None, :]) * (m + 1)  # (k², C)
    out = _tap_index(n, h, v, k, flip) + rows[:, :, None]
    out.flags.writeable = False
    return out


def _gathers(a: Array, size: int) -> bool:
    return isinstance(a, np.ndarray) and size < GATHER_BELOW


def _with_zero_column(am: Array) -> Array:
    """``(..., M) → (..., M + 1)``, the last column zero."""
    xp = namespace(am)
    out = xp.empty(am.shape[:-1] + (am.shape[-1] + 1,), dtype=am.dtype)
    out[..., :-1] = am
    out[..., -1] = 0
    return out


def shifted_copies(a: Array, k: int, flip: bool = False) -> Array:
    """im2col in channel-major form: ``(C, N, H, W) → (C·k², N·H·W)``; row ``c·k² + t`` is channel
    ``c`` of ``S_t(a)`` (``a`` shifted by tap ``t``'s offset, zero fill), or of ``S_{−t}(a)`` if ``flip``."""
    xp = namespace(a)
    c, n, h, v = a.shape
    m = n * h * v
    am = _matrix(a)
    if _gathers(a, c * k * k * m):
        return _with_zero_column(am)[:, _tap_index(n, h, v, k, flip)[:, 0]].reshape(c * k * k, m)
    cols = xp.empty((c, k * k, m), dtype=a.dtype)
    for t, di, dj in _shifts(k):
        if flip:
            di, dj = -di, -dj
        out, src = _slab(di * v + dj, m)
        dst = cols[:, t]
        dst[:, out] = am[:, src]
        dst[:, : out.start] = 0
        dst[:, out.stop :] = 0
        _outside(dst.reshape(c, n, h, v), di, dj)
    return cols.reshape(c * k * k, m)


def shifted_sum(z: Array, k: int, flip: bool = False) -> Array:
    """col2im in channel-major form: ``(k², C, N, H, W) → (C, N, H, W)``, ``Σ_t S_t(z_t)``
    (``S_{−t}`` if ``flip``), added in tap order onto zeros. May overwrite ``z`` (a GEMM's output the
    caller owns): entries that a flat shift would carry across a row or image border are zeroed
    first, so each tap is one slab addition."""
    xp = namespace(z)
    c, n, h, v = z.shape[1:]
    m = n * h * v
    zm = z.reshape(k * k, c, m)
    out = xp.zeros((c, m), dtype=z.dtype)
    if _gathers(z, z.size):
        taps = _with_zero_column(zm).reshape(-1).take(_sum_index(n, h, v, k, flip, c))  # (k², C, M)
        return np.add.reduce(taps, axis=0, out=out, initial=0).reshape(c, n, h, v)  # onto 0, tap by tap
    for t, di, dj in _shifts(k):
        if flip:
            di, dj = -di, -dj
        # source r = q + d feeds output q; r is invalid exactly where (h_r − di, v_r − dj) is outside
        _outside(z[t], -di, -dj)
        dst, src = _slab(di * v + dj, m)
        out[:, dst] += zm[t][:, src]
    return out.reshape(c, n, h, v)


def _matrix(a: Array) -> Array:
    """``(C, N, H, W) → (C, N·H·W)`` (explicit sizes: a -1 cannot be inferred from an empty batch)."""
    return a.reshape(a.shape[0], a.shape[1] * a.shape[2] * a.shape[3])


def _stacked_weight(w: Array) -> Array:
    """``(C_out, C_in, k, k) → (k²·C_out, C_in)``, row ``t·C_out + o`` = ``w[o, :, i, j]``."""
    return w.transpose(2, 3, 0, 1).reshape(-1, w.shape[1])


def _input_side(w: Array) -> bool:
    return w.shape[1] <= w.shape[0]


def conv_cm(x: Array, w: Array, b: Array | None = None):
    """``(y, cache)``: the convolution in channel-major form, ``x: (C_in, N, H, W)`` (any strides)
    → ``y: (C_out, N, H, W)``, a fresh C-ordered array the caller may overwrite."""
    c_out, c_in, k, _ = w.shape
    _, n, h, v = x.shape
    if k == 1:
        y = w.reshape(c_out, c_in) @ _matrix(x)
    elif _input_side(w):
        y = w.reshape(c_out, c_in * k * k) @ shifted_copies(x, k)
    else:
        z = _stacked_weight(w) @ _matrix(x)  # (k²·C_out, M)
        y = shifted_sum(z.reshape(k * k, c_out, n, h, v), k)
    y = y.reshape(c_out, n, h, v)
    if b is not None:
        bb = b.reshape(c_out, 1, 1, 1)
        if y.dtype == bb.dtype:
            y += bb
        else:
            y = y + bb
    return y, (x, w, b is not None)


def conv_cm_backward(cache, g: Array):
    """VJP of :func:`conv_cm`: ``(gx, gw, gb)`` for the cotangent ``g: (C_out, N, H, W)``;
    ``gx`` is channel-major and fresh."""
    x, w, has_bias = cache
    c_out, c_in, k, _ = w.shape
    _, n, h, v = x.shape
    if tuple(g.shape) != (c_out, n, h, v):
        raise ValueError(f"conv2d: cotangent must have shape {(c_out, n, h, v)} (channel-major), got {tuple(g.shape)}")
    gm = _matrix(g)
    gb = gm.sum(axis=1) if has_bias else None
    if k == 1:
        gw = (gm @ _matrix(x).T).reshape(c_out, c_in, 1, 1)
        gx = w.reshape(c_out, c_in).T @ gm
    elif _input_side(w):
        gw = (gm @ shifted_copies(x, k).T).reshape(c_out, c_in, k, k)
        gz = w.transpose(2, 3, 1, 0).reshape(k * k * c_in, c_out) @ gm  # row t·C_in + c: W_tᵀ G
        gx = shifted_sum(gz.reshape(k * k, c_in, n, h, v), k, flip=True)
    else:
        gcols = shifted_copies(g, k, flip=True)  # (C_out·k², M)
        gw = (gcols @ _matrix(x).T).reshape(c_out, k, k, c_in).transpose(0, 3, 1, 2)
        gx = w.transpose(1, 0, 2, 3).reshape(c_in, c_out * k * k) @ gcols
    return gx.reshape(c_in, n, h, v), namespace(gw).ascontiguousarray(gw), gb


def conv2d(x: Array, w: Array, b: Array | None = None):
    """``(y, cache)``: the "same" cross-correlation of ``x: (N, C_in, H, W)`` with ``w``, plus ``b``.

    ``b=None`` means no bias (then :func:`conv2d_backward` returns ``gb=None``).
    """
    _check(x, w, b)
    y, cache = conv_cm(x.transpose(1, 0, 2, 3), w, b)
    return namespace(y).ascontiguousarray(y.transpose(1, 0, 2, 3)), cache


def conv2d_backward(cache, gy: Array):
    """VJP of :func:`conv2d`: ``(gx, gw, gb)`` for the cotangent ``gy: (N, C_out, H, W)``."""
    x, w = cache[0], cache[1]
    want = (x.shape[1], w.shape[0]) + tuple(x.shape[2:])
    if tuple(gy.shape) != want:
        raise ValueError(f"conv2d: cotangent must have shape {want}, got {tuple(gy.shape)}")
    gx, gw, gb = conv_cm_backward(cache, namespace(gy).ascontiguousarray(gy.transpose(1, 0, 2, 3)))
    return namespace(gx).ascontiguousarray(gx.transpose(1, 0, 2, 3)), gw, gb
