"""numba-cuda kernels for the elementwise part of affine couplings (GPU twin of :mod:`.cpu_coupling`).

Same maths, argument convention and results contract as :mod:`rawflow.kernels.cpu_coupling`:
``xb: (N, C, ...)``, ``h = [h_s | t]: (N, 2C, ...)`` on the device, flattened to rows of ``M`` and
``2M`` columns; ``backward``/``inverse_backward`` return ``gh = [gh_s | gt]`` shaped like ``h``.
Inputs are anything with ``__cuda_array_interface__`` (CuPy, PyTorch, numba device arrays) or a
numba device array (also the CUDA simulator's); outputs are numba device arrays, or CuPy arrays
(zero-copy views) when the inputs are CuPy. Inputs must be C-contiguous: nothing is copied here.
Launches go to numba's default stream (CuPy's default is the same legacy stream; work on other
CuPy streams must be synchronised by the caller).

Layout: grid-stride over rows (one block owns a row at a time), block-stride over the row's
columns; ``threads`` a multiple of 32. The log-det is a per-thread compensated (TwoSum) float64
partial sum, then a compensated warp-shuffle tree in each warp (``shfl_down_sync``), the warps'
pairs through shared memory, and a last shuffle tree in warp 0, so the result is the float64 sum
to within about one rounding, in a fixed order (bitwise reproducible for a given block size), then
rounded once to the dtype; the inverse negates it, so the two log-dets cancel exactly. Under the
CUDA simulator, which has no shuffles, the same exchange goes through shared memory
(:data:`SIMULATED`): same semantics, same merge order, so the simulator tests the order and the
arithmetic a GPU runs. NVVM may contract ``x·s + t`` into an FMA (one rounding instead of two:
results can differ from the CPU kernels in the last bit, never by more than the tests' bounds);
the compensated sums contain no products, so contraction cannot undo them. Compiled to PTX for
sm_90 in CI (``tests/kernels/test_kernels_actnorm.py``, NVVM from the ``ptx`` extra); not yet run on
hardware. Loads are scalar (numba has no 16-byte vector loads from a float array): the CUDA C
twin, :mod:`.cuda_c_coupling`, has them.

Elementary functions are CUDA's (libdevice ``expf``/``exp``, ``tanhf``, ``log1pf``, ≤ 2 ulp in
float32), the same in every direction, so round trips see the same ``s``. ``sigmoid``'s ``s`` is
``sigmoid(u)`` computed directly (``= exp(log s)``) and ``bounded``'s ``dlog s = sech²`` without
the cancellation of ``1 − tanh²``, as on the CPU.

Testing without a GPU: set ``NUMBA_ENABLE_CUDASIM=1`` *before* numba is first imported (the tests
do this in a subprocess) and use tiny grids (``threads=32``): the simulator runs every thread as
a Python thread.
"""

from __future__ import annotations

import functools
import math

import numpy as np

# numba-cuda (0.30 on numpy 2.5) still references np.row_stack, removed from NumPy; it is vstack.
if not hasattr(np, "row_stack"):
    np.row_stack = np.vstack

import numba  # noqa: E402  (after the NumPy shim above)
from numba import cuda, float64  # noqa: E402

from .._array import _is_cupy  # noqa: E402
from ._cuda_arrays import device_view  # noqa: E402
from .interface import KernelCache, check_like, scale_kind  # noqa: E402, F401  (KernelCache re-exported: the transforms' cache type)

#: default threads per block (a multiple of 32: the log-det reduction works in whole warps).
THREADS = 256
#: Under ``NUMBA_ENABLE_CUDASIM=1`` the warp shuffles are emulated through shared memory (the
#: simulator has none); same exchange semantics, so the same merge order and bitwise-identical
#: results either way. Numba's own mode flag, read once: not a switch of this library.
SIMULATED = bool(numba.config.ENABLE_CUDASIM)
#: default cap on the number of blocks (rows beyond it are reached by the grid-stride loop).
MAX_BLOCKS = 65535


