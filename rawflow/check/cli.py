"""Command-line entry points (wired into ``rawflow check`` and ``rawflow vectors`` by :mod:`rawflow.app.cli`).

    rawflow check [--family F ...] [--case NAME ...] [--dtype float64 float32] [--json FILE] [--full] [--list]
    rawflow check --stress [--family F ...] [--case NAME ...] [--dtype ...] [--json FILE] [--full] [--list]
    rawflow vectors export DIR [--family F ...] [--case NAME ...] [--seed S] [--force]
    rawflow vectors verify DIR [--json FILE]

Both functions take ``argv`` (without the subcommand name) and return a process exit code:
0 when every check passed, 1 when one failed, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import registry


def _parser_check() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rawflow check", description="Check the built-in layers against derivative oracles.")
    p.add_argument("--family", nargs="+", choices=_families(), help="families to check (default: all)")
    p.add_argument("--case", nargs="+", help="only these case names")
    p.add_argument("--dtype", nargs="+", default=["float64", "float32"], choices=["float64", "float32"])
    p.add_argument("--json", type=Path, help="write every record as JSON to this file")
    p.add_argument("--full", action="store_true", help="print every record, not the worst per group")
    p.add_argument("--list", action="store_true", help="list the registered cases and exit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stress", action="store_true",
                   help="the stress points (ill-conditioned, saturated, edge inputs, kernels) against a "
                        "60-digit oracle (rawflow.check.stress; needs mpmath); --full prints each case")
    return p


def _families() -> list[str]:
    from .stress import families as stress_families

    return sorted(set(registry.families()) | set(stress_families()))


def run_check_cli(argv=None) -> int:
    from .records import Report
    from .suite import check_bijector

    try:
        args = _parser_check().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if exc.code in (0, None) else 2
    if args.stress:
        from .stress import run_stress_cli

        return run_stress_cli(args)
    if args.family and set(args.family) - set(registry.families()):
        print(f"rawflow check: {sorted(set(args.family) - set(registry.families()))} are stress families "
              f"(--stress); registered: {registry.families()}", file=sys.stderr)
        return 2
    chosen = registry.cases(args.family)
    if args.case:
        unknown = sorted(set(args.case) - {c.name for c in chosen})
        if unknown:
            print(f"rawflow check: unknown case(s) {unknown}; see --list", file=sys.stderr)
            return 2
        chosen = [c for c in chosen if c.name in args.case]
    if args.json and not args.list:
        _check_writable(args.json)  # before the minute of checks, not after
    if args.list:
        for c in chosen:
            print(f"{c.name:30s} {type(c.layer).__name__}  x{tuple(c.x.shape)}")
        return 0
    report = Report(meta={"dtypes": args.dtype, "seed": args.seed})
    started = time.perf_counter()
    progress = sys.stderr.isatty()
    for i, c in enumerate(chosen):
        if progress:  # a minute of silence otherwise; only on a terminal, so logs stay clean
            print(f"\r\033[K[{i + 1}/{len(chosen)}] {c.name}", end="", file=sys.stderr, flush=True)
        report.extend(check_bijector(c.layer, c.params, c.x, dtypes=args.dtype, seed=args.seed, name=c.name,
                                     **c.options))
    elapsed = time.perf_counter() - started
    if progress:
        print("\r\033[K", end="", file=sys.stderr, flush=True)
    print(report.table(full=args.full))
    print()
    print(report.failure_report() if not report.passed else
          f"all {len(report)} checks passed on {len(chosen)} case(s) in {elapsed:.1f} s")
    if args.json:
        args.json.write_text(report.to_json(indent=1) + "\n")
    return 0 if report.passed else 1


def _check_writable(path: Path) -> None:
    """``OSError`` naming ``path`` unless it can be written now (``rawflow`` prints it as one line, exit 2)."""
    from .._files import check_writable

    check_writable(path, "--json")


def _parser_vectors() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rawflow vectors", description="Export or verify golden vectors.")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write <case>.npz files and manifest.json")
    e.add_argument("directory", type=Path)
    e.add_argument("--family", nargs="+", choices=registry.families())
    e.add_argument("--case", nargs="+", help="only these case names")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--force", action="store_true", help="replace the golden vectors already in DIR")
    v = sub.add_parser("verify", help="check rawflow against the files of a directory")
    v.add_argument("directory", type=Path)
    v.add_argument("--json", type=Path)
    return p


def run_vectors_cli(argv=None) -> int:
    from .vectors import export_vectors, verify_vectors

    try:
        args = _parser_vectors().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if exc.code in (0, None) else 2
    if args.command == "export":
        try:
            manifest = export_vectors(args.directory, families=args.family, names=args.case, seed=args.seed,
                                      force=args.force)
        except ValueError as exc:
            print(f"rawflow vectors: error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {len(manifest['files'])} file(s) and manifest.json to {args.directory}")
        return 0
    if not (args.directory / "manifest.json").exists():
        print(f"rawflow vectors: {args.directory / 'manifest.json'} not found", file=sys.stderr)
        return 2
    if args.json:
        _check_writable(args.json)
    try:
        report = verify_vectors(args.directory)
    except ValueError as exc:  # a manifest that is not one
        print(f"rawflow vectors: error: {exc}", file=sys.stderr)
        return 2
    print(report.table())
    print()
    print(report.failure_report() if not report.passed else f"all {len(report)} checks passed")
    if args.json:
        args.json.write_text(report.to_json(indent=1) + "\n")
    return 0 if report.passed else 1
