"""numba-cuda kernels for ActNorm (GPU twin of :mod:`.cpu_actnorm`).

Same maths, argument convention, precision scheme and results contract as
:mod:`rawflow.kernels.cpu_actnorm` (see its docstring): every element computed in float64 and
rounded once, ``e = exp(float64 log_scale)`` (libdevice ``exp``, ≤ 1 ulp), the VJPs read ``z``
(``backward``) or ``x`` (``inverse_backward``), log-dets ``±`` one rounded value. Inputs: anything
with ``__cuda_array_interface__`` (CuPy, PyTorch, numba device arrays) or a numba device array
(also the simulator's), C-contiguous; outputs are CuPy arrays for CuPy inputs (zero-copy), numba
device arrays otherwise. Launches go to numba's default stream (CuPy's default is the same legacy
stream; work on other CuPy streams must be synchronised by the caller).

Layout: the data as rows ``(N, J = C·P)``; a 2-D grid, ``blockIdx.x`` over column blocks of
``threads`` columns, ``blockIdx.y`` over row blocks of ``rows_per_block`` rows. Thread ↔ one
column ``j`` (channel ``j // P``: ``e`` and ``b`` are computed once per thread, no per-element
division or ``exp``), looping over its block's rows: consecutive threads touch consecutive
addresses in every case (vectors and images).

VJP reductions: each thread keeps TwoSum-compensated float64 sums of ``g`` and ``g·v`` over its
rows and writes the (sum, compensation) pairs to a ``(4, R, J)`` float64 scratch array; a second
kernel, one block per channel, adds that channel's ``R·P`` pairs and ``Σ gℓ`` in a fixed order
(per-thread compensated sums, then a shared-memory tree that carries the compensation). Bitwise reproducible for a given launch configuration. The scratch costs
``32/(rows_per_block·bytes per element)`` of the data traffic; the default keeps
``rows_per_block ≥ 8`` and aims for ≈ 4096 blocks. Products feeding a compensated sum use
``__dmul_rn`` (NVVM would otherwise contract ``s + a·b`` into an FMA, and TwoSum's error term
assumes ``s`` is the rounded sum of the rounded product); the simulator multiplies plainly.
The trees stay in shared memory (no warp shuffles, unlike :mod:`.cuda_coupling`'s per-row
log-det): they run once per channel over per-block partials, off the streamed data, so a shuffle
tree would save nothing measurable; no vector loads. Compiled to PTX for sm_90 in the tests here; **not measured on hardware** (no device was lent to the session that wrote it).

Testing without a GPU: ``NUMBA_ENABLE_CUDASIM=1`` set before numba is first imported (the tests
do this in a subprocess), tiny grids (``threads=16``).
"""

from __future__ import annotations

import functools
import math

import numpy as np

# numba-cuda (0.30 on numpy 2.5) still references np.row_stack, removed from NumPy; it is vstack.
if not hasattr(np, "row_stack"):
    np.row_stack = np.vstack

from numba import config, cuda, float64  # noqa: E402  (after the NumPy shim above)

from .._array import _is_cupy  # noqa: E402
from ._cuda_arrays import device_view  # noqa: E402
from .interface import ActNormCache  # noqa: E402, F401  (re-exported: the layer's cache type)

#: default threads per block (a power of two: the finalising tree reduction halves it).
THREADS = 256
#: blocks the default layout aims for (enough to fill a large GPU several times over).
TARGET_BLOCKS = 4096
#: smallest default rows per block of the VJP kernel (bounds the scratch traffic).
MIN_VJP_ROWS = 8

_SIM = bool(config.ENABLE_CUDASIM)


