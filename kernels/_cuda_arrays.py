"""Host-side checks shared by the numba-cuda kernel modules: device views of the caller's arrays."""

from __future__ import annotations

import numpy as np

# numba-cuda (0.30 on numpy 2.5) still references np.row_stack, removed from NumPy; it is vstack.
if not hasattr(np, "row_stack"):
    np.row_stack = np.vstack

from numba import cuda  # noqa: E402  (after the NumPy shim above)


def device_view(name: str, what: str, a, *, min_ndim: int = 1):
    """A numba view of device array ``a`` (no copy), checked: float32/64, C-contiguous, at least
    ``min_ndim`` axes. Accepts numba device arrays (the simulator's too) and anything with
    ``__cuda_array_interface__`` (CuPy, PyTorch); a NumPy array is refused with a hint."""
    if isinstance(a, np.ndarray):
        raise ValueError(f"{name}: {what} is a NumPy (host) array; pass a device array or use the CPU kernels")
    if hasattr(a, "copy_to_host") and hasattr(a, "is_c_contiguous"):
        arr = a  # numba device array (or the simulator's)
    elif hasattr(a, "__cuda_array_interface__"):
        arr = cuda.as_cuda_array(a)
    else:
        raise ValueError(f"{name}: {what} must be a CUDA device array, got {type(a).__name__}")
    if np.dtype(arr.dtype) not in (np.float32, np.float64):
        raise ValueError(f"{name}: {what} must be float32 or float64, got {arr.dtype}")
    if len(arr.shape) < min_ndim:
        raise ValueError(f"{name}: {what} must have shape (N, C, ...), got {tuple(arr.shape)}")
    if not arr.is_c_contiguous():
        raise ValueError(f"{name}: {what} must be C-contiguous (copy it first)")
    return arr