@functools.lru_cache(maxsize=None)
def _kernels(dtype_name: str, threads: int):
    """``(forward, vjp)`` CUDA kernels for one dtype and block size, compiled on first launch."""
    ft = np.dtype(dtype_name).type
    zero, half, one, two, four = ft(0), ft(0.5), ft(1), ft(2), ft(4)  # typed: float32 math stays float32
    xchg_size = threads if SIMULATED else 1

    @cuda.jit(device=True)
    def smap(kind, hv, c):
        """``(log s, s, dlog s)`` for one raw value ``hv``."""
        if kind == 0:
            return hv, math.exp(hv), one
        if kind == 1:
            a = hv / c
            th = math.tanh(a)
            log_s = c * th
            # sech² = 4g/(1 + g)², g = e^{−2|a|}, with 1 + g's rounding error corrected: no
            # cancellation near saturation (1 − tanh² where tanh is small)
            g = math.exp(-(abs(a) + abs(a)))
            g1 = one + g
            s0 = (four * g) / (g1 * g1)
            sech2 = one - th * th if abs(th) < half else s0 - (two * s0 * ((one - g1) + g)) / g1
            return log_s, math.exp(log_s), sech2
        u = hv + two
        e = math.exp(-abs(u))  # in (0, 1]: no overflow on either softplus branch
        sp = math.log1p(e)
        d = one + e
        if u >= zero:
            return -sp, one / d, e / d
        return u - sp, e / d, one / d

    nwarps = threads // 32

    @cuda.jit(device=True)
    def shfl_down(v, o, xchg):
        """``__shfl_down_sync(full mask, v, o)``: lane ``l`` gets lane ``l + o``'s ``v`` (its own when
        ``l + o ≥ 32``). The simulator has no shuffles: there the block exchanges through shared
        memory with the same semantics (every thread of the block calls this, uniformly)."""
        if SIMULATED:
            tid = cuda.threadIdx.x
            xchg[tid] = v
            cuda.syncthreads()
            r = xchg[tid + o] if (tid & 31) + o < 32 else v
            cuda.syncthreads()
            return r
        return cuda.shfl_down_sync(0xFFFFFFFF, v, o)

    @cuda.jit(device=True)
    def merge(s, c, s2, c2):
        """``(s, c) + (s2, c2)`` for compensated pairs (TwoSum on the leading parts)."""
        t = s + s2
        bp = t - s
        return t, c + c2 + ((s - (t - bp)) + (s2 - bp))

    @cuda.jit(device=True)
    def warp_merge(s, c, xs, xc):
        o = 16
        while o > 0:
            s2 = shfl_down(s, o, xs)
            c2 = shfl_down(c, o, xc)
            s, c = merge(s, c, s2, c2)
            o //= 2
        return s, c

    @cuda.jit
    def forward(x, h, out, logdet, kind, c, inverse):
        warp_s = cuda.shared.array(nwarps, float64)
        warp_c = cuda.shared.array(nwarps, float64)
        xs = cuda.shared.array(xchg_size, float64)  # the simulator's shuffle exchange (1 unused slot on a GPU)
        xc = cuda.shared.array(xchg_size, float64)
        tid = cuda.threadIdx.x
        lane = tid & 31
        warp = tid >> 5
        n_rows = x.shape[0]
        m = x.shape[1]
        for n in range(cuda.blockIdx.x, n_rows, cuda.gridDim.x):
            acc = 0.0
            err = 0.0
            for j in range(tid, m, cuda.blockDim.x):
                log_s, s, _ = smap(kind, h[n, j], c)
                if inverse:
                    out[n, j] = (x[n, j] - h[n, m + j]) / s
                else:
                    out[n, j] = x[n, j] * s + h[n, m + j]
                v = float(log_s)
                t = acc + v  # TwoSum: err collects exactly what each addition rounded away
                bp = t - acc
                err += (acc - (t - bp)) + (v - bp)
                acc = t
            # compensated block sum: a shuffle tree per warp, then warp 0 over the warps' pairs
            acc, err = warp_merge(acc, err, xs, xc)
            if lane == 0:
                warp_s[warp] = acc
                warp_c[warp] = err
            cuda.syncthreads()
            acc = warp_s[lane] if lane < nwarps else 0.0
            err = warp_c[lane] if lane < nwarps else 0.0
            # every warp runs this (uniform for the simulator's exchange); warp 0's lane 0 is used
            acc, err = warp_merge(acc, err, xs, xc)
            if tid == 0:
                logdet[n] = acc + err
                if inverse:  # negate the rounded sum: forward + inverse cancel exactly
                    logdet[n] = -logdet[n]
            cuda.syncthreads()  # warp_s/warp_c are reused by this block's next row

    @cuda.jit
    def vjp(x, h, g, glogdet, gout, gh, kind, c, inverse):
        n_rows = x.shape[0]
        m = x.shape[1]
        for n in range(cuda.blockIdx.x, n_rows, cuda.gridDim.x):
            gl = glogdet[n]
            for j in range(cuda.threadIdx.x, m, cuda.blockDim.x):
                _, s, dlog_s = smap(kind, h[n, j], c)
                gv = g[n, j]
                if inverse:
                    gy = gv / s
                    gout[n, j] = gy
                    gh[n, j] = (-(gv * x[n, j]) - gl) * dlog_s
                    gh[n, m + j] = -gy
                else:
                    gys = gv * s
                    gout[n, j] = gys
                    gh[n, j] = (gys * x[n, j] + gl) * dlog_s
                    gh[n, m + j] = gv

    return forward, vjp


