"""Fused kernels for rawflow's hot paths (installed as ``rawflow.kernels``).

* :mod:`rawflow.kernels.cpu_coupling`: Numba CPU kernels for the elementwise part of affine and
  additive couplings (forward, inverse, both VJPs, fused log-det), parallel over rows.
* :mod:`rawflow.kernels.cuda_coupling`: the numba-cuda twin for device arrays (imports
  ``numba.cuda``; import it explicitly: ``from rawflow.kernels import cuda_coupling``).
* :mod:`rawflow.kernels.cuda_c_coupling`: the same kernels in CUDA C (``cuda_c_coupling.cu``),
  compiled by NVRTC through CuPy's ``RawModule`` (16-byte loads, warp-shuffle log-det reduction).
* :mod:`rawflow.kernels.cpu_actnorm` / :mod:`rawflow.kernels.cuda_actnorm`: fused ActNorm.
* :mod:`rawflow.kernels.fastexp`: vectorisable ``exp``/``tanh``/``log1p`` for Numba CPU code.
* :mod:`rawflow.kernels.dispatch`: what ``backend=`` on the transforms selects.
* :mod:`rawflow.kernels.interface`: what the layers and every kernel module share (cache types,
  scale-map codes, argument checks).

The reference NumPy/CuPy path (:class:`rawflow.AffineTransform`) stays the default and the oracle;
kernels are chosen explicitly (``backend="numba" | "cuda" | "cuda-c" | "auto"``), never by a global switch.
Numba is imported on first use of a kernel name, not by ``import rawflow``.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "SCALE_KINDS": "interface",
    "actnorm_backward": "cpu_actnorm",
    "actnorm_forward": "cpu_actnorm",
    "actnorm_inverse": "cpu_actnorm",
    "actnorm_inverse_backward": "cpu_actnorm",
    "additive_forward": "cpu_coupling",
    "additive_inverse": "cpu_coupling",
    "affine_backward": "cpu_coupling",
    "affine_forward": "cpu_coupling",
    "affine_inverse": "cpu_coupling",
    "affine_inverse_backward": "cpu_coupling",
    "scale_kind": "interface",
    "fast_exp": "fastexp",
    "fast_log1p_unit": "fastexp",
    "fast_tanh": "fastexp",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
