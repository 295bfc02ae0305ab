"""Argument checks shared by every public entry point: arrays, dtypes, generators, caches.

Every check raises ``ValueError("<owner>: <argument> <problem>")``: the owner is the layer, prior,
model or function that was called, the argument is named as its caller knows it. The rules, stated
once here and in the bijector contract (:mod:`rawflow.bijectors.bijector`) and the README:

* **Arrays** are ``numpy.ndarray`` or ``cupy.ndarray``. ``numpy.matrix`` (``*`` is a matrix
  product, every result stays 2-D) and masked arrays (the mask would be ignored) are refused, as
  is anything else with a ``shape`` (a list, a ``torch.Tensor``): nothing is converted.
* **Dtypes**: float32 and float64, plus complex64 and complex128 on the reference paths (the
  complex-step oracle perturbs inputs and parameters by ``i·h``), in native byte order. float16,
  longdouble / clongdouble, big-endian arrays, integers and booleans are refused at every entry
  point, never converted: each is a different precision or layout, and converting silently would
  return an answer in a precision nobody asked for (see :data:`DTYPES`).
* **Batches**: the batch axis may be empty (``N = 0``); the event axes may not (an image with no
  pixels has no density). What a layer does with ``N = 0`` is in the bijector contract.
* **Generators**: randomness comes from a ``numpy.random.Generator`` passed explicitly.
* **Contexts** of conditional layers, priors and models: ``(N, *context_shape)`` arrays of the
  input's dtype and namespace, one row per sample, finite (:func:`check_context`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: The dtypes rawflow computes in. float32/float64 everywhere; complex64/complex128 on the
#: reference paths (complex-step checks). Native byte order only.
DTYPES = tuple(np.dtype(t) for t in (np.float32, np.float64, np.complex64, np.complex128))


def _is_cupy(a: Any) -> bool:
    return type(a).__module__.split(".", 1)[0] == "cupy"


def array_problem(a: Any) -> str | None:
    """Why ``a`` is not an array rawflow accepts (``None`` if it is)."""
    if isinstance(a, np.ndarray):
        if isinstance(a, np.matrix):
            return "must be a plain array, got numpy.matrix (convert with np.asarray)"
        if isinstance(a, np.ma.MaskedArray):
            return "must be a plain array, got a masked array (its mask would be ignored; fill it first)"
        return None
    if _is_cupy(a) and hasattr(a, "dtype") and hasattr(a, "shape"):
        return None
    kind = type(a)
    if hasattr(a, "shape"):  # array-like from another library (a torch.Tensor, a JAX array, ...)
        return f"must be an array, got {kind.__module__}.{kind.__name__} (rawflow takes NumPy or CuPy arrays)"
    return f"must be an array, got {kind.__name__}"


def dtype_problem(dtype: Any) -> str | None:
    """Why arrays of ``dtype`` are refused (``None`` if rawflow computes in it); see :data:`DTYPES`."""
    d = np.dtype(dtype)
    if d in DTYPES:
        return None
    if d.kind in "fc" and not d.isnative:
        return (f"has non-native byte order ({d.str}); rawflow does not convert it: "
                f"use a.astype(a.dtype.newbyteorder('='))")
    if d.kind in "fc":
        return (f"has dtype {d}; rawflow computes in float32 or float64 (complex64/complex128 for "
                f"complex-step checks) and never converts silently: cast it first, e.g. a.astype(np.float64)")
    return f"must be a floating-point array, got dtype {d}"


def check_array(owner: str, a: Any, what: str, event_shape: tuple | None = None, *,
                finite: bool = True) -> None:
    """``a`` is an accepted array of an accepted dtype, ``(N, *event_shape)``, every event axis
    non-empty, finite unless ``finite=False``. ``event_shape`` entries ``None`` match any size ≥ 1;
    ``event_shape=None`` checks neither the shape nor the size."""
    problem = array_problem(a)
    if problem:
        raise ValueError(f"{owner}: {what} {problem}")
    if event_shape is not None:
        want = 1 + len(event_shape)
        if a.ndim != want:
            dims = ", ".join("*" if d is None else str(d) for d in event_shape)
            raise ValueError(f"{owner}: {what} must have {want} dimensions (N, {dims}), got shape {tuple(a.shape)}")
        for axis, (have, expect) in enumerate(zip(a.shape[1:], event_shape), start=1):
            if expect is not None and have != expect:
                raise ValueError(f"{owner}: {what} has size {have} on axis {axis}, expected {expect} "
                                 f"(shape {tuple(a.shape)})")
            if have == 0:
                raise ValueError(f"{owner}: {what} has size 0 on axis {axis} (shape {tuple(a.shape)}); "
                                 "only the batch axis may be empty")
    problem = dtype_problem(a.dtype)
    if problem:
        raise ValueError(f"{owner}: {what} {problem}")
    if finite and not bool(_xp(a).isfinite(a).all()):
        raise ValueError(f"{owner}: {what} contains NaN or Inf")


def check_vector(owner: str, a: Any, what: str, n: int, dtype) -> None:
    """``a`` is a finite ``(n,)`` array of ``dtype`` (a per-sample cotangent such as ``glogdet``)."""
    problem = array_problem(a)
    if problem:
        raise ValueError(f"{owner}: {what} {problem}")
    if tuple(a.shape) != (n,):
        raise ValueError(f"{owner}: {what} must have shape ({n},), got {tuple(a.shape)}")
    if a.dtype != dtype:
        raise ValueError(f"{owner}: {what} dtype {a.dtype} differs from {np.dtype(dtype)}")
    if not bool(_xp(a).isfinite(a).all()):
        raise ValueError(f"{owner}: {what} contains NaN or Inf")


def check_context(owner: str, context_shape: tuple | None, context: Any, x: Any = None, *,
                  n: int | None = None, what: str = "context") -> Any:
    """The context rule (:mod:`rawflow.bijectors.bijector`), for layers, priors and models: ``None``
    where ``context_shape`` is ``None``; else a finite ``(N, *context_shape)`` array of ``x``'s dtype
    and namespace, ``N = x.shape[0]`` (or ``n`` where given: a prior's draws)."""
    if context_shape is None:
        if context is not None:
            raise ValueError(f"{owner}: takes no {what} (it is not conditional), got {what}={_kind(context)}")
        return None
    if context is None:
        dims = ", ".join(map(str, context_shape))
        raise ValueError(f"{owner}: is conditional and needs {what}=, an (N, {dims}) array")
    check_array(owner, context, what, context_shape)
    if x is not None and context.dtype != x.dtype:
        raise ValueError(f"{owner}: {what} has dtype {context.dtype} but the input has dtype {x.dtype}; cast one "
                         "to match")
    if x is not None and type(context) is not type(x):
        raise ValueError(f"{owner}: {what} is a {type(context).__module__}.{type(context).__name__} but the input "
                         f"a {type(x).__module__}.{type(x).__name__}; both must live in one array namespace")
    rows = x.shape[0] if n is None else n
    if context.shape[0] != rows:
        raise ValueError(f"{owner}: {what} has {context.shape[0]} rows but the input has {rows} "
                         "(one context per sample)")
    return context


def _kind(a: Any) -> str:
    shape = getattr(a, "shape", None)
    return f"an array of shape {tuple(shape)}" if shape is not None else type(a).__name__


def check_rng(owner: str, rng: Any, what: str = "rng") -> None:
    """``rng`` is a ``numpy.random.Generator`` (the only source of randomness rawflow takes)."""
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"{owner}: {what} must be a numpy.random.Generator (e.g. np.random.default_rng(0)), "
                         f"got {type(rng).__name__}")


