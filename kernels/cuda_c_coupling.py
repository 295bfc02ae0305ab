"""CUDA C kernels for the elementwise part of affine couplings, through CuPy's ``RawModule``.

The GPU twin of :mod:`.cpu_coupling` and :mod:`.cuda_coupling` (numba-cuda), same maths, argument
convention and results contract: ``xb: (N, C, ...)``, ``h = [h_s | t]: (N, 2C, ...)`` CuPy arrays,
flattened to rows of ``M`` and ``2M`` columns; ``log s = scale_map(h_s)``::

    forward           y = x·s + t                     logdet[n]     =  Σ_m log s[n, m]
    inverse           x = (y − t)/s                   logdet_inv[n] = −Σ_m log s[n, m]
    backward          gx = gy·s,  gt = gy,   gh_s = (gy·s·x + gℓ[n])·dlog s
    inverse_backward  gy = gx/s,  gt = −gy,  gh_s = (−gx·x − gℓ[n])·dlog s

The source is ``cuda_c_coupling.cu`` beside this file (its header lists the exactness choices:
no FMA contraction of outputs, a compensated float64 log-det through warp shuffles and shared
memory, one rounding to the dtype, the inverse's log-det the exact negation). Why a second GPU
path: measured earlier on an H200 (docs/kernels.md, "GPU"), a hand-written CUDA C pair with 16-byte
loads ran the fused forward+backward in 15 µs at 64 × 3072 (numba-cuda: 44 µs, mostly launch
overhead from Python) and reached 97.5 % of the copy bandwidth at 4096 × 16384 (numba-cuda 71–78 %
at large sizes): the issue's GPU targets (≥ 5× torch eager at 64 × 3072, ≥ 90 % of copy) need it.

Layout: one block per row (grid-stride over rows), threads stride the row 16 bytes at a time
(``float4`` / ``double2``) when ``M`` is a multiple of the vector width and all base pointers are
16-byte aligned, else element by element; ``threads`` must be a multiple of 32 (≤ 1024; by default
256, fewer for rows too short to feed 8 warps). Results are bitwise reproducible for a given
``threads`` and path.

Testing without a GPU: ``tests/kernels/test_kernels_cuda_c.py`` compiles the same ``.cu`` file with g++
against ``tests/kernels/cuda_emul/cuda_emul.h`` (each block's threads run as OS threads, shuffles and
barriers real) and checks every kernel against the long-double reference, and compiles it with
NVRTC for sm_90; ``tests/kernels/gpu_check.py`` runs it on a device when one is lent.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from .interface import KernelCache, check_like, scale_kind  # noqa: F401  (KernelCache re-exported: the transforms' cache type)

SOURCE = Path(__file__).with_name("cuda_c_coupling.cu")
#: The template instantiations compiled (NVRTC name expressions).
NAMES = {
    ("forward", "float32"): "rf_affine_rows<float>",
    ("forward", "float64"): "rf_affine_rows<double>",
    ("vjp", "float32"): "rf_affine_rows_vjp<float>",
    ("vjp", "float64"): "rf_affine_rows_vjp<double>",
}
#: NVRTC options: the C++ dialect only; no fast-math, FMA contraction of outputs is prevented
#: in the source itself.
OPTIONS = ("-std=c++17",)
#: default threads per block.
THREADS = 256
#: default cap on the number of blocks (rows beyond it are reached by the grid-stride loop).
MAX_BLOCKS = 65535
_WIDTH = {"float32": 4, "float64": 2}  # elements per 16-byte vector


class CupyRuntime:
    """Where the kernels run by default: CuPy arrays, NVRTC-compiled through ``cupy.RawModule``.

    The entry points take ``runtime=`` so the same host-side code (validation, the vector-path
    decision, the launch shape) can drive another implementation of this small interface; the
    tests pass one that runs the ``.cu`` file compiled for the CPU (``tests/kernels/cuda_emul``).
    """

    array_kind = "CuPy"

    @staticmethod
    def is_array(a) -> bool:
        return type(a).__module__.split(".", 1)[0] == "cupy"

    @staticmethod
    def empty_like(a):
        import cupy

        return cupy.empty_like(a)

    @staticmethod
    def empty(n: int, dtype):
        import cupy

        return cupy.empty(n, dtype)

    @staticmethod
    def pointer(a) -> int:
        return a.data.ptr

    @staticmethod
    def launch(name: str, blocks: int, threads: int, args: tuple) -> None:
        _module().get_function(name)((blocks,), (threads,), args)


@functools.lru_cache(maxsize=None)
def _module():
    import cupy

    return cupy.RawModule(code=SOURCE.read_text(), options=OPTIONS, name_expressions=list(NAMES.values()))


# ------------------------------------------------------------------ validation
def _device(rt, name: str, what: str, a):
    if isinstance(a, np.ndarray) and not rt.is_array(a):
        raise ValueError(f"{name}: {what} is a NumPy (host) array; pass a {rt.array_kind} array or use the CPU kernels")
    if not rt.is_array(a):
        raise ValueError(f"{name}: {what} must be a {rt.array_kind} array, got {type(a).__name__}")
    if np.dtype(a.dtype) not in (np.float32, np.float64):
        raise ValueError(f"{name}: {what} must be float32 or float64, got {a.dtype}")
    if a.ndim < 2:
        raise ValueError(f"{name}: {what} must have shape (N, C, ...), got {tuple(a.shape)}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: {what} must be C-contiguous (copy it first)")
    return a


def _device_vector(rt, name, gl, like):
    if not rt.is_array(gl) or tuple(gl.shape) != (like.shape[0],) or np.dtype(gl.dtype) != np.dtype(like.dtype):
        raise ValueError(
            f"{name}: log-det cotangent must be a {rt.array_kind} {like.dtype} array of shape ({like.shape[0]},), "
            f"got {type(gl).__name__} {getattr(gl, 'dtype', '')} {tuple(getattr(gl, 'shape', ()))}"
        )
    if not gl.flags.c_contiguous:
        raise ValueError(f"{name}: log-det cotangent must be C-contiguous (copy it first)")
    return gl


def launch_config(name: str, n_rows: int, threads=None, blocks=None, *, per_row: int | None = None) -> tuple[int, int]:
    """``(threads, blocks)``: ``threads`` a multiple of 32 in [32, 1024], ``blocks`` ≥ 1.

    By default ``threads`` is :data:`THREADS`, cut down to the warps a row can keep busy when
    ``per_row`` (the loads per row: vectors, or elements on the scalar path) is small: a block
    of 256 threads on a row of 8 values would leave 31 of its 32 warps idle.
    """
    if threads is None:
        threads = THREADS if per_row is None else min(THREADS, 32 * max(1, -(-int(per_row) // 32)))
    threads = int(threads)
    if threads < 32 or threads > 1024 or threads % 32:
        raise ValueError(f"{name}: threads must be a multiple of 32 in [32, 1024], got {threads}")
    blocks = min(max(n_rows, 1), MAX_BLOCKS) if blocks is None else int(blocks)
    if blocks < 1:
        raise ValueError(f"{name}: blocks must be positive, got {blocks}")
    return threads, blocks


def vector_ok(m: int, dtype, *pointers: int) -> bool:
    """Whether the 16-byte vector path may run: ``m`` a multiple of the width, pointers aligned."""
    return m % _WIDTH[np.dtype(dtype).name] == 0 and all(p % 16 == 0 for p in pointers)


# ------------------------------------------------------------------ entry points
def affine_forward(xb, h, scale="exp", *, threads=None, blocks=None, runtime=CupyRuntime):
    """``(yb, logdet)`` on the device: ``yb = xb·s + t``, ``logdet = Σ log s`` per row."""
    return _direction(runtime, "affine_forward", xb, h, scale, False, threads, blocks)


def affine_inverse(yb, h, scale="exp", *, threads=None, blocks=None, runtime=CupyRuntime):
    """``(xb, logdet_inv)``: ``xb = (yb − t)/s``, ``logdet_inv = −Σ log s``."""
    return _direction(runtime, "affine_inverse", yb, h, scale, True, threads, blocks)


def affine_backward(xb, h, gyb, glogdet, scale="exp", *, threads=None, blocks=None, runtime=CupyRuntime):
    """VJP of :func:`affine_forward` at ``xb``: ``(gxb, gh)``, ``gh = [gh_s | gt]`` shaped like ``h``."""
    return _vjp(runtime, "affine_backward", xb, h, gyb, glogdet, scale, False, threads, blocks)


def affine_inverse_backward(xb, h, gxb, glogdet, scale="exp", *, threads=None, blocks=None, runtime=CupyRuntime):
    """VJP of :func:`affine_inverse` whose output was ``xb``: ``(gyb, gh)``."""
    return _vjp(runtime, "affine_inverse_backward", xb, h, gxb, glogdet, scale, True, threads, blocks)


def _direction(rt, name, xb, h, scale, inverse, threads, blocks):
    kind, c = scale_kind(scale)
    x = _device(rt, name, "x", xb)
    hh = _device(rt, name, "h", h)
    check_like(name, "h", hh, x, 2)
    dtype = np.dtype(x.dtype)
    n = x.shape[0]
    m = x.size // max(n, 1)
    out = rt.empty_like(x)
    logdet = rt.empty(n, dtype)
    vec = vector_ok(m, dtype, rt.pointer(x), rt.pointer(hh), rt.pointer(out))
    threads, blocks = launch_config(name, n, threads, blocks, per_row=m // _WIDTH[dtype.name] if vec else m)
    if n and m:
        rt.launch(NAMES[("forward", dtype.name)], blocks, threads,
                  (x, hh, out, logdet, np.int64(n), np.int64(m), np.int32(kind), dtype.type(c), np.int32(inverse),
                   np.int32(vec)))
    elif n:
        logdet.fill(0)
    return out, logdet


def _vjp(rt, name, xb, h, g, glogdet, scale, inverse, threads, blocks):
    kind, c = scale_kind(scale)
    x = _device(rt, name, "x", xb)
    hh = _device(rt, name, "h", h)
    gg = _device(rt, name, "cotangent", g)
    check_like(name, "h", hh, x, 2)
    check_like(name, "cotangent", gg, x, 1)
    gl = _device_vector(rt, name, glogdet, x)
    dtype = np.dtype(x.dtype)
    n = x.shape[0]
    m = x.size // max(n, 1)
    gout = rt.empty_like(x)
    gh = rt.empty_like(hh)
    vec = vector_ok(m, dtype, *(rt.pointer(a) for a in (x, hh, gg, gout, gh)))
    threads, blocks = launch_config(name, n, threads, blocks, per_row=m // _WIDTH[dtype.name] if vec else m)
    if n and m:
        rt.launch(NAMES[("vjp", dtype.name)], blocks, threads,
                  (x, hh, gg, gl, gout, gh, np.int64(n), np.int64(m), np.int32(kind), dtype.type(c),
                   np.int32(inverse), np.int32(vec)))
    return gout, gh
