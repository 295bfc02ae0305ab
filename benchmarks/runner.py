"""Run options, the per-run context, and the generic runner of operation suites.

:func:`run_operations` is what the coupling, ActNorm and 1×1-convolution suites share: for each
case and operation it draws the input sets, computes the float64 reference once, prepares every
implementation (rawflow's, the baselines, the user's), checks each against the reference, times
them interleaved (:func:`benchmarks.harness.time_interleaved`), measures one call's peak memory,
and fills the ratios and bandwidths.
"""

from __future__ import annotations

import math
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from . import harness
from .harness import Row, Timed
from .registry import Implementation, Operation, user_implementations


class Skip(Exception):
    """Raised by an implementation's preparation when it cannot run here (reported, not an error)."""


@dataclass
class Options:
    quick: bool = False
    threads: int = 2
    dtype: str = "float32"
    scale: str = "exp"
    repeats: int = 15
    min_time: float = 0.02  # seconds per repeat (calibration target)
    budget: float = 8.0  # seconds of repeats per implementation and case, at most
    torch: bool = True
    compile: bool = True
    compile_budget: float = 300.0  # seconds of torch.compile compilation per run, at most
    compile_all: bool = False  # torch.compile every operation, not only the composite (fwd+bwd) ones
    seed: int = 0
    sizes: list | None = None  # coupling cases override, [(rows, cols), ...]
    only: list | None = None  # keep implementations whose name contains one of these (and the baselines)
    verbose: bool = True

    @classmethod
    def quick_mode(cls, **kw) -> "Options":
        base = dict(quick=True, repeats=2, min_time=0.0, budget=1.0, compile=False)
        base.update(kw)
        return cls(**base)


@dataclass
class Context:
    opts: Options
    copy: harness.CopyBandwidth
    compile_spent: float = 0.0
    notes: dict = field(default_factory=dict)  # suite -> [str]

    def log(self, msg: str) -> None:
        if self.opts.verbose:
            print(msg, file=sys.stderr, flush=True)

    def note(self, suite: str, msg: str) -> None:
        self.notes.setdefault(suite, [])
        if msg not in self.notes[suite]:
            self.notes[suite].append(msg)

    def keep(self, name: str, baseline: str | None) -> bool:
        only = self.opts.only
        return not only or name == baseline or any(t in name for t in only)

    def compile_allowed(self, op=None) -> str | None:
        """Reason torch.compile rows (of ``op``) are skipped, or ``None`` when they may run."""
        if not self.opts.compile:
            return "torch.compile not requested (--quick, or --no-compile)"
        if op is not None and not op.parts and not self.opts.compile_all:
            return "torch.compile: fwd+bwd rows only (--compile-all for every op)"
        if self.compile_spent >= self.opts.compile_budget:
            return f"torch.compile budget ({self.opts.compile_budget:.0f} s) spent"
        return None


def numba_threads(k: int) -> Callable[[], None]:
    """An ``enter`` hook setting Numba's thread count (imports Numba when called)."""
    def enter():
        import numba

        numba.set_num_threads(k)

    return enter


def make_context(opts: Options) -> Context:
    floor = 8 * 2**20 if opts.quick else None
    copy = harness.CopyBandwidth(opts.threads, repeats=max(3, min(opts.repeats, 9)) if not opts.quick else 2,
                                 min_time=opts.min_time, floor=floor)
    return Context(opts, copy)


# ------------------------------------------------------------------------------------ arrays
def adapter(impl: Implementation):
    """``(convert, sync)`` for the implementation's array kind."""
    if impl.array == "numpy":
        return (lambda arrays: tuple(arrays)), None
    if impl.array == "torch":
        import torch

        device = impl.device or "cpu"

        def convert(arrays):
            return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays)

        sync = torch.cuda.synchronize if str(device).startswith("cuda") else None
        return convert, sync
    import cupy

    def convert(arrays):
        return tuple(cupy.asarray(a) for a in arrays)

    return convert, (lambda: cupy.cuda.get_current_stream().synchronize())


