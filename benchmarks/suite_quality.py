"""Suite ``quality``: NICE, RealNVP and Glow trained with ``rawflow train``'s defaults, against a
PyTorch yardstick, on the digits and two 2-D densities.

For every data set × system × seed, two trainings of the same run (the CLI's defaults and that seed):

* ``rawflow`` — :func:`rawflow.app.runs.run_training`, what ``rawflow train --model M --data D
  --seed S`` runs (one BLAS thread, as the CLI), scored on the held-out test split with the
  best-validation parameters;
* ``torch yardstick`` — :func:`benchmarks.torch_train.train_torch`: the same architecture, initial
  parameters and batches, trained with torch autograd and ``torch.optim.Adam`` (one intra-op thread),
  with the same validation, best-parameter and early-stopping rules.

The ``held-out`` column is bits/dim on the digits (the independent-pixel baseline beside it) and
NLL in nats on 2-D data (the full-covariance Gaussian and the true density on the same points);
mean ± standard deviation over the seeds. The two implementations agree when their means differ by
no more than the larger seed-to-seed range (max − min over seeds) of the two: float32 trajectories
part after a few hundred steps (round-off grows through training), so agreement is statistical.
The time columns are the whole call (build, init, training, evaluation): wall and CPU seconds,
median over seeds, with the machine's load average; ``budget`` is ``rawflow``'s largest CPU time
over the seeds against 300 s: it runs on one core of two, so its CPU time is its wall time on an
idle machine (on a loaded one, contention for caches and cores inflates CPU time too: an upper bound).

The ``float64 trajectory`` rows train each system both ways from the same start on the same
batches for ``trajectory_steps`` steps in float64 and report the largest relative loss difference
over those steps and the largest parameter difference after them (``max|Δθ|/max|θ|`` of the worst
leaf): the hand-written gradients and Adam train what autograd and ``torch.optim.Adam`` would.
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time

from .harness import Row
from .runner import Context, Skip

NAME = "quality"
SYSTEMS = ("nice", "realnvp", "glow")
DATASETS = ("digits", "eight_gaussians", "checkerboard")
BUDGET_S = 300.0
TRAJECTORY_TOL = 1e-9
FULL = dict(seeds=3, trajectory_steps=50, overrides={})
# Tiny models and runs: the smoke test's version (the numbers mean nothing).
QUICK = dict(seeds=1, trajectory_steps=3, overrides={
    "common": {"steps": 4, "eval_every": 2, "batch_size": 32},
    ("nice", "image"): {"arch": {"n_couplings": 2, "hidden": [8]}},
    ("realnvp", "image"): {"arch": {"L": 1, "width": 4, "blocks": 1}},
    ("glow", "image"): {"arch": {"K": 1, "L": 1, "width": 4}},
    ("nice", "vector"): {"arch": {"n_couplings": 2, "hidden": [8]}, "n_samples": 600},
    ("realnvp", "vector"): {"arch": {"n_couplings": 2, "hidden": [8]}, "n_samples": 600},
    ("glow", "vector"): {"arch": {"K": 2, "hidden": [8]}, "n_samples": 600},
})


def options(model: str, data: str, seed: int, quick: bool, **extra) -> dict:
    """The run's options: the CLI's defaults (``None`` everywhere) unless ``quick``."""
    cfg = FULL if not quick else QUICK
    kind = "image" if data == "digits" else "vector"
    out = {"model": model, "data": data, "seed": seed, **cfg["overrides"].get("common", {}),
           **cfg["overrides"].get((model, kind), {})}
    out.update(extra)
    return out


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _timed(fn):
    load0, wall0, cpu0 = _load(), time.perf_counter(), time.process_time()
    out = fn()
    return out, {"wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0,
                 "load": [load0, _load()]}


def _rawflow_run(opts: dict) -> dict:
    from threadpoolctl import threadpool_limits

    from rawflow.app.runs import make_config, run_training

    cfg = make_config(opts)
    with tempfile.TemporaryDirectory() as out, threadpool_limits(limits=1, user_api="blas"):
        metrics, t = _timed(lambda: run_training(cfg, out, quiet=True))
    return _result(cfg, metrics, t)


def _torch_run(opts: dict) -> dict:
    import torch
    from threadpoolctl import threadpool_limits

    from rawflow.app.runs import make_config

    from .torch_train import train_torch

    cfg = make_config(opts)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            metrics, t = _timed(lambda: train_torch(cfg))
    finally:
        torch.set_num_threads(threads)
    return _result(cfg, metrics, t)


def _result(cfg: dict, metrics: dict, t: dict) -> dict:
    image = cfg["kind"] == "image"
    return {"value": metrics["test_bits_per_dim"] if image else metrics["test_nll"],
            "baseline": metrics.get("test_baseline_bits_per_dim") if image else metrics.get("test_gaussian_nll"),
            "true": metrics.get("test_true_nll"), "steps": metrics["steps"], "best_step": metrics["best_step"],
            "dtype": cfg["dtype"], **t}


def _spread(values: list[float]) -> float:
    return max(values) - min(values) if len(values) > 1 else math.nan


def _summary_row(case: str, system: str, impl: str, runs: list[dict], kind: str) -> Row:
    walls = [r["wall_s"] for r in runs]
    values = [r["value"] for r in runs]
    extra = {
        "values": values, "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else math.nan, "range": _spread(values),
        "cpu_s": [r["cpu_s"] for r in runs], "wall_s": walls, "load": [r["load"] for r in runs],
        "steps": [r["steps"] for r in runs], "best_step": [r["best_step"] for r in runs],
        "baseline": runs[0]["baseline"], "true": runs[0]["true"], "dtype": runs[0]["dtype"],
        "unit": "bits/dim" if case == "digits" else "nats",
    }
    return Row(NAME, case, system, impl, kind=kind, median_s=statistics.median(walls), min_s=min(walls),
               max_s=max(walls), repeats=len(runs), extra=extra)


def run(ctx: Context):
    quick = ctx.opts.quick
    cfg = QUICK if quick else FULL
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        raise Skip("needs threadpoolctl (scikit-learn's dependency; pip install 'rawflow[demo]')") from None
    use_torch = ctx.opts.torch
    if use_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            use_torch = False
    if not use_torch:
        ctx.note(NAME, "no torch (not installed, or --no-torch): the yardstick rows are left out")
    seeds = range(ctx.opts.seed, ctx.opts.seed + cfg["seeds"])
    rows = []
    for data in DATASETS:
        for system in SYSTEMS:
            try:
                rows += _system_rows(ctx, cfg, data, system, seeds, quick, use_torch)
            except Exception as exc:  # noqa: BLE001  (one failing run does not hide the others)
                import traceback

                traceback.print_exc()
                rows.append(Row(NAME, data, system, "rawflow", status="error",
                                note=f"{type(exc).__name__}: {exc}"[:300]))
    ctx.note(NAME, f"{cfg['seeds']} seed(s) per row ({seeds.start}…{seeds.stop - 1}); rawflow and the yardstick "
                   "on one thread each (BLAS, torch intra-op), one after the other")
    ctx.note(NAME, "held-out: digits bits/dim (baseline: independent pixels); 2-D NLL in nats (baseline: "
                   "full-covariance Gaussian; true: the closed-form density on the same test points)")
    return rows


def _system_rows(ctx: Context, cfg: dict, data: str, system: str, seeds: range, quick: bool,
                 use_torch: bool) -> list[Row]:
    """The rows of one system on one data set: rawflow, the yardstick, the float64 trajectories."""
    rows = []
    ours, theirs = [], []
    for seed in seeds:
        opts = options(system, data, seed, quick)
        ctx.log(f"[{NAME}] {system} on {data}, seed {seed}: rawflow")
        ours.append(_rawflow_run(opts))
        if use_torch:
            ctx.log(f"[{NAME}] {system} on {data}, seed {seed}: torch yardstick")
            theirs.append(_torch_run(opts))
    base = _summary_row(data, system, "rawflow", ours, "baseline")
    base.ratio = 1.0
    cpu = max(base.extra["cpu_s"])  # every seed's run must fit
    base.extra["budget_met"] = cpu <= BUDGET_S
    base.note = f"budget {BUDGET_S:.0f} s: {'met' if cpu <= BUDGET_S else 'NOT met'} (CPU ≤ {cpu:.0f} s)"
    rows.append(base)
    if use_torch:
        for r in theirs:  # the baselines depend on the data alone
            r["baseline"], r["true"] = ours[0]["baseline"], ours[0]["true"]
        row = _summary_row(data, system, "torch yardstick", theirs, "rawflow")
        row.baseline, row.ratio = "rawflow", base.median_s / row.median_s
        delta = abs(row.extra["mean"] - base.extra["mean"])
        tol = max(base.extra["range"], row.extra["range"])
        row.err = delta
        if math.isfinite(tol):
            row.tol, row.ok = tol, delta <= tol
            row.note = f"|Δ mean| {delta:.4f} {'≤' if row.ok else '>'} seed range {tol:.4f}"
        else:
            row.note = f"|Δ mean| {delta:.4f}; one seed: agreement not judged"
        rows.append(row)
    if use_torch:
        rows.append(_trajectory_row(ctx, data, system, cfg["trajectory_steps"], quick))
    return rows


def _trajectory_row(ctx: Context, data: str, system: str, steps: int, quick: bool) -> Row:
    from threadpoolctl import threadpool_limits

    from rawflow.app.runs import make_config

    from .torch_train import trajectories

    ctx.log(f"[{NAME}] {system} on {data}: float64 trajectories, {steps} steps")
    cfg = make_config(options(system, data, ctx.opts.seed, quick, dtype="float64"))
    with threadpool_limits(limits=1, user_api="blas"):
        t0 = time.perf_counter()
        r = trajectories(cfg, steps)
        seconds = time.perf_counter() - t0
    loss_rel = float(max(r["loss_rel"]))
    err = max(loss_rel, r["param_rel"])
    return Row(NAME, data, system, f"float64 trajectory, {steps} steps", kind="rawflow", median_s=seconds,
               min_s=seconds, max_s=seconds, repeats=1, err=err, tol=TRAJECTORY_TOL, ok=err <= TRAJECTORY_TOL,
               note=f"loss ≤ {loss_rel:.1e} rel. every step; parameters ≤ {r['param_rel']:.1e} ({r['param_leaf']})",
               extra={"loss_rel_max": loss_rel, "param_rel": r["param_rel"], "param_leaf": r["param_leaf"],
                      "loss_rel": [float(v) for v in r["loss_rel"]], "steps": steps,
                      "seconds_rawflow": r["seconds_rawflow"], "seconds_torch": r["seconds_torch"]})


# ------------------------------------------------------------------------------------ tables
COLUMNS = ("data", "system", "impl", "held-out (mean ± sd)", "seeds", "baseline", "true", "steps (best)",
           "wall s", "CPU s", "load", "note")


def _fmt(v, digits=4) -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def cells(r: Row) -> list[str]:
    e = r.extra
    if r.status != "ok":
        return [r.case, r.op, r.impl, "", "", "", "", "", "", "", "", f"{r.status.upper()}: {r.note}"]
    if "loss_rel_max" in e:
        return [r.case, r.op, r.impl, "", "", "", "", str(e["steps"]), f"{r.median_s:.1f}", "", "",
                ("ok " if r.ok else "FAIL ") + r.note]
    sd = f" ± {e['sd']:.4f}" if math.isfinite(e["sd"]) else ""
    steps = ", ".join(f"{s} ({b})" for s, b in zip(e["steps"], e["best_step"]))
    loads = [l0[0] for l0, _ in e["load"] if l0]
    return [r.case, r.op, f"{r.impl} ({e['dtype']})", f"{e['mean']:.4f}{sd} {e['unit']}", str(r.repeats),
            _fmt(e["baseline"]), _fmt(e["true"]), steps, f"{r.median_s:.1f}",
            f"{statistics.median(e['cpu_s']):.1f}", f"{min(loads):.1f}–{max(loads):.1f}" if loads else "", r.note]


def format_rows(rows) -> str:
    """The fixed-width table ``python -m benchmarks quality`` prints."""
    table = [list(COLUMNS)] + [cells(r) for r in rows]
    widths = [max(len(c[i]) for c in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(table[0], widths)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip() for c in table[1:]]
    return "\n".join(lines)


def markdown_rows(rows) -> str:
    """The same table in Markdown (``--markdown``, ``--render``)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(v.replace("|", "\\|") for v in cells(r)) + " |" for r in rows]
    return "\n".join(lines)
