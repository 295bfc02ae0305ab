"""Suite ``distributed``: data-parallel Glow training under ``mpiexec`` at P = 1 and 2, and a model.

Each P is one ``mpiexec -n P`` launch of :mod:`benchmarks.distributed_worker` (MPICH from PyPI;
skipped without mpi4py). Rows:

* ``train step`` — one optimiser step of ``rawflow.train`` at global batch B (strong scaling: each
  of the P ranks takes B/P rows), median over the timed steps; ``×base`` is steps/s at P over
  steps/s at P = 1;
* ``compute`` — one rank's ``nll_and_grad`` on its shard, every rank computing at once;
* ``allreduce`` — the fixed-order gradient sum of one step's message (every gradient and the loss),
  alone; its size in bytes is in the note;
* ``equality`` — the largest leaf-wise relative parameter difference (max|Δ|/max|θ|) after 50
  float64 steps at P against P = 1, for RealNVP and a small Glow (the ``err`` column);
* ``model`` rows — **a model, not a measurement**: the step time at P = 8 and 64 ranks when each
  rank keeps the measured per-rank batch b = B/2 (weak scaling; T_compute(b) is the measured
  ``nll_and_grad`` on b rows plus the replicated optimiser update) and the gradient crosses a network
  of the stated bandwidth β and latency α, with nothing overlapped:
  ``T(P) = T_compute(b) + 2·(P−1)/P·S/β + 2·(P−1)·α`` (S: the message bytes; the all-to-all and
  the allgather each move (P−1)/P·S per rank and wait on P−1 peers). Efficiency
  ``T_compute(b)/T(P)``; the speed-up over one rank at batch b is P times that.

On a 2-core machine shared with other work, P = 2 ranks compete with everything else for the two
cores: the measured ratio is a floor, read it with the load average printed with the suite.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .harness import Row
from .runner import Context, Skip

NAME = "distributed"
FULL = dict(glow=dict(K=4, L=2, width=32, shape=(3, 16, 16), batch=32), steps=20, warmup=3, repeats=10,
            ranks=(1, 2), equality_ranks=(1, 2, 4), equality_steps=50)
QUICK = dict(glow=dict(K=1, L=1, width=4, shape=(1, 4, 4), batch=4), steps=3, warmup=1, repeats=2,
             ranks=(1, 2), equality_ranks=(1, 2), equality_steps=3)
# (name, bandwidth bytes/s, latency s) of the modelled networks
NETWORKS = (("10 Gb/s Ethernet", 1.25e9, 50e-6), ("100 Gb/s InfiniBand", 12.5e9, 5e-6),
            ("NVLink-class 200 GB/s", 200e9, 5e-6))
MODEL_RANKS = (8, 64)


def _mpiexec() -> Path:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise Skip("needs mpi4py and an MPI (pip install 'rawflow[mpi]')") from None
    path = Path(sys.executable).with_name("mpiexec")
    if not path.exists():
        raise Skip(f"no mpiexec next to {sys.executable} (pip install 'rawflow[mpi]')")
    return path


def _launch(mpiexec: Path, p: int, *args: str, timeout: float = 900) -> dict:
    package = __package__ or "benchmarks"
    root = str(Path(__file__).resolve().parents[1]) if package == "benchmarks" else None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "MPI_LOCAL"))}
    if root:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    done = subprocess.run([str(mpiexec), "-n", str(p), sys.executable, "-m", f"{package}.distributed_worker", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"mpiexec -n {p} worker failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _glow_args(g: dict) -> list[str]:
    return ["--K", str(g["K"]), "--L", str(g["L"]), "--width", str(g["width"]), "--shape", *map(str, g["shape"]),
            "--batch", str(g["batch"])]


def _timed_row(case, op, impl, times, **kw) -> Row:
    return Row(NAME, case, op, impl, median_s=statistics.median(times), min_s=min(times), max_s=max(times),
               repeats=len(times), **kw)


def model_step(compute_s: float, nbytes: int, p: int, bandwidth: float, latency: float) -> float:
    """Modelled seconds per step at ``p`` ranks (see the module docstring): compute, then the sum."""
    return compute_s + 2 * (p - 1) / p * nbytes / bandwidth + 2 * (p - 1) * latency


def run(ctx: Context):
    cfg = QUICK if ctx.opts.quick else FULL
    mpiexec = _mpiexec()
    g = cfg["glow"]
    case = (f"Glow K={g['K']} L={g['L']} width={g['width']} {'×'.join(map(str, g['shape']))} "
            f"global batch {g['batch']} float64")
    rows, measured = [], {}
    for p in cfg["ranks"]:
        ctx.log(f"[{NAME}] mpiexec -n {p}: {cfg['steps']} timed steps")
        measured[p] = _launch(mpiexec, p, "time", *_glow_args(g), "--steps", str(cfg["steps"]),
                              "--warmup", str(cfg["warmup"]), "--repeats", str(cfg["repeats"]))
    base = statistics.median(measured[cfg["ranks"][0]]["step_s"])
    for p, m in measured.items():
        step = _timed_row(case, "train step", f"P = {p}", m["step_s"], kind="baseline" if p == 1 else "rawflow",
                          items=g["batch"], note=f"{m['local_batch']} rows per rank")
        step.ratio = base / step.median_s
        rows.append(step)
        rows.append(_timed_row(case, "compute (nll_and_grad on the shard)", f"P = {p}", m["compute_s"],
                               items=m["local_batch"]))
        rows.append(_timed_row(case, "Adam update (replicated)", f"P = {p}", m["update_s"]))
        if p > 1:
            rows.append(_timed_row(case, "allreduce (fixed order)", f"P = {p}", m["allreduce_s"],
                                   note=f"{m['grad_bytes']} bytes ({m['params']} parameters + loss)"))
    rows += _equality(ctx, cfg, mpiexec)
    two = measured.get(2)
    if two is not None:
        compute = statistics.median(two["compute_s"]) + statistics.median(two["update_s"])
        nbytes = two["grad_bytes"]
        for net, bandwidth, latency in NETWORKS:
            for p in MODEL_RANKS:
                t = model_step(compute, nbytes, p, bandwidth, latency)
                rows.append(Row(NAME, case + f", {two['local_batch']} rows per rank", "MODEL step (not measured)",
                                f"P = {p}, {net}", median_s=t, min_s=t, max_s=t, repeats=1,
                                items=p * two["local_batch"],
                                note=f"efficiency {compute / t:.0%}, speed-up {p * compute / t:.1f}× over one rank",
                                extra={"model": True, "bandwidth": bandwidth, "latency": latency}))
        ctx.note(NAME, f"model: T(P) = T_compute(b) + 2(P−1)/P·S/β + 2(P−1)·α with T_compute(b) = "
                       f"{compute * 1e3:.1f} ms (nll_and_grad + Adam update) measured at P = 2 "
                       f"(b = {two['local_batch']}), S = {nbytes} bytes; "
                       "weak scaling, no overlap of communication with compute; a model, not a measurement")
    ctx.note(NAME, "P ranks oversubscribe a 2-core machine shared with other work: the measured ratio is a floor")
    return rows


def _equality(ctx: Context, cfg: dict, mpiexec: Path) -> list[Row]:
    rows = []
    small = ["--K", "2", "--L", "2", "--width", "8", "--shape", "1", "8", "8", "--batch", "32"]
    with tempfile.TemporaryDirectory() as tmp:
        for model, extra in (("realnvp", ["--batch", "64"]), ("glow", small)):
            out, seconds = {}, {}
            for p in cfg["equality_ranks"]:
                path = os.path.join(tmp, f"{model}-{p}.npz")
                ctx.log(f"[{NAME}] equality: {model}, mpiexec -n {p}")
                done = _launch(mpiexec, p, "equality", "--model", model, *extra, "--steps",
                               str(cfg["equality_steps"]), "--out", path)
                with np.load(path) as f:
                    out[p] = {k: f[k] for k in f.files}
                seconds[p] = done["seconds"]
            ref = out[1]
            for p in cfg["equality_ranks"][1:]:
                err = max(float(np.abs(ref[k] - out[p][k]).max()) / max(float(np.abs(ref[k]).max()), 1e-300)
                          for k in ref if k != "__losses__")
                rows.append(Row(NAME, f"{model} float64, {cfg['equality_steps']} Adam steps", "equality vs P = 1",
                                f"P = {p}", err=err, tol=1e-12, ok=err <= 1e-12, median_s=seconds[p],
                                min_s=seconds[p], max_s=seconds[p], repeats=1,
                                note="err: max over leaves of max|Δθ|/max|θ|; time: the whole run"))
    return rows