def as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def compose(op: Operation, impls: dict, name: str) -> Implementation | None:
    """``op.parts`` run back to back, from implementations of the parts named ``name``."""
    if not op.parts or any((p, name) not in impls for p, _ in op.parts):
        return None
    chosen = [(impls[(p, name)], idx) for p, idx in op.parts]
    first = chosen[0][0]

    def prepare(*args):
        n_arrays = len(args) - len(op.static_values)
        arrays, static = args[:n_arrays], args[n_arrays:]
        calls = [impl.make(tuple(arrays[i] for i in idx) + tuple(static)) for impl, idx in chosen]

        def run():
            out = ()
            for c in calls:
                out += as_tuple(c())
            return out

        return run

    return Implementation(op.name, name, prepare=prepare, array=first.array, device=first.device, kind=first.kind,
                          memory=first.memory, note=first.note, enter=first.enter)


def op_args(op: Operation, inputs: tuple) -> tuple:
    """The arrays ``op`` takes, out of what its ``make_inputs`` drew."""
    return tuple(inputs) if op.args is None else tuple(inputs[i] for i in op.args)


def _inputs_bytes(inputs) -> int:
    return sum(int(getattr(a, "nbytes", 0)) for a in inputs)


def input_sets(op: Operation, case, opts: Options, rng) -> list:
    """Enough independent input sets that cycling through them spans ``4×`` the last-level cache
    (counting the arrays the operation reads), at most 8."""
    first = op.make_inputs(case, np.dtype(opts.dtype), rng)
    if opts.quick:
        return [first]
    need = 4 * harness.last_level_cache_bytes() / max(_inputs_bytes(op_args(op, first)), 1)
    n = max(1, min(8, math.ceil(need)))
    return [first] + [op.make_inputs(case, np.dtype(opts.dtype), rng) for _ in range(n - 1)]


# ------------------------------------------------------------------------------------ runner
def run_operations(ctx: Context, suite: str, cases: Sequence[tuple[str, object]], ops: Sequence[Operation],
                   builtin: Callable[[Operation], list[Implementation]], baseline: str) -> list[Row]:
    """The rows of an operation suite (see the module doc). ``builtin(op)`` lists rawflow's and the
    baselines' implementations; user registrations for each op are appended."""
    opts = ctx.opts
    rows: list[Row] = []
    for label, case in cases:
        for op in ops:
            op.static_values = op.static(opts)
            impls = list(builtin(op)) + user_implementations(op.name)
            if op.parts:  # a user's parts, run back to back, stand for a composite they did not register
                users = {(u.op, u.name): u for u in user_implementations()}
                have = {i.name for i in impls}
                for name in dict.fromkeys(n for (o, n) in users if o == op.parts[0][0]):
                    c = None if name in have else compose(op, users, name)
                    if c is not None:
                        impls.append(c)
            impls = [i for i in impls if ctx.keep(i.name, baseline)]
            rows += _run_case(ctx, suite, label, case, op, impls)
    harness.fill_derived(rows, baseline, ctx.copy)
    return rows


def _run_case(ctx: Context, suite: str, label: str, case, op: Operation, impls: list[Implementation]) -> list[Row]:
    opts = ctx.opts
    rng = np.random.default_rng(opts.seed)
    sets = input_sets(op, case, opts, rng)
    ref64 = op.reference(tuple(np.asarray(a, dtype=np.float64) for a in op_args(op, sets[0])), opts)
    nbytes = op.nbytes(op_args(op, sets[0]))
    items = op.items(op_args(op, sets[0]))
    rows, timed = [], []
    ctx.log(f"[{suite}] {label} {op.name}: {len(impls)} implementations, {len(sets)} input set(s)")
    for impl in impls:
        row = Row(suite, label, op.name, impl.name, kind=impl.kind, bytes=nbytes, items=items, note=impl.note,
                  tol=op.tol(opts.dtype))
        reason = impl.available() if impl.available is not None else None
        if reason:
            row.status, row.note = "skipped", reason
            rows.append(row)
            continue
        try:
            convert, sync = adapter(impl)
            if impl.enter is not None:
                impl.enter()
            t0 = time.perf_counter()
            calls = [impl.make(convert(op_args(op, s)) + tuple(op.static_values)) for s in sets]
            prep = time.perf_counter() - t0
            t = Timed(impl.name, calls, sync, impl.enter)
            out = as_tuple(t.run(0))
            if impl.check:
                if len(out) != len(ref64):
                    raise ValueError(f"returned {len(out)} outputs, {op.name} has {len(ref64)} ({', '.join(op.outputs)})")
                row.err = max(harness.rel_error(harness.to_numpy64(o), e, s) for o, (e, s) in zip(out, ref64))
                row.ok = bool(row.err <= row.tol)
            del out
            if prep > 1.0:
                row.extra["prepare_s"] = prep
        except Skip as e:
            row.status, row.note = "skipped", str(e)
            rows.append(row)
            continue
        except Exception as e:  # noqa: BLE001  (a broken implementation is reported, not fatal)
            row.status, row.note = "error", f"{type(e).__name__}: {e}"
            ctx.log("".join(traceback.format_exception(e)[-3:]))
            rows.append(row)
            continue
        rows.append(row)
        timed.append((row, impl, t))
    try:
        harness.time_interleaved([t for _, _, t in timed], repeats=opts.repeats, min_time=opts.min_time,
                                 budget=opts.budget)
    except Exception as e:  # noqa: BLE001
        for row, _, t in timed:
            if not t.timing.times:
                row.status, row.note = "error", f"while timing: {type(e).__name__}: {e}"
        ctx.log(traceback.format_exc())
    for row, impl, t in timed:
        if row.status != "ok":
            continue
        tm = t.timing
        row.median_s, row.min_s, row.max_s = tm.median, tm.min, tm.max
        row.repeats, row.number, row.first_call_s = len(tm.times), tm.number, tm.first_call
        try:
            if t.enter is not None:
                t.enter()
            row.peak_bytes, row.mem_method = harness.peak_memory(lambda: t.run(0), impl.memory)
        except Exception as e:  # noqa: BLE001
            row.extra["memory_error"] = f"{type(e).__name__}: {e}"
    return rows


