"""The measuring harness: timing, copy bandwidth, peak memory, machine facts and the table.

Timing (:func:`time_interleaved`). Every implementation of a case is prepared first, then timed
in rounds: round ``r`` runs one *repeat* of each implementation in turn, so a burst of load on
a shared machine hits all of them rather than whichever happened to be running. A repeat is
``number`` back-to-back calls (calibrated so a repeat lasts at least ``min_time``; timer
resolution and call overhead then vanish) cycling through several independent input sets, so
the operands of consecutive calls are not the previous call's cache-resident arrays. The
figure per repeat is its wall time divided by ``number``; a table reports the median of the
repeats and their min–max spread. The first call (JIT compilation, torch.compile, cache loads)
is timed on its own and reported separately.

Bandwidth: an operation declares the *compulsory* traffic of its fastest possible
implementation (each input read once, each output written once). ``GB/s = bytes / median``:
for an implementation that moves more (temporaries, a second pass) it is the effective rate
at which it does the job, not what its memory bus carried. It is compared with the machine's
copy bandwidth measured in the same run (:class:`CopyBandwidth`): a copy moving the same
number of bytes (half read, half written), but never fewer than ``4×`` the last-level cache,
so the copy's figure is a main-memory figure even when a small operation's operands sit in
cache (which then shows as more than 100 % of copy).

Peak memory of one call (:func:`peak_memory`): ``tracemalloc`` for NumPy (NumPy reports its
buffers to it; exact, covers temporaries and outputs), PyTorch's profiler for torch CPU tensors
(its allocation events, summed in time order: the same quantity), else the rise of the resident set's
high-water mark (``VmHWM`` after writing 5 to ``/proc/self/clear_refs``) for anything else
(PyTorch): page granular, and a lower bound — memory the allocator hands out again from pages
that are already resident does not raise the mark. (Pinning glibc's mmap threshold would make
it exact but turns every large allocation into fresh page faults: it slowed the timed NumPy and
PyTorch rows up to 2×, so the harness leaves the allocator alone.)
"""

from __future__ import annotations

import datetime as _dt
import gc
import importlib
import importlib.util
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------ machine
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def last_level_cache_bytes() -> int:
    """Size of the largest CPU cache (Linux sysfs), or 32 MiB when it cannot be read."""
    best = 0
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for idx in base.glob("index*"):
        try:
            text = (idx / "size").read_text().strip()
        except OSError:
            continue
        mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text[:-1] if text[-1:] in "KMG" else text
        try:
            best = max(best, int(digits) * mult)
        except ValueError:
            continue
    return best or 32 * 2**20


def _mem_total() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def package_versions(names: Sequence[str] = ("numpy", "scipy", "numba", "torch", "cupy", "rawflow")) -> dict:
    """``{name: version or None}``; imports only what is already imported or cheap to find."""
    from importlib import metadata

    out = {}
    for name in names:
        mod = sys.modules.get(name)
        version = getattr(mod, "__version__", None) if mod is not None else None
        if version is None:
            dist = {"cupy": ("cupy", "cupy-cuda12x", "cupy-cuda13x", "cupy-cuda11x")}.get(name, (name,))
            for d in dist:
                try:
                    version = metadata.version(d)
                    break
                except metadata.PackageNotFoundError:
                    continue
        out[name] = version
    return out


def git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        commit = r.stdout.strip() or None
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty and commit else "") if commit else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict:
    """Date, machine and package versions for a results file."""
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "last_level_cache_bytes": last_level_cache_bytes(),
        "memory_bytes": _mem_total(),
        "python": sys.version.split()[0],
        "versions": package_versions(),
        "git_commit": git_commit(),
    }
    try:
        import numba

        info["numba_threading_layer"] = numba.config.THREADING_LAYER
    except ImportError:
        pass
    return info


# ------------------------------------------------------------------------------------ timing
@dataclass
class Timing:
    times: list = field(default_factory=list)  # seconds per call, one per repeat
    number: int = 1  # calls per repeat
    first_call: float = float("nan")  # seconds, the very first call (compilation included)

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def min(self) -> float:
        return min(self.times) if self.times else float("nan")

    @property
    def max(self) -> float:
        return max(self.times) if self.times else float("nan")