# ------------------------------------------------------------------ host-side entry points
def _device(name: str, what: str, a):
    return device_view(name, what, a, min_ndim=2)


def _rows2d(a):
    return a.reshape(a.shape[0], int(np.prod(a.shape[1:])))


def _launch_config(name: str, n_rows: int, threads, blocks):
    threads = THREADS if threads is None else int(threads)
    if threads < 32 or threads % 32 or threads > 1024:
        raise ValueError(f"{name}: threads must be a multiple of 32 in [32, 1024], got {threads}")
    blocks = min(max(n_rows, 1), MAX_BLOCKS) if blocks is None else int(blocks)
    if blocks < 1:
        raise ValueError(f"{name}: blocks must be positive, got {blocks}")
    return threads, blocks


def _wrap(out, like_input):
    """Return CuPy arrays for CuPy inputs (zero-copy), numba device arrays otherwise."""
    if _is_cupy(like_input):
        import cupy

        return cupy.asarray(out)
    return out


def affine_forward(xb, h, scale="exp", *, threads=None, blocks=None):
    """``(yb, logdet)`` on the device: ``yb = xb·s + t``, ``logdet = Σ log s`` per row."""
    return _direction("affine_forward", xb, h, scale, False, threads, blocks)


def affine_inverse(yb, h, scale="exp", *, threads=None, blocks=None):
    """``(xb, logdet_inv)``: ``xb = (yb − t)/s``, ``logdet_inv = −Σ log s``."""
    return _direction("affine_inverse", yb, h, scale, True, threads, blocks)


def affine_backward(xb, h, gyb, glogdet, scale="exp", *, threads=None, blocks=None):
    """VJP of :func:`affine_forward` at ``xb``: ``(gxb, gh)``, ``gh = [gh_s | gt]`` shaped like ``h``."""
    return _vjp("affine_backward", xb, h, gyb, glogdet, scale, False, threads, blocks)


def affine_inverse_backward(xb, h, gxb, glogdet, scale="exp", *, threads=None, blocks=None):
    """VJP of :func:`affine_inverse` whose output was ``xb``: ``(gyb, gh)``."""
    return _vjp("affine_inverse_backward", xb, h, gxb, glogdet, scale, True, threads, blocks)


def _direction(name, xb, h, scale, inverse, threads, blocks):
    kind, c = scale_kind(scale)
    x = _device(name, "x", xb)
    hh = _device(name, "h", h)
    check_like(name, "h", hh, x, 2)
    dtype = np.dtype(x.dtype)
    threads, blocks = _launch_config(name, x.shape[0], threads, blocks)
    x2, h2 = _rows2d(x), _rows2d(hh)
    out = cuda.device_array(x2.shape, dtype)
    logdet = cuda.device_array((x2.shape[0],), dtype)
    forward, _ = _kernels(dtype.name, threads)
    forward[blocks, threads](x2, h2, out, logdet, kind, dtype.type(c), inverse)
    return _wrap(out.reshape(*x.shape), xb), _wrap(logdet, xb)


def _vjp(name, xb, h, g, glogdet, scale, inverse, threads, blocks):
    kind, c = scale_kind(scale)
    x = _device(name, "x", xb)
    hh = _device(name, "h", h)
    gg = _device(name, "cotangent", g)
    check_like(name, "h", hh, x, 2)
    check_like(name, "cotangent", gg, x, 1)
    gl = _device_vector(name, glogdet, x)
    dtype = np.dtype(x.dtype)
    threads, blocks = _launch_config(name, x.shape[0], threads, blocks)
    x2, h2, g2 = _rows2d(x), _rows2d(hh), _rows2d(gg)
    gout = cuda.device_array(x2.shape, dtype)
    gh = cuda.device_array(h2.shape, dtype)
    _, vjp = _kernels(dtype.name, threads)
    vjp[blocks, threads](x2, h2, g2, gl, gout, gh, kind, dtype.type(c), inverse)
    return _wrap(gout.reshape(*x.shape), xb), _wrap(gh.reshape(*hh.shape), xb)


def _device_vector(name, gl, like):
    if isinstance(gl, np.ndarray) or not (hasattr(gl, "copy_to_host") or hasattr(gl, "__cuda_array_interface__")):
        raise ValueError(f"{name}: log-det cotangent must be a device array")
    arr = gl if hasattr(gl, "copy_to_host") else cuda.as_cuda_array(gl)
    if tuple(arr.shape) != (like.shape[0],) or np.dtype(arr.dtype) != np.dtype(like.dtype):
        raise ValueError(
            f"{name}: log-det cotangent must be {like.dtype} of shape ({like.shape[0]},), "
            f"got {arr.dtype} {tuple(arr.shape)}"
        )
    return arr
