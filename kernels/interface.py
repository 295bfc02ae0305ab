"""What the layers and every kernel module share: cache types, scale-map codes, argument checks.

:mod:`.dispatch` (which the layers call) and the kernel modules (:mod:`.cpu_coupling`,
:mod:`.cuda_coupling`, :mod:`.cuda_c_coupling`, :mod:`.cpu_actnorm`, :mod:`.cuda_actnorm`) all import
this module and nothing else of each other's, so the package has no import circle; and it imports
nothing from :mod:`rawflow.bijectors`, so the kernels sit below the layers that call them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

#: The scale maps with a fused kernel, by name, and the code the kernels switch on.
SCALE_KINDS = {"exp": 0, "bounded": 1, "sigmoid": 2}


class KernelCache(NamedTuple):
    """A kernel backend's cache: the forward's input ``xb``, the raw ``h`` and the kernel module.

    ``s`` and ``dlog s`` are recomputed by the VJP kernels. The forward and the inverse produce
    the same structure (``xb`` is the inverse's output), so the caches stay interchangeable.
    Each kernel module re-exports it, so the transforms build it as ``kernels.KernelCache``.
    """

    xb: Any
    h: Any
    kernels: Any


class ActNormCache(NamedTuple):
    """An ActNorm kernel backend's cache: the layer's input ``x``, its output ``z``, the kernel module.

    ``backward`` reads ``z``, ``inverse_backward`` reads ``x`` (``u = x + bias`` is recomputed in
    the kernel); forward and inverse caches are the same structure, hence interchangeable.
    """

    x: Any
    z: Any
    kernels: Any


def check_like(name: str, what: str, a, like, width: int) -> None:
    """``a`` must be shaped like the x block ``like`` with ``width`` times its channels (``h``: 2,
    a cotangent: 1) and share its dtype; raises ``ValueError`` naming ``name`` and ``what``."""
    want = (like.shape[0], width * like.shape[1]) + tuple(like.shape[2:])
    if tuple(a.shape) != want:
        raise ValueError(f"{name}: {what} has shape {tuple(a.shape)}, expected {want}")
    if np.dtype(a.dtype) != np.dtype(like.dtype):
        raise ValueError(f"{name}: {what} has dtype {a.dtype}, x has {like.dtype}")


def scale_kind(scale) -> tuple[int, float]:
    """``(kind, c)`` for a scale-map name or a :class:`~rawflow.bijectors.scales.ScaleMap` the kernels implement.

    A map declares its kernel with a ``kernel_name`` set on its own class (``ExpScale``,
    ``BoundedScale``, ``SigmoidScale``). Only the class's own attribute counts, not an inherited one:
    a subclass may change the maths while keeping its parent's name, and then it has no kernel.
    Raises ``ValueError`` for anything else (a custom ScaleMap has no kernel).
    """
    if isinstance(scale, str):
        if scale not in SCALE_KINDS:
            raise ValueError(f"kernels: unknown scale map {scale!r}; use one of {sorted(SCALE_KINDS)}")
        return SCALE_KINDS[scale], (2.0 if scale == "bounded" else 0.0)
    name = vars(type(scale)).get("kernel_name")
    if name in SCALE_KINDS:
        return SCALE_KINDS[name], float(getattr(scale, "c", 0.0))
    raise ValueError(f"kernels: no kernel for scale map {scale!r} (have {sorted(SCALE_KINDS)})")