@dataclass
class Timed:
    """One thing to time: callables (one per input set), an optional ``enter`` run before each
    repeat (untimed; e.g. setting a thread count) and a ``sync`` after every call (devices)."""

    name: str
    calls: list
    sync: Callable[[], None] | None = None
    enter: Callable[[], None] | None = None
    timing: Timing = field(default_factory=Timing)

    def run(self, k: int):
        out = self.calls[k % len(self.calls)]()
        if self.sync is not None:
            self.sync()
        return out


def _repeat(t: Timed, number: int, start: int) -> float:
    # Untimed: the item's own setting, then one call, so that the repeat starts from this
    # implementation's steady state rather than from whatever ran before it (another thread
    # pool waking up, a thread count being changed, a different working set).
    if t.enter is not None:
        t.enter()
    t.run(start + number)
    t0 = time.perf_counter()
    for k in range(number):
        t.run(start + k)
    return (time.perf_counter() - t0) / number


def time_interleaved(items: Sequence[Timed], *, repeats: int, min_time: float, budget: float,
                     warmup: int = 1) -> None:
    """Fill each item's :class:`Timing` (see the module doc): first call, warm-up, calibration,
    then ``repeats`` interleaved rounds; an item whose repeats would exceed ``budget`` seconds in
    total gets fewer (at least 3, or ``repeats`` if that is smaller)."""
    plan = {}
    for t in items:
        if t.enter is not None:
            t.enter()
        t0 = time.perf_counter()
        t.run(0)
        t.timing.first_call = time.perf_counter() - t0
        for k in range(warmup):
            t.run(k + 1)
        # calibration: grow the call count until one repeat takes min_time
        number, single = 1, _repeat(t, 1, 0)
        while single * number < min_time and number < 10**6:
            number = max(number * 2, int(math.ceil(min_time / max(single, 1e-9))))
            single = _repeat(t, number, 0)
        t.timing.number = number
        per_repeat = max(single * number, 1e-9)
        plan[t.name] = max(min(repeats, 3), min(repeats, int(budget / per_repeat)))
    for r in range(max(plan.values(), default=0)):
        for t in items:
            if r < plan[t.name]:
                t.timing.times.append(_repeat(t, t.timing.number, r * t.timing.number))


# ------------------------------------------------------------------------------------ bandwidth
_PCOPY = None


def _parallel_copy():
    """A ``prange`` row copy (Numba), compiled once; ``None`` without Numba."""
    global _PCOPY
    if _PCOPY is None:
        try:
            from numba import njit, prange
        except ImportError:
            _PCOPY = False
            return None

        @njit(parallel=True, cache=False)
        def pcopy(dst, src):
            n, m = src.shape
            for i in prange(n):
                d, s = dst[i], src[i]
                for j in range(m):
                    d[j] = s[j]

        _PCOPY = pcopy
    return _PCOPY or None