@functools.lru_cache(maxsize=None)
def _kernels(threads: int):
    """``(map, logdet, vjp, finalize)`` CUDA kernels for one block size (any float dtype)."""
    if _SIM:

        @cuda.jit(device=True)
        def mul_rn(a, b):
            return a * b

    else:
        from numba.cuda import libdevice

        @cuda.jit(device=True)
        def mul_rn(a, b):
            return libdevice.dmul_rn(a, b)  # never contracted into an FMA

    @cuda.jit(device=True)
    def two_sum(a, b):
        s = a + b
        bp = s - a
        return s, (a - (s - bp)) + (b - bp)

    @cuda.jit(device=True)
    def tree_sum(hi, lo, tid):
        """Shared arrays ``hi``, ``lo`` (``threads`` pairs) → ``hi[0] + lo[0]``, compensated."""
        half = threads // 2
        while half > 0:
            if tid < half:
                s, err = two_sum(hi[tid], hi[tid + half])
                lo[tid] += lo[tid + half] + err
                hi[tid] = s
            cuda.syncthreads()
            half //= 2

    @cuda.jit
    def map_kernel(x, bias, log_scale, out, rows, inverse):
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        n_rows, j_total = x.shape
        p_total = j_total // bias.shape[0]
        if j < j_total:
            c = j // p_total
            e = math.exp(float64(log_scale[c]))
            b = float64(bias[c])
            n0 = cuda.blockIdx.y * rows
            n1 = n0 + rows if n0 + rows < n_rows else n_rows  # (min() of ints fails to type in some numba.cuda)
            for n in range(n0, n1):
                if inverse:
                    out[n, j] = float64(x[n, j]) / e - b
                else:
                    out[n, j] = (float64(x[n, j]) + b) * e

    @cuda.jit
    def logdet_kernel(log_scale, p_total, logdet, inverse):
        """One block: ``logdet[:] = ±P·Σ log_scale`` (one rounded value, negated for the inverse)."""
        hi = cuda.shared.array(threads, float64)
        lo = cuda.shared.array(threads, float64)
        tid = cuda.threadIdx.x
        s = 0.0
        comp = 0.0
        for c in range(tid, log_scale.shape[0], threads):
            s, err = two_sum(s, float64(log_scale[c]))
            comp += err
        hi[tid] = s
        lo[tid] = comp
        cuda.syncthreads()
        tree_sum(hi, lo, tid)
        value = float64(p_total) * (hi[0] + lo[0])
        for n in range(tid, logdet.shape[0], threads):
            # rounding is symmetric: the stored −value is exactly the negated stored value
            logdet[n] = -value if inverse else value

    @cuda.jit
    def vjp_kernel(v, g, bias, log_scale, gout, part, rows, inverse):
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        n_rows, j_total = v.shape
        p_total = j_total // bias.shape[0]
        if j < j_total:
            c = j // p_total
            e = math.exp(float64(log_scale[c]))
            b = float64(bias[c])
            sg = 0.0
            sg_lo = 0.0
            sv = 0.0
            sv_lo = 0.0
            n0 = cuda.blockIdx.y * rows
            n1 = n0 + rows if n0 + rows < n_rows else n_rows  # (min() of ints fails to type in some numba.cuda)
            for n in range(n0, n1):
                gv = float64(g[n, j])
                if inverse:
                    gout[n, j] = gv / e
                    prod = mul_rn(gv, float64(v[n, j]) + b)
                else:
                    gout[n, j] = gv * e
                    prod = mul_rn(gv, float64(v[n, j]))
                sg, err = two_sum(sg, gv)
                sg_lo += err
                sv, err = two_sum(sv, prod)
                sv_lo += err
            r = cuda.blockIdx.y
            part[0, r, j] = sg
            part[1, r, j] = sg_lo
            part[2, r, j] = sv
            part[3, r, j] = sv_lo

    @cuda.jit
    def finalize_kernel(part, glogdet, log_scale, gbias, glog_scale, inverse):
        """Block ``c``: ``g bias_c``, ``g log_scale_c`` from channel c's scratch pairs and ``Σ gℓ``."""
        ghi = cuda.shared.array(threads, float64)
        glo = cuda.shared.array(threads, float64)
        vhi = cuda.shared.array(threads, float64)
        vlo = cuda.shared.array(threads, float64)
        lhi = cuda.shared.array(threads, float64)
        llo = cuda.shared.array(threads, float64)
        c = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        n_rb = part.shape[1]
        p_total = part.shape[2] // log_scale.shape[0]
        sg = 0.0
        sg_lo = 0.0
        sv = 0.0
        sv_lo = 0.0
        for q in range(tid, n_rb * p_total, threads):
            r = q // p_total
            j = c * p_total + (q - r * p_total)
            sg, err = two_sum(sg, part[0, r, j])
            sg_lo += err + part[1, r, j]
            sv, err = two_sum(sv, part[2, r, j])
            sv_lo += err + part[3, r, j]
        sl = 0.0
        sl_lo = 0.0
        for n in range(tid, glogdet.shape[0], threads):
            sl, err = two_sum(sl, float64(glogdet[n]))
            sl_lo += err
        ghi[tid] = sg
        glo[tid] = sg_lo
        vhi[tid] = sv
        vlo[tid] = sv_lo
        lhi[tid] = sl
        llo[tid] = sl_lo
        cuda.syncthreads()
        tree_sum(ghi, glo, tid)
        tree_sum(vhi, vlo, tid)
        tree_sum(lhi, llo, tid)
        if tid == 0:
            total_g = ghi[0] + glo[0]
            s, err = two_sum(vhi[0], mul_rn(float64(p_total), lhi[0] + llo[0]))
            total_v = s + (vlo[0] + err)
            if inverse:
                gbias[c] = -total_g
                glog_scale[c] = -total_v
            else:
                gbias[c] = math.exp(float64(log_scale[c])) * total_g
                glog_scale[c] = total_v

    return map_kernel, logdet_kernel, vjp_kernel, finalize_kernel


