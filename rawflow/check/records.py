"""Check records and reports: one JSON-able record per check, a compact table, the worst entries.

Every numerical comparison in :mod:`rawflow.check` goes through :func:`compare`, which judges each
element on its own::

    pass_i  ⇔  |actual_i − expected_i| ≤ tol_i = rtol·scale_i + atol_i

``scale_i`` is what the relative error is relative to; each check says what it uses in the record's
``scale`` field (usually the *term size* of the element, see :mod:`rawflow.check.suite`). A record
keeps the worst element by ``ratio = |error| / tol`` (≤ 1 passes), its index, actual and expected
values and the error in ulps of the checked dtype, plus the few worst entries for failure reports.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np

#: how many of the worst elements a record keeps for its failure report
KEEP_WORST = 5


@dataclass
class Record:
    """The outcome of one check on one quantity (JSON-able through :meth:`to_dict`)."""

    layer: str
    direction: str  # "forward", "inverse", "both" (round trips, cancellation) or "-"
    check: str  # e.g. "gradient", "logdet-jacobian", "roundtrip", "oracle", "hvp", "float32-vs-float64"
    quantity: str  # e.g. "input", "net/0/w", "logdet->input", "logdet", "output"
    dtype: str
    oracle: str  # what the expected values come from ("complex-step", "richardson", "float64", ...)
    step: float | None
    passed: bool
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0  # max |actual − expected| / scale
    ratio: float = 0.0  # max |actual − expected| / tol  (≤ 1 passes)
    tolerance: float = 0.0  # rtol (the bar on the relative error)
    scale: str = ""  # what the relative error is relative to
    worst_index: list | None = None
    actual: float | None = None
    expected: float | None = None
    ulps: float | None = None
    kappa: float | None = None  # the condition estimate used, where one enters the bound
    bound: float | None = None  # conditioning bound eps·T at the worst element (same units as max_abs_err)
    n: int = 0  # elements compared
    note: str = ""
    worst: list = field(default_factory=list)  # up to KEEP_WORST dicts {index, actual, expected, abs_err, tol}

    def to_dict(self) -> dict:
        return _jsonable(asdict(self))

    def line(self) -> str:
        return (
            f"{self.layer} {self.direction} {self.check}[{self.quantity}] {self.dtype} "
            f"oracle={self.oracle}: max abs {self.max_abs_err:.2e}, max rel {self.max_rel_err:.2e} "
            f"(bar {self.tolerance:.1e}, err/tol {self.ratio:.2g})"
        )


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return value if math.isfinite(value) else str(value)
    return obj


def ulp_distance(actual: float, expected: float, dtype) -> float:
    """``|actual − expected|`` in units of the spacing of ``dtype`` at ``expected``."""
    spacing = float(np.spacing(np.asarray(abs(expected), dtype=dtype)))
    tiny = float(np.finfo(dtype).smallest_subnormal)
    return abs(float(actual) - float(expected)) / max(spacing, tiny)


def compare(
    actual,
    expected,
    *,
    rtol: float,
    scale=None,
    atol=0.0,
    mask=None,
    dtype="float64",
    scale_note: str = "",
    **fields,
) -> Record:
    """Element-wise ``|actual − expected| ≤ rtol·scale + atol`` as a :class:`Record`.

    ``scale`` defaults to ``|expected|``; ``atol`` and ``scale`` broadcast against ``expected``.
    ``mask`` (same shape) marks the elements to judge; the others are skipped (the caller says why
    in ``note``). ``fields`` fill the descriptive fields of the record (layer, direction, ...).
    """
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        return Record(
            passed=False,
            dtype=str(dtype),
            tolerance=rtol,
            scale=scale_note,
            note=f"shape mismatch: actual {a.shape}, expected {e.shape}",
            **fields,
        )
    s = np.abs(e) if scale is None else np.broadcast_to(np.asarray(scale, dtype=np.float64), e.shape)
    tol = rtol * s + np.broadcast_to(np.asarray(atol, dtype=np.float64), e.shape)
    err = np.abs(a - e)
    keep = np.ones(e.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    # NaN anywhere (actual or expected) fails: the comparison below would silently pass it.
    bad_nan = keep & ~(np.isfinite(a) & np.isfinite(e))
    err = np.where(bad_nan, np.inf, err)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(err == 0, 0.0, err / tol)
        rel = np.where(err == 0, 0.0, err / s)
    ratio = np.where(keep, ratio, 0.0)
    rel = np.where(keep, rel, 0.0)
    err_kept = np.where(keep, err, 0.0)
    n = int(keep.sum())
    record = Record(dtype=str(dtype), tolerance=float(rtol), n=n, passed=True, scale=scale_note, **fields)
    if n == 0 or e.size == 0:
        return record
    flat = np.nan_to_num(ratio.reshape(-1), nan=np.inf)
    order = np.argsort(-flat, kind="stable")[:KEEP_WORST]
    worst = int(order[0])
    idx = np.unravel_index(worst, e.shape)
    record.max_abs_err = float(err_kept.max())
    record.max_rel_err = float(np.nan_to_num(rel, nan=np.inf).max())
    record.ratio = float(flat[worst])
    record.passed = bool(record.ratio <= 1.0)
    record.worst_index = [int(i) for i in idx]
    record.actual = float(a[idx])
    record.expected = float(e[idx])
    record.ulps = ulp_distance(a[idx], e[idx], dtype) if np.isfinite(a[idx]) else float("inf")
    record.worst = [
        {
            "index": [int(i) for i in np.unravel_index(int(k), e.shape)],
            "actual": float(a.reshape(-1)[k]),
            "expected": float(e.reshape(-1)[k]),
            "abs_err": float(err.reshape(-1)[k]),
            "tol": float(tol.reshape(-1)[k]),
        }
        for k in order
        if flat[k] > 0
    ]
    return record


def verdict(passed: bool, **fields) -> Record:
    """A pass/fail record for a check with no numerical error (e.g. a structure or bitwise test)."""
    return Record(passed=bool(passed), **fields)


class Report:
    """All records of one run; truthy when every check passed."""

    def __init__(self, records: Iterable[Record] = (), meta: dict | None = None):
        self.records: list[Record] = list(records)
        self.meta = dict(meta or {})

    def __bool__(self) -> bool:
        return self.passed

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.records)

    def extend(self, other: "Report | Iterable[Record]") -> None:
        self.records.extend(other.records if isinstance(other, Report) else other)

    def failures(self) -> list[Record]:
        return [r for r in self.records if not r.passed]

    def select(self, **match) -> list[Record]:
        """Records whose fields equal (or, for strings ending in ``*``, start with) the given values."""

        def ok(r):
            for key, want in match.items():
                have = getattr(r, key)
                if isinstance(want, str) and want.endswith("*"):
                    if not str(have).startswith(want[:-1]):
                        return False
                elif have != want:
                    return False
            return True

        return [r for r in self.records if ok(r)]

    def worst(self, **match) -> Record | None:
        chosen = self.select(**match)
        return max(chosen, key=lambda r: r.ratio) if chosen else None

    def to_dict(self) -> dict:
        return {"passed": self.passed, "meta": _jsonable(self.meta), "records": [r.to_dict() for r in self.records]}

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def summary(self, keys: Sequence[str] = ("layer", "check", "direction", "dtype")) -> list[dict]:
        """One row per group of records: the worst record (by err/tol) of each group."""
        groups: dict[tuple, list[Record]] = {}
        for r in self.records:
            groups.setdefault(tuple(getattr(r, k) for k in keys), []).append(r)
        rows = []
        for key, recs in groups.items():
            w = max(recs, key=lambda r: (not r.passed, r.ratio))
            rows.append(
                dict(
                    zip(keys, key),
                    n=len(recs),
                    failed=sum(not r.passed for r in recs),
                    quantity=w.quantity,
                    oracle=w.oracle,
                    max_rel_err=w.max_rel_err,
                    tolerance=w.tolerance,
                    ratio=w.ratio,
                )
            )
        return rows

    def grid(self) -> str:
        """One row per layer, one column per check: the worst ``err/bar`` (``FAIL`` when above 1)."""
        layers = list(dict.fromkeys(r.layer for r in self.records))
        checks = list(dict.fromkeys(r.check for r in self.records))
        cells = {}
        for r in self.records:
            key = (r.layer, r.check)
            ratio, failed = cells.get(key, (0.0, 0))
            cells[key] = (max(ratio, r.ratio), failed + (not r.passed))
        head = ["layer"] + checks
        body = []
        for layer in layers:
            row = [layer]
            for check in checks:
                if (layer, check) not in cells:
                    row.append("-")
                    continue
                ratio, failed = cells[(layer, check)]
                row.append(f"FAIL {ratio:.2g}" if failed else f"{ratio:.2g}")
            body.append(row)
        return _format_rows(head, body) + "\n(cells: worst error / bar over all records of that check; ≤ 1 passes)"

    def table(self, full: bool = False, grid: bool | None = None) -> str:
        """A compact human table.

        Several layers: :meth:`grid` (one row per layer). One layer (or ``grid=False``): one row per
        (check, direction, dtype) with its worst record. ``full=True``: every record.
        """
        if grid is None:
            grid = not full and len({r.layer for r in self.records}) > 1
        if grid:
            return self.grid()
        if full:
            rows = [
                dict(layer=r.layer, check=r.check, direction=r.direction, dtype=r.dtype, n=1,
                     failed=int(not r.passed), quantity=r.quantity, oracle=r.oracle,
                     max_rel_err=r.max_rel_err, tolerance=r.tolerance, ratio=r.ratio)
                for r in self.records
            ]
        else:
            rows = self.summary()
        head = ["layer", "check", "dir", "dtype", "worst quantity", "oracle", "max rel", "bar", "err/bar", "ok"]
        body = [
            [row["layer"], row["check"], row["direction"], row["dtype"], row["quantity"], row["oracle"],
             f"{row['max_rel_err']:.1e}", f"{row['tolerance']:.0e}", f"{row['ratio']:.2g}",
             "ok" if not row["failed"] else f"FAIL {row['failed']}/{row['n']}"]
            for row in rows
        ]
        return _format_rows(head, body)

    def failure_report(self, limit: int = 20) -> str:
        """The failing records, each with its worst entries (index, actual, expected, error, bound)."""
        fails = sorted(self.failures(), key=lambda r: -r.ratio)
        if not fails:
            return "all checks passed"
        out = [f"{len(fails)} failing check(s):"]
        for r in fails[:limit]:
            out.append("  " + r.line())
            if r.note:
                out.append(f"    note: {r.note}")
            if r.kappa is not None:
                out.append(f"    condition estimate κ = {r.kappa:.3g}")
            if r.bound is not None:
                out.append(f"    conditioning bound at the worst element: eps·T = {r.bound:.3g} "
                           f"(error {r.max_abs_err:.3g})")
            if r.worst_index is not None:
                out.append(
                    f"    worst at {tuple(r.worst_index)}: actual {r.actual!r}, expected {r.expected!r}, "
                    f"{r.ulps:.3g} ulp ({r.scale})"
                )
            for w in r.worst[1:]:
                relation = ">" if w["abs_err"] > w["tol"] else "≤"
                out.append(
                    f"      {tuple(w['index'])}: actual {w['actual']:.17g}, expected {w['expected']:.17g}, "
                    f"|err| {w['abs_err']:.2e} {relation} bound {w['tol']:.2e}"
                )
        if len(fails) > limit:
            out.append(f"  ... and {len(fails) - limit} more")
        return "\n".join(out)

    def raise_if_failed(self) -> None:
        if not self.passed:
            raise AssertionError(self.failure_report())

    def __str__(self) -> str:
        text = self.table()
        return text if self.passed else text + "\n\n" + self.failure_report()


def _format_rows(head: list, body: list) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)] if body else [len(h) for h in head]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*map(str, row)) for row in body]
    return "\n".join(lines)