class CopyBandwidth:
    """The machine's copy bandwidth, measured lazily per byte count and remembered for the run.

    ``measure(nbytes)`` copies ``max(nbytes, floor)`` bytes (half read, half written) with
    ``np.copyto`` (one thread) and with a Numba ``prange`` loop on ``threads`` threads, and
    returns the better median in GB/s (10⁹ bytes/s). ``floor`` defaults to ``4×`` the
    last-level cache, so the figure is a main-memory one.
    """

    def __init__(self, threads: int, repeats: int, min_time: float, floor: int | None = None):
        self.threads, self.repeats, self.min_time = threads, repeats, min_time
        self.floor = 4 * last_level_cache_bytes() if floor is None else int(floor)
        self.results: dict[int, dict] = {}

    def measure(self, nbytes: int) -> dict:
        size = max(int(nbytes), self.floor)
        key = 1 << max(0, (size - 1).bit_length())  # bucket to the next power of two: few measurements
        if key in self.results:
            return self.results[key]
        n = key // 8  # float32 elements per array: n·4 read + n·4 written = key bytes
        rows = 256
        src = np.ones((rows, max(n // rows, 1)), np.float32)
        dst = np.empty_like(src)
        moved = 2 * src.nbytes
        items = [Timed("np.copyto (1 thread)", [lambda: np.copyto(dst, src)])]
        pcopy = _parallel_copy()
        if pcopy is not None:
            import numba

            threads = min(self.threads, numba.config.NUMBA_NUM_THREADS)

            items.append(Timed(f"prange copy ({threads} threads)", [lambda: pcopy(dst, src)],
                               enter=lambda: numba.set_num_threads(threads)))
        time_interleaved(items, repeats=self.repeats, min_time=self.min_time, budget=2.0)
        out = {"bytes": moved, "by_method": {t.name: moved / t.timing.median / 1e9 for t in items}}
        out["gbps"] = max(out["by_method"].values())
        out["method"] = max(out["by_method"], key=out["by_method"].get)
        self.results[key] = out
        return out


# ------------------------------------------------------------------------------------ memory
def _torch_peak(fn) -> int:
    """Peak bytes held by PyTorch's CPU allocator during ``fn()``: the running sum of the
    profiler's allocation events (``profile_memory=True``), in time order."""
    from torch.profiler import ProfilerActivity, profile

    devnull = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(2)
    try:
        os.dup2(devnull, 2)  # the profiler's C++ side chats on stderr
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = fn()
            del out
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    cur = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


def _status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_supported() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kib("VmHWM") is not None
    except OSError:
        return False


def peak_memory(fn: Callable[[], object], method: str) -> tuple[int | None, str]:
    """``(bytes, method)``: peak memory of one call of ``fn`` above what was alive before it.

    ``method``: ``"tracemalloc"`` (NumPy buffers, exact), ``"torch"`` (PyTorch's CPU allocator,
    from its profiler) or ``"rss"`` (high-water mark of the resident set, page granular, a lower
    bound; ``None`` where /proc does not allow it).
    """
    gc.collect()
    if method == "tracemalloc":
        started = tracemalloc.is_tracing()
        if not started:
            tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            base, _ = tracemalloc.get_traced_memory()
            out = fn()
            _, peak = tracemalloc.get_traced_memory()
            del out
        finally:
            if not started:
                tracemalloc.stop()
        return peak - base, "tracemalloc"
    if method == "torch":
        try:
            return _torch_peak(fn), "torch"
        except Exception:  # noqa: BLE001  (profiler unavailable: fall back to the resident set)
            method = "rss"
    if not rss_supported():
        return None, "rss"
    base = _status_kib("VmRSS")
    out = fn()
    hwm = _status_kib("VmHWM")
    del out
    if base is None or hwm is None:
        return None, "rss"
    return max(hwm - base, 0) * 1024, "rss"


# ------------------------------------------------------------------------------------ results
@dataclass
class Row:
    """One line of a suite's table (everything a results file records about one measurement)."""

    suite: str
    case: str
    op: str
    impl: str
    kind: str = "rawflow"  # rawflow | baseline | user
    baseline: str | None = None  # name of the row this one's ratio is against
    median_s: float | None = None
    min_s: float | None = None
    max_s: float | None = None
    repeats: int = 0
    number: int = 0
    first_call_s: float | None = None
    ratio: float | None = None  # baseline median / this median: > 1 is faster than the baseline
    bytes: int | None = None
    gbps: float | None = None
    copy_gbps: float | None = None
    pct_copy: float | None = None
    peak_bytes: int | None = None
    mem_method: str | None = None
    err: float | None = None
    tol: float | None = None
    ok: bool | None = None
    items: int | None = None  # samples processed per call (throughput = items / median)
    extra: dict = field(default_factory=dict)
    note: str = ""
    status: str = "ok"  # ok | skipped | error

    @property
    def throughput(self) -> float | None:
        return self.items / self.median_s if self.items and self.median_s else None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["throughput_per_s"] = self.throughput
        return d


def fill_derived(rows: Sequence[Row], baseline: str | None, copy: CopyBandwidth | None) -> None:
    """Ratios against the row named ``baseline`` within each (case, op), and bandwidths."""
    base = {(r.case, r.op): r for r in rows if r.impl == baseline and r.status == "ok"}
    for r in rows:
        if r.status != "ok" or r.median_s is None:
            continue
        b = base.get((r.case, r.op))
        if b is not None and b.median_s:
            r.baseline, r.ratio = b.impl, b.median_s / r.median_s
        if r.bytes and copy is not None:
            c = copy.measure(r.bytes)
            r.gbps = r.bytes / r.median_s / 1e9
            r.copy_gbps = c["gbps"]
            r.pct_copy = 100.0 * r.gbps / c["gbps"]


def _fmt_time(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "—"
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if s >= 0.9995 * scale:  # 999.7 µs prints as "1 ms", not "1e+03 µs"
            return f"{s / scale:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


def _fmt(v, spec: str, suffix: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return format(v, spec) + suffix


def _mib(b) -> str:
    return "" if b is None else f"{b / 2**20:.3g}"


COLUMNS = ("case", "op", "impl", "median", "min–max", "×base", "GB/s", "%copy", "peak MiB", "items/s", "err vs f64", "note")


def row_cells(r: Row) -> list[str]:
    if r.status != "ok":
        return [r.case, r.op, r.impl, "", "", "", "", "", "", "", "", f"{r.status}: {r.note}"]
    spread = f"{_fmt_time(r.min_s)}–{_fmt_time(r.max_s)}" if r.repeats > 1 else ""
    mem = _mib(r.peak_bytes) + (" (rss)" if r.mem_method == "rss" else "") if r.peak_bytes is not None else ""
    err = ""
    if r.err is not None:
        err = f"{r.err:.1e}" + ("" if r.ok in (None, True) else " FAIL")
    tp = r.throughput
    note = r.note
    if r.first_call_s is not None and r.median_s and r.first_call_s > max(1.0, 20 * r.median_s):
        note = (note + "; " if note else "") + f"first call {r.first_call_s:.1f} s"
    return [
        r.case, r.op, r.impl, _fmt_time(r.median_s), spread,
        _fmt(r.ratio, ".2f", "×"), _fmt(r.gbps, ".3g"), _fmt(r.pct_copy, ".0f", "%"), mem,
        "" if tp is None else f"{tp:.3g}", err, note,
    ]


def _drop_empty(header: Sequence[str], cells: list[list[str]]):
    keep = [i for i, h in enumerate(header) if h in ("case", "impl", "median") or any(c[i] for c in cells)]
    return [header[i] for i in keep], [[c[i] for i in keep] for c in cells]


def format_table(rows: Sequence[Row]) -> str:
    """A fixed-width text table (columns with nothing in them are left out)."""
    header, cells = _drop_empty(COLUMNS, [row_cells(r) for r in rows])
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    prev = None
    for c in cells:
        shown = list(c)
        if prev is not None and c[0] == prev[0]:
            shown[0] = ""  # repeat the case only when it changes
        lines.append("  ".join(v.ljust(w) for v, w in zip(shown, widths)).rstrip())
        prev = c
    return "\n".join(lines)


def markdown_table(rows: Sequence[Row]) -> str:
    header, cells = _drop_empty(COLUMNS, [row_cells(r) for r in rows])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    prev = None
    for c in cells:
        shown = list(c)
        if prev is not None and c[0] == prev[0]:
            shown[0] = ""  # the case once per block
        lines.append("| " + " | ".join(v.replace("|", "\\|") for v in shown) + " |")
        prev = c
    return "\n".join(lines)


def row_from_dict(d: dict) -> Row:
    """A :class:`Row` back from its ``as_dict`` (results files)."""
    names = {f.name for f in Row.__dataclass_fields__.values()}
    return Row(**{k: v for k, v in d.items() if k in names})


# ------------------------------------------------------------------------------------ errors
def rel_error(actual, expected, scale=None) -> float:
    """``max|actual − expected| / max(scale)`` (normwise; ``scale`` defaults to ``|expected|``).

    ``scale`` is the magnitude of the terms that make up each expected value (e.g. ``Σ|log s|``
    for a log-det), so an error is judged against what rounding can do to that computation.
    """
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        raise ValueError(f"output has shape {a.shape}, the reference {e.shape}")
    s = np.abs(e) if scale is None else np.asarray(scale, dtype=np.float64)
    denom = float(np.max(s)) if s.size else 0.0
    diff = float(np.max(np.abs(a - e))) if a.size else 0.0
    if not np.all(np.isfinite(a)):
        return float("inf")
    return diff / denom if denom > 0 else diff


def to_numpy64(a) -> np.ndarray:
    """NumPy float64 copy of a NumPy / CuPy / torch / numba-device array or a Python number."""
    if hasattr(a, "detach"):  # torch
        a = a.detach().cpu().numpy()
    elif hasattr(a, "get") and type(a).__module__.split(".")[0] == "cupy":
        a = a.get()
    elif hasattr(a, "copy_to_host"):
        a = a.copy_to_host()
    return np.asarray(a, dtype=np.float64)


def import_object(spec: str):
    """``"package.module:attr"`` or ``"path/to/file.py:attr"`` → the object."""
    if ":" not in spec:
        raise ValueError(f"expected MODULE:FUNCTION or FILE.py:FUNCTION, got {spec!r}")
    mod_name, attr = spec.rsplit(":", 1)
    module = load_module(mod_name)
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def load_module(name: str):
    """Import a module by dotted name, or execute a ``.py`` file as a module."""
    if name.endswith(".py") or os.sep in name:
        path = Path(name).resolve()
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {name}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(name)
