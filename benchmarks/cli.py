"""The command line: ``python -m benchmarks [SUITE ...] [--quick] [--json FILE] ...`` / ``rawflow bench``."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import sys
import time
import traceback

from . import DEFAULT_SUITES, SUITES, harness, runtime
from .registry import operations, parse_impl_spec, register, user_implementations
from .runner import Options, Skip, make_context


def suite_module(name: str):
    return importlib.import_module(f".suite_{name}", __package__)


def _size(text: str) -> tuple[int, int]:
    try:
        r, c = text.lower().replace("×", "x").split("x")
        return int(r), int(c)
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes are ROWSxCOLS, e.g. 256x12288; got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="rawflow against NumPy, Numba and PyTorch baselines, measured in one run: median time and "
                    "spread, ratio to the named baseline, bandwidth against the machine's copy bandwidth, peak memory, "
                    "and the error of every implementation against rawflow's float64 reference.",
    )
    p.add_argument("suites", nargs="*", metavar="SUITE",
                   help=f"suites to run (default: {', '.join(DEFAULT_SUITES)}; also: "
                        f"{', '.join(s for s in SUITES if s not in DEFAULT_SUITES)})")
    p.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats, no torch.compile (a smoke test)")
    p.add_argument("--json", metavar="FILE", help="write every measurement, the machine and package versions as JSON")
    p.add_argument("--markdown", metavar="FILE", help="write the tables as Markdown")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for the multi-threaded rows: Numba, PyTorch, NumPy's BLAS (default: min(2, CPUs))")
    p.add_argument("--blas-threads", type=int, default=None,
                   help="threads for NumPy's BLAS (default: --threads; SciPy's own BLAS copy always gets 1)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--scale", choices=("exp", "sigmoid", "bounded"), default="exp", help="coupling scale map")
    p.add_argument("--sizes", type=_size, nargs="+", metavar="RxC", help="coupling sizes (rows × columns)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per implementation (default 15; quick 2)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of repeats per implementation and case, at most (default 8)")
    p.add_argument("--no-torch", action="store_true", help="leave out the PyTorch rows")
    p.add_argument("--compile", dest="compile", action="store_true", default=None,
                   help="time torch.compile (default on, off with --quick)")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--compile-all", action="store_true",
                   help="torch.compile every operation (default: only the fwd+bwd rows and the Glow step)")
    p.add_argument("--compile-budget", type=float, default=300.0,
                   help="seconds of torch.compile compilation per run; later compile rows are skipped (default 300)")
    p.add_argument("--impl", action="append", default=[], metavar="OP=MODULE:FUNCTION[@ARRAY]",
                   help="time your function as an implementation of OP (ARRAY: numpy, torch or cupy); repeatable")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE|FILE.py",
                   help="import a module that calls benchmarks.register(...); repeatable")
    p.add_argument("--only", nargs="+", metavar="TEXT",
                   help="keep only implementations whose name contains one of these (the baseline always runs)")
    p.add_argument("--list", action="store_true", help="list suites, operations and registered implementations")
    p.add_argument("--render", metavar="FILE.json",
                   help="print (and with --markdown write) the tables of an earlier results file; runs nothing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    return p


def options_from(args) -> Options:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = args.threads if args.threads is not None else min(2, cpus)
    kw = dict(threads=max(1, threads), dtype=args.dtype, scale=args.scale, torch=not args.no_torch,
              compile_budget=args.compile_budget, compile_all=args.compile_all, seed=args.seed, sizes=args.sizes,
              only=args.only, verbose=not args.quiet)
    if args.compile is not None:
        kw["compile"] = args.compile
    opts = Options.quick_mode(**kw) if args.quick else Options(**kw)
    if args.repeats is not None:
        opts.repeats = max(1, args.repeats)
    if args.budget is not None:
        opts.budget = args.budget
    return opts


def _load_user(args) -> None:
    for mod in args.plugin:
        harness.load_module(mod)
    known = operations()
    for spec in args.impl:
        op, name, target, array = parse_impl_spec(spec)
        if op not in known:
            raise SystemExit(f"--impl: unknown operation {op!r}; known: {', '.join(sorted(known))}")
        register(op, name, harness.import_object(target), array=array)


def list_all() -> str:
    lines = ["suites: " + ", ".join(SUITES), "", "operations (register implementations of these):"]
    for name, op in sorted(operations().items()):
        lines.append(f"  {name:22s} {op.signature}")
    users = user_implementations()
    if users:
        lines += ["", "registered implementations:"]
        lines += [f"  {u.op:22s} {u.name} ({u.array})" for u in users]
    return "\n".join(lines)


def _loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _header(name: str, ctx, rows, entry=None) -> str:
    o = ctx.opts
    bits = [f"== {name}", f"{o.threads} thread(s) for the multi-threaded rows"]
    reps = sorted({r.repeats for r in rows if r.repeats})
    if reps:
        bits.append(f"repeats {reps[0]}–{reps[-1]}" if len(reps) > 1 else f"{reps[0]} repeats")
    if entry and entry.get("loadavg_start") and entry.get("loadavg_end"):
        bits.append(f"load average {entry['loadavg_start'][0]:.1f} → {entry['loadavg_end'][0]:.1f} "
                    f"on {os.cpu_count()} CPUs")
    return ", ".join(bits) + (" [QUICK: sizes too small to mean anything]" if o.quick else "")


def _copy_line(copies) -> str:
    if not copies:
        return ""
    parts = []
    for c in sorted(copies, key=lambda c: c["bytes"]):
        by = ", ".join(f"{m} {v:.3g}" for m, v in c["by_method"].items())
        parts.append(f"{c['bytes'] / 2**20:.0f} MiB moved: {by} GB/s")
    return "copy bandwidth (same run; the better method is the %copy reference): " + "; ".join(parts)


def main(argv=None) -> int:
    env = runtime.prepare_environment()
    args = build_parser().parse_args(argv)
    for name in SUITES:
        suite_module(name)  # defines the operations (cheap: no rawflow/torch/numba imports yet)
    _load_user(args)
    if args.list:
        print(list_all())
        return 0
    if args.render:
        with open(args.render) as f:
            results = json.load(f)
        text = markdown_report(results)
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(text)
        print(text)
        return 0
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        print(f"unknown suite(s) {unknown}; choose from {', '.join(SUITES)}", file=sys.stderr)
        return 2
    suites = args.suites or list(DEFAULT_SUITES)
    from rawflow._files import check_writable

    for option, path in (("--json", args.json), ("--markdown", args.markdown)):
        if path is not None:
            check_writable(path, option)  # OSError naming the path, before minutes of timing
    opts = options_from(args)
    torch_info = runtime.import_torch_first() if opts.torch else {"torch": "not used (--no-torch)"}
    try:
        import numba

        if opts.threads > numba.config.NUMBA_NUM_THREADS:
            print(f"note: --threads {opts.threads} > NUMBA_NUM_THREADS {numba.config.NUMBA_NUM_THREADS}; clamped",
                  file=sys.stderr)
            opts.threads = numba.config.NUMBA_NUM_THREADS
    except ImportError:
        pass
    threads_info = runtime.configure_threads(opts.threads, args.blas_threads)
    ctx = make_context(opts)
    results = {"meta": harness.machine_info(), "options": dataclasses.asdict(opts), "suites": {}, "targets": []}
    results["meta"]["runtime"] = {"environment": env, **torch_info, **threads_info}
    results["meta"]["loadavg_start"] = _loadavg()
    if not env["effective"]:
        print(f"note: {', '.join(env['already_loaded'])} already loaded: OMP_WAIT_POLICY may not apply "
              "(see benchmarks/runtime.py)", file=sys.stderr)
    results["meta"]["command"] = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    status = 0
    t_start = time.perf_counter()
    for name in suites:
        mod = suite_module(name)
        t0 = time.perf_counter()
        entry = {"rows": [], "notes": [], "loadavg_start": _loadavg()}
        try:
            rows = mod.run(ctx)
        except Skip as e:
            rows, entry["skipped"] = [], str(e)
        except Exception as e:  # noqa: BLE001  (one broken suite does not hide the others)
            rows, entry["error"] = [], f"{type(e).__name__}: {e}"
            traceback.print_exc()
            status = 1
        entry["seconds"] = time.perf_counter() - t0
        entry["loadavg_end"] = _loadavg()
        entry["rows"] = [r.as_dict() for r in rows]
        entry["notes"] = list(ctx.notes.get(name, []))
        results["suites"][name] = entry
        if any(r.status == "error" or r.ok is False for r in rows):
            status = 1
        text = [_header(name, ctx, rows, entry)]
        if "skipped" in entry or "error" in entry:
            what = "skipped" if "skipped" in entry else "failed"
            text.append(f"suite {what}: {entry.get('skipped') or entry.get('error')}")
        if rows:
            shown = shown_rows(rows)
            text.append(mod.format_rows(shown) if hasattr(mod, "format_rows") else harness.format_table(shown))
        text += [f"note: {n}" for n in entry["notes"]]
        if hasattr(mod, "targets"):
            tg = mod.targets(rows, opts)
            results["targets"] += tg
            if tg:
                text.append(format_targets(tg))
        print("\n".join(text) + "\n", flush=True)
    results["copy_bandwidth"] = list(ctx.copy.results.values())
    line = _copy_line(results["copy_bandwidth"])
    if line:
        print(line)
    results["seconds"] = time.perf_counter() - t_start
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=_json_default)
            f.write("\n")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown_report(results))
    return status


def format_targets(tg: list[dict]) -> str:
    lines = ["issue-5 CPU targets (256×12288 float32, 2 threads, affine coupling forward+backward, numba 2 thr):"]
    for t in tg:
        u = t["unit"]
        lines.append(f"  {t['target']:42s} measured {t['measured']:.2f}{u} (from minima {t['from_min']:.2f}{u})"
                     f"  {'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines)


def markdown_report(results: dict) -> str:
    """The tables of a results file (``--json``) as Markdown: what ``--markdown`` writes, and what
    ``--render FILE.json`` re-creates later."""
    meta = results["meta"]
    v = meta["versions"]
    load = meta.get("loadavg_start")
    out = [f"Measured {meta['date']} on {meta['cpu']} ({meta['usable_cpus']} usable CPUs, "
           f"LLC {meta['last_level_cache_bytes'] / 2**20:.0f} MiB"
           + (f", load average {load[0]:.1f} at the start" if load else "") + f"), Python {meta['python']}, "
           + ", ".join(f"{k} {val}" for k, val in v.items() if val) + f"; commit {meta['git_commit']}; "
           f"`{meta.get('command', '')}`.", ""]
    line = _copy_line(results.get("copy_bandwidth", []))
    if line:
        out += [line, ""]
    for name, entry in results["suites"].items():
        rows = shown_rows(harness.row_from_dict(d) for d in entry["rows"])
        out.append(f"### {name}")
        out.append("")
        what = entry.get("skipped") or entry.get("error")
        if what:
            out += [f"suite {'skipped' if entry.get('skipped') else 'failed'}: {what}", ""]
        if rows:
            mod = suite_module(name) if name in SUITES else None
            out += [mod.markdown_rows(rows) if hasattr(mod, "markdown_rows") else harness.markdown_table(rows), ""]
        notes = list(entry.get("notes", []))
        if entry.get("loadavg_start") and entry.get("loadavg_end"):
            notes.append(f"load average {entry['loadavg_start'][0]:.1f} → {entry['loadavg_end'][0]:.1f}, "
                         f"{entry.get('seconds', 0):.0f} s")
        out += [f"* {n}" for n in notes]
        if notes:
            out.append("")
    if results.get("targets"):
        out.append(format_targets(results["targets"]))
    return "\n".join(out) + "\n"


def shown_rows(rows) -> list:
    """Rows for a table: all but the placeholders of rows not requested (kept in the JSON)."""
    return [r for r in rows if not (r.status == "skipped" and r.note.startswith("torch.compile: fwd+bwd rows only"))]


def _json_default(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if hasattr(o, "item"):
        return o.item()
    return str(o)
