"""The ``backend=`` choice of :class:`rawflow.AffineTransform` / :class:`rawflow.AdditiveTransform`
(:func:`select`) and of :class:`rawflow.ActNorm` (:func:`select_actnorm`, at the end).

* ``"reference"`` (default): the NumPy/CuPy code in :mod:`rawflow.bijectors.coupling`, the oracle.
* ``"numba"``: :mod:`rawflow.kernels.cpu_coupling`; NumPy float32/float64 arrays only.
* ``"cuda"``: :mod:`rawflow.kernels.cuda_coupling` (numba-cuda); CuPy (device) float32/float64
  arrays only. The additive transform has nothing to fuse on the device (``x + t`` is one CuPy
  kernel already), so it runs the reference CuPy code there.
* ``"cuda-c"``: :mod:`rawflow.kernels.cuda_c_coupling` (CUDA C through CuPy's ``RawModule``),
  same arrays and the same additive rule as ``"cuda"``.
* ``"auto"``: the kernel matching the arrays when there is one, else the reference (complex
  inputs, e.g. complex-step checks, custom scale maps, or CUDA unavailable). On CuPy arrays it
  picks ``"cuda"`` (numba-cuda): neither GPU path has yet been timed on hardware by this code, and
  ``"cuda-c"`` becomes the default only once ``benchmarks/gpu_suite.py`` shows it faster.

An explicit ``"numba"``/``"cuda"``/``"cuda-c"`` that cannot serve the arrays raises ``ValueError``: a backend
the caller named is never swapped silently. Arrays of a dtype rawflow does not compute in (float16,
long double, non-native byte order: :mod:`rawflow._checks`) are refused under every backend but
``"reference"`` (whose callers, the layers' public methods, refuse them first), never handed to the
reference code by ``"auto"``. Nothing here is global; each transform carries its
choice. This module imports no kernel module until one is selected.
"""

from __future__ import annotations

import numpy as np

from .._checks import dtype_problem
from .interface import SCALE_KINDS, scale_kind


def _check_dtype(owner: str, x) -> None:
    problem = dtype_problem(x.dtype) if hasattr(x, "dtype") else None
    if problem:
        raise ValueError(f"{owner}: input {problem}")


def _is_device(x) -> bool:
    return type(x).__module__.split(".", 1)[0] == "cupy"


def _real_float(x) -> bool:
    return np.dtype(x.dtype) in (np.float32, np.float64)


def _cuda_module():
    from . import cuda_coupling

    return cuda_coupling


def select(owner: str, backend: str, scale, x, *, additive: bool = False):
    """The kernel module serving ``x`` under ``backend``, or ``None`` for the reference path.

    ``scale`` is the affine transform's :class:`~rawflow.bijectors.scales.ScaleMap` (ignored if ``additive``).
    """
    if backend == "reference":
        return None
    _check_dtype(owner, x)
    supported = additive
    if not additive:
        try:
            scale_kind(scale)
            supported = True
        except ValueError:
            supported = False
    host = isinstance(x, np.ndarray) and _real_float(x)
    device = _is_device(x) and _real_float(x)
    what = f"{type(x).__name__} of dtype {getattr(x, 'dtype', '?')}" + ("" if additive else f", scale map {scale!r}")
    if backend == "numba":
        if host and supported:
            from . import cpu_coupling

            return cpu_coupling
        raise ValueError(
            f"{owner}: backend='numba' needs NumPy float32/float64 arrays"
            + ("" if additive else f" and a scale map with a kernel {sorted(SCALE_KINDS)}")
            + f"; got {what}"
        )
    if backend in ("cuda", "cuda-c"):
        if not (device and supported):
            raise ValueError(
                f"{owner}: backend={backend!r} needs CuPy float32/float64 arrays"
                + ("" if additive else f" and a scale map with a kernel {sorted(SCALE_KINDS)}")
                + f"; got {what}"
            )
        if additive:
            return None
        if backend == "cuda-c":
            from . import cuda_c_coupling

            return cuda_c_coupling
        return _cuda_module()
    # auto
    if host and supported:
        from . import cpu_coupling

        return cpu_coupling
    if device and supported and not additive:
        try:
            return _cuda_module()
        except Exception:  # noqa: BLE001  (no usable numba.cuda: the reference CuPy path serves)
            return None
    return None


# ------------------------------------------------------------------ ActNorm
def select_actnorm(owner: str, backend: str, x):
    """The ActNorm kernel module serving ``x`` under ``backend``, or ``None`` for the reference path.

    ``"numba"``: :mod:`rawflow.kernels.cpu_actnorm` (NumPy float32/float64); ``"cuda"``:
    :mod:`rawflow.kernels.cuda_actnorm` (CuPy float32/float64); ``"auto"``: whichever matches the
    arrays, else the reference (complex inputs, or no usable ``numba.cuda``). A named backend
    that cannot serve the arrays raises ``ValueError``.
    """
    if backend == "reference":
        return None
    _check_dtype(owner, x)
    host = isinstance(x, np.ndarray) and _real_float(x)
    device = _is_device(x) and _real_float(x)
    what = f"{type(x).__name__} of dtype {getattr(x, 'dtype', '?')}"
    if backend == "numba":
        if not host:
            raise ValueError(f"{owner}: backend='numba' needs NumPy float32/float64 arrays; got {what}")
        from . import cpu_actnorm

        return cpu_actnorm
    if backend == "cuda":
        if not device:
            raise ValueError(f"{owner}: backend='cuda' needs CuPy float32/float64 arrays; got {what}")
        from . import cuda_actnorm

        return cuda_actnorm
    if host:
        from . import cpu_actnorm

        return cpu_actnorm
    if device:
        try:
            from . import cuda_actnorm
        except Exception:  # noqa: BLE001  (no usable numba.cuda: the reference CuPy path serves)
            return None
        return cuda_actnorm
    return None