# ------------------------------------------------------------------ host-side entry points
def _device(name: str, what: str, a):
    return device_view(name, what, a)


def _data(name: str, what: str, a, like=None):
    arr = _device(name, what, a)
    if len(arr.shape) < 2:
        raise ValueError(f"{name}: {what} must have shape (N, C, ...), got {tuple(arr.shape)}")
    if like is not None:
        if tuple(arr.shape) != tuple(like.shape):
            raise ValueError(f"{name}: {what} has shape {tuple(arr.shape)}, expected {tuple(like.shape)}")
        if np.dtype(arr.dtype) != np.dtype(like.dtype):
            raise ValueError(f"{name}: {what} has dtype {arr.dtype}, the data has {like.dtype}")
    return arr


def _vector(name: str, what: str, a, length: int, like):
    arr = _device(name, what, a)
    if tuple(arr.shape) != (length,) or np.dtype(arr.dtype) != np.dtype(like.dtype):
        raise ValueError(
            f"{name}: {what} must be {like.dtype} of shape ({length},), got {arr.dtype} {tuple(arr.shape)}"
        )
    return arr


def _layout(name: str, n_rows: int, j_total: int, threads, rows_per_block, min_rows: int):
    """``(threads, rows_per_block, column blocks, row blocks)``; depends only on the shapes."""
    threads = THREADS if threads is None else int(threads)
    if threads < 1 or threads & (threads - 1) or threads > 1024:
        raise ValueError(f"{name}: threads must be a power of two ≤ 1024, got {threads}")
    col_blocks = max(1, -(-j_total // threads))
    if rows_per_block is None:
        row_blocks = max(1, min(-(-n_rows // min_rows), -(-TARGET_BLOCKS // col_blocks), 65535))
        rows_per_block = max(1, -(-n_rows // row_blocks))
    rows_per_block = int(rows_per_block)
    if rows_per_block < 1:
        raise ValueError(f"{name}: rows_per_block must be positive, got {rows_per_block}")
    row_blocks = max(1, -(-n_rows // rows_per_block))
    if row_blocks > 65535:
        raise ValueError(f"{name}: {row_blocks} row blocks exceed the grid's y limit; raise rows_per_block")
    return threads, rows_per_block, col_blocks, row_blocks


def _rows2d(a):
    return a.reshape(a.shape[0], int(np.prod(a.shape[1:])))


def _wrap(out, like_input):
    """CuPy arrays for CuPy inputs (zero-copy), numba device arrays otherwise."""
    if _is_cupy(like_input):
        import cupy

        return cupy.asarray(out)
    return out


def _map(name, x, bias, log_scale, inverse, threads, rows_per_block):
    xd = _data(name, "input", x)
    c_total = xd.shape[1]
    b = _vector(name, "bias", bias, c_total, xd)
    ls = _vector(name, "log_scale", log_scale, c_total, xd)
    x2 = _rows2d(xd)
    n_rows, j_total = x2.shape
    threads, rows, cols, n_rb = _layout(name, n_rows, j_total, threads, rows_per_block, 1)
    dtype = np.dtype(xd.dtype)
    out = cuda.device_array(x2.shape, dtype)
    logdet = cuda.device_array((n_rows,), dtype)
    map_kernel, logdet_kernel, _, _ = _kernels(threads)
    if n_rows * j_total:
        map_kernel[(cols, n_rb), threads](x2, b, ls, out, rows, inverse)
    logdet_kernel[1, threads](ls, j_total // c_total, logdet, inverse)
    return _wrap(out.reshape(*xd.shape), x), _wrap(logdet, x)


def actnorm_forward(x, bias, log_scale, *, threads=None, rows_per_block=None):
    """``(z, logdet)`` on the device: ``z = (x + bias)·exp(log_scale)``, ``logdet = P·Σ log_scale``."""
    return _map("actnorm_forward", x, bias, log_scale, False, threads, rows_per_block)


def actnorm_inverse(z, bias, log_scale, *, threads=None, rows_per_block=None):
    """``(x, logdet_inv)``: ``x = z/exp(log_scale) − bias``, ``logdet_inv`` the forward's negated."""
    return _map("actnorm_inverse", z, bias, log_scale, True, threads, rows_per_block)


def _vjp(name, v, bias, log_scale, g, glogdet, inverse, threads, rows_per_block):
    vd = _data(name, "cache array", v)
    gd = _data(name, "cotangent", g, vd)
    c_total = vd.shape[1]
    b = _vector(name, "bias", bias, c_total, vd)
    ls = _vector(name, "log_scale", log_scale, c_total, vd)
    gl = _vector(name, "log-det cotangent", glogdet, vd.shape[0], vd)
    v2, g2 = _rows2d(vd), _rows2d(gd)
    n_rows, j_total = v2.shape
    threads, rows, cols, n_rb = _layout(name, n_rows, j_total, threads, rows_per_block, MIN_VJP_ROWS)
    dtype = np.dtype(vd.dtype)
    gout = cuda.device_array(v2.shape, dtype)
    part = cuda.device_array((4, n_rb, j_total), np.float64)
    gbias = cuda.device_array((c_total,), dtype)
    glog_scale = cuda.device_array((c_total,), dtype)
    _, _, vjp_kernel, finalize_kernel = _kernels(threads)
    if n_rows * j_total:
        vjp_kernel[(cols, n_rb), threads](v2, g2, b, ls, gout, part, rows, inverse)
    else:  # no rows: every per-channel sum is empty
        part = cuda.to_device(np.zeros((4, n_rb, j_total)))
    finalize_kernel[c_total, threads](part, gl, ls, gbias, glog_scale, inverse)
    return _wrap(gout.reshape(*vd.shape), v), _wrap(gbias, v), _wrap(glog_scale, v)


def actnorm_backward(z, bias, log_scale, gz, glogdet, *, threads=None, rows_per_block=None):
    """VJP of :func:`actnorm_forward` whose output was ``z``: ``(gx, g bias, g log_scale)``."""
    return _vjp("actnorm_backward", z, bias, log_scale, gz, glogdet, False, threads, rows_per_block)


def actnorm_inverse_backward(x, bias, log_scale, gx, glogdet, *, threads=None, rows_per_block=None):
    """VJP of :func:`actnorm_inverse` whose output was ``x``: ``(gz, g bias, g log_scale)``."""
    return _vjp("actnorm_inverse_backward", x, bias, log_scale, gx, glogdet, True, threads, rows_per_block)