# ------------------------------------------------------------------------------------ whole models
@dataclass
class Candidate:
    """One row of a model-level suite: ``make()`` (untimed; may raise :class:`Skip`) returns the
    zero-argument callable that is timed; ``check(output)`` returns its error against the float64
    reference (or ``None``)."""

    name: str
    make: Callable
    check: Callable | None = None
    kind: str = "rawflow"
    memory: str = "tracemalloc"
    note: str = ""
    available: Callable | None = None
    enter: Callable | None = None
    extra: dict = field(default_factory=dict)


def run_timed(ctx: Context, suite: str, case: str, op: str, candidates: Sequence[Candidate], baseline: str | None,
              *, items: int | None = None, tol: float | None = None, nbytes: int | None = None) -> list[Row]:
    """Prepare, check, time (interleaved) and measure the candidates of one case."""
    opts = ctx.opts
    rows, timed = [], []
    candidates = [c for c in candidates if ctx.keep(c.name, baseline)]
    ctx.log(f"[{suite}] {case} {op}: {len(candidates)} implementations")
    for c in candidates:
        row = Row(suite, case, op, c.name, kind=c.kind, items=items, note=c.note, tol=tol, bytes=nbytes,
                  extra=dict(c.extra))
        reason = c.available() if c.available is not None else None
        if reason:
            row.status, row.note = "skipped", reason
            rows.append(row)
            continue
        try:
            if c.enter is not None:
                c.enter()
            t0 = time.perf_counter()
            fn = c.make()
            prep = time.perf_counter() - t0
            if prep > 1.0:
                row.extra["prepare_s"] = prep
            t = Timed(c.name, [fn], enter=c.enter)
            out = t.run(0)
            if c.check is not None:
                row.err = c.check(out)
                if row.err is not None and tol is not None:
                    row.ok = bool(row.err <= tol)
            del out
        except Skip as e:
            row.status, row.note = "skipped", str(e)
            rows.append(row)
            continue
        except Exception as e:  # noqa: BLE001
            row.status, row.note = "error", f"{type(e).__name__}: {e}"
            ctx.log(traceback.format_exc())
            rows.append(row)
            continue
        rows.append(row)
        timed.append((row, c, t))
    harness.time_interleaved([t for _, _, t in timed], repeats=opts.repeats, min_time=opts.min_time,
                             budget=opts.budget)
    for row, c, t in timed:
        tm = t.timing
        row.median_s, row.min_s, row.max_s = tm.median, tm.min, tm.max
        row.repeats, row.number, row.first_call_s = len(tm.times), tm.number, tm.first_call
        try:
            if c.enter is not None:
                c.enter()
            row.peak_bytes, row.mem_method = harness.peak_memory(lambda: t.run(0), c.memory)
        except Exception as e:  # noqa: BLE001
            row.extra["memory_error"] = f"{type(e).__name__}: {e}"
    harness.fill_derived(rows, baseline, ctx.copy if nbytes else None)
    return rows