class MissingRng:
    """Stands in for ``rng=None`` in ``init``: layers that draw nothing never touch it; one that
    does gets a ``ValueError`` naming the layer whose ``init`` was called."""

    __slots__ = ("_owner",)

    def __init__(self, owner: str):
        self._owner = owner

    def __getattr__(self, name: str):
        raise ValueError(f"{self._owner}: init draws random parameters and needs a numpy.random.Generator, "
                         "got rng=None")


def check_count(owner: str, n: Any, what: str) -> int:
    """``n`` is a non-negative integer (not a bool); returned as ``int``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"{owner}: {what} must be a non-negative integer, got {n!r}")
    return int(n)


def check_positive_finite(owner: str, v: Any, what: str) -> float:
    if isinstance(v, bool) or not (isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v)
                                   and v > 0):
        raise ValueError(f"{owner}: {what} must be a positive finite number, got {v!r}")
    return float(v)


class Cache:
    """What a public ``forward``/``inverse`` (or a prior's ``log_prob``) returns as its cache.

    It holds the owner's own cache (``value``) with the point it describes: the owner object, the
    shapes at both ends and the dtype. The matching VJP checks them, so a cache from another layer
    or another batch, or ``None``, is a clear error rather than a wrong gradient. A cache cannot
    tell whether the *parameters* changed since it was made: pass the ones it was made with.
    Indexing, iteration and ``len`` read the owner's cache, for inspection.
    """

    __slots__ = ("owner", "x_shape", "z_shape", "dtype", "value")

    def __init__(self, owner: Any, x_shape: tuple, z_shape: tuple, dtype, value: Any):
        self.owner, self.value = owner, value
        self.x_shape, self.z_shape, self.dtype = tuple(x_shape), tuple(z_shape), dtype

    def __getitem__(self, index):
        return self.value[index]

    def __iter__(self):
        return iter(self.value)

    def __len__(self) -> int:
        return len(self.value)

    def __repr__(self) -> str:
        return f"Cache({getattr(self.owner, 'name', type(self.owner).__name__)}, x {self.x_shape}, z {self.z_shape})"


def open_cache(owner: Any, name: str, cache: Any, g: Any, end: str, made_by: str = "forward or inverse") -> Any:
    """The owner's own cache inside ``cache``, after checking it was made by ``owner`` (through
    ``made_by``) at a point whose ``end`` (``"x"`` or ``"z"``) has the shape and dtype of the
    cotangent ``g`` (not checked when ``g`` is ``None``)."""
    if not isinstance(cache, Cache):
        raise ValueError(f"{name}: cache must be the cache returned by this object's {made_by}, "
                         f"got {type(cache).__name__}")
    if cache.owner is not owner:
        other = getattr(cache.owner, "name", type(cache.owner).__name__)
        raise ValueError(f"{name}: cache was made by another object ({other} at {id(cache.owner):#x}), "
                         "not this one")
    if g is None:
        return cache.value
    shape = cache.x_shape if end == "x" else cache.z_shape
    if tuple(g.shape) != shape:
        raise ValueError(f"{name}: cache describes a point with {end} of shape {shape}, but the cotangent has "
                         f"shape {tuple(g.shape)} (a cache from another batch?)")
    if g.dtype != cache.dtype:
        raise ValueError(f"{name}: cache holds dtype {cache.dtype}, the cotangent has dtype {g.dtype}")
    return cache.value


def _xp(a: Any):
    if _is_cupy(a):
        import cupy

        return cupy
    return np
