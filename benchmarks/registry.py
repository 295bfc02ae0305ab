"""Operations a suite times, their implementations, and the public :func:`register`.

An :class:`Operation` fixes a calling convention (array arguments, then fixed non-array
arguments such as the scale map), how to draw inputs for a case, the float64 oracle (rawflow's
reference code run on the inputs cast to float64) and the compulsory bytes one call moves.
An :class:`Implementation` is a callable in that convention, on NumPy, PyTorch or CuPy arrays.

Users add theirs with :func:`register` (or ``python -m benchmarks --impl OP=MODULE:FUNCTION``);
a suite then times them next to rawflow's own and checks each against the float64 reference.
Registrations live in one store per process, shared by every import name of this package
(``benchmarks`` from a checkout and ``rawflow.benchmarks`` when installed), so a plugin may
``from rawflow.benchmarks import register`` while the command runs as ``python -m benchmarks``.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Callable

ARRAYS = ("numpy", "torch", "cupy")


@dataclass
class Operation:
    """A timed operation. ``signature`` is what implementations are called with."""

    name: str
    suite: str
    signature: str
    make_inputs: Callable  # (case, dtype, rng) -> tuple of arrays
    reference: Callable  # (inputs as float64, opts) -> list of (expected output, scale of its terms)
    nbytes: Callable  # (inputs) -> compulsory bytes moved by one call
    static: Callable = lambda opts: ()  # trailing non-array arguments, e.g. (scale,)
    items: Callable = lambda inputs: int(inputs[0].shape[0])  # samples per call
    outputs: tuple = ()
    args: tuple | None = None  # which of make_inputs' arrays the operation takes (default: all)
    parts: tuple = ()  # composite operations: ((part op, indices of this op's arrays it takes), ...)
    doc: str = ""
    static_values: tuple = ()  # set by the runner from the run's options

    def tol(self, dtype) -> float:
        """Pass mark of the normwise error (see :func:`benchmarks.harness.rel_error`)."""
        import numpy as np

        return 1e-5 if np.dtype(dtype) == np.float32 else 1e-12


@dataclass
class Implementation:
    """An implementation of ``op`` named ``name``.

    Either ``fn`` (called as ``fn(*arrays, *static)`` on every timed call) or ``prepare``
    (called once per input set, untimed, as ``prepare(*arrays, *static)``; returns the
    zero-argument callable that is timed: the place to allocate outputs, build a graph, compile
    or precompute a cache). ``array`` says which arrays it takes: ``"numpy"``, ``"torch"``
    (``device`` ``"cpu"`` by default, or ``"cuda"``) or ``"cupy"``; inputs are converted before
    timing and outputs converted back for the check. It returns one array or a tuple, in the
    order of the operation's outputs. ``memory``: ``"tracemalloc"`` (default for NumPy),
    ``"torch"`` (PyTorch's profiler; default for CPU tensors) or ``"rss"`` (default otherwise). ``available`` returns a reason string when the
    implementation cannot run here (it is then listed as skipped), else ``None``.
    """

    op: str
    name: str
    fn: Callable | None = None
    prepare: Callable | None = None
    array: str = "numpy"
    device: str | None = None
    kind: str = "user"
    memory: str | None = None
    available: Callable | None = None
    note: str = ""
    check: bool = True
    enter: Callable | None = None  # run before each repeat, untimed (e.g. set a thread count)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if (self.fn is None) == (self.prepare is None):
            raise ValueError(f"implementation {self.name!r} of {self.op}: give exactly one of fn and prepare")
        if self.array not in ARRAYS:
            raise ValueError(f"implementation {self.name!r}: array must be one of {ARRAYS}, got {self.array!r}")
        if self.memory is None:
            cpu_torch = self.array == "torch" and str(self.device or "cpu").startswith("cpu")
            self.memory = "tracemalloc" if self.array == "numpy" else "torch" if cpu_torch else "rss"

    def make(self, args: tuple) -> Callable:
        if self.prepare is not None:
            return self.prepare(*args)
        fn = self.fn
        return lambda: fn(*args)


def _store() -> types.SimpleNamespace:
    # One store per process whatever name this module was imported under (see the module doc).
    key = "_rawflow_benchmarks_store"
    mod = sys.modules.get(key)
    if mod is None:
        mod = types.ModuleType(key)
        mod.operations, mod.user = {}, {}
        sys.modules[key] = mod
    return mod


def add_operation(op: Operation) -> Operation:
    _store().operations[op.name] = op
    return op


def operations() -> dict:
    """``{name: Operation}`` of every operation the loaded suites define."""
    return dict(_store().operations)


def register(op: str, name: str, fn: Callable | None = None, *, prepare: Callable | None = None,
             array: str = "numpy", device: str | None = None, note: str = "", memory: str | None = None):
    """Register ``fn`` (or ``prepare``) as implementation ``name`` of operation ``op``.

    Usable directly, ``register("coupling.forward", "mine", my_forward)``, or as a decorator,
    ``@register("coupling.forward", "mine", array="torch")``. Registering the same (op, name)
    again replaces it. See ``benchmarks/README.md`` for the operations and their conventions.
    Returns ``fn`` (or ``prepare``), so the decorator leaves the function usable.
    """
    if fn is None and prepare is None:
        def deco(f):
            register(op, name, f, array=array, device=device, note=note, memory=memory)
            return f

        return deco
    impl = Implementation(op, name, fn=fn, prepare=prepare, array=array, device=device, kind="user",
                          note=note, memory=memory)
    _store().user[(op, name)] = impl
    return fn if fn is not None else prepare


def unregister(op: str | None = None, name: str | None = None) -> None:
    """Forget user implementations (all, those of ``op``, or one)."""
    store = _store().user
    for key in list(store):
        if (op is None or key[0] == op) and (name is None or key[1] == name):
            del store[key]


def user_implementations(op: str | None = None) -> list[Implementation]:
    return [impl for (o, _), impl in _store().user.items() if op is None or o == op]


def parse_impl_spec(spec: str) -> tuple[str, str, str, str]:
    """``"OP=MODULE:FUNCTION[@ARRAY][#NAME]"`` → ``(op, name, target, array)``; the name defaults
    to ``FUNCTION`` (give the forward and backward of one kernel the same ``#NAME`` and the suite
    also times them back to back as the composite ``fwd+bwd`` operation)."""
    form = "OP=MODULE:FUNCTION[@numpy|torch|cupy][#NAME]"
    if "=" not in spec:
        raise ValueError(f"--impl wants {form}, got {spec!r}")
    op, target = spec.split("=", 1)
    name = None
    if "#" in target:
        target, name = target.rsplit("#", 1)
    array = "numpy"
    if "@" in target:
        target, array = target.rsplit("@", 1)
    if ":" not in target:
        raise ValueError(f"--impl wants {form}, got {spec!r}")
    if array not in ARRAYS:
        raise ValueError(f"--impl: array must be one of {ARRAYS}, got {array!r} in {spec!r}")
    return op.strip(), (name or target.rsplit(":", 1)[1]).strip(), target, array
