"""Affine coupling, elementwise part, forward + backward: NumPy reference vs the fused Numba kernels.

    python benchmarks/bench_coupling_cpu.py [--rows 256] [--cols 12288] [--threads 2] [--scale exp]

Times, in one run, float32 ``(rows × cols)``:

* ``reference``: :class:`rawflow.AffineTransform` (NumPy, single-threaded: NumPy ufuncs do not
  thread), forward then backward;
* ``numba``: :mod:`rawflow.kernels.cpu_coupling` with ``--threads`` Numba threads;
* ``copy``: ``np.copyto`` moving the same bytes as forward + backward (reads + writes = 11 arrays),
  the machine's copy bandwidth (one thread), and the same copy as a ``prange`` loop on
  ``--threads`` threads. (A copy of one array would sit in the last-level cache and overstate it.)

Bandwidth counts the compulsory traffic of the fused kernels: forward reads x, h = [h_s | t] and
writes y (4 arrays of rows×cols); backward reads x, h, gy and writes gx, gh = [gh_s | gt] (7).
The reference moves more (it materialises s, dlog s, products and the concatenation), but is
credited with the same bytes, so its "GB/s" is the effective rate at which it does the job.
Reports the median and the minimum of ``--repeat`` runs: on a shared machine the minimum is the
uncontended time (a parallel region waits for its slowest thread, so one descheduled thread doubles
a run), the median what a busy machine gives. First-call (compile or cache-load) time separately.
"""

from __future__ import annotations

import argparse
import time

import numba
import numpy as np
from numba import njit, prange

from rawflow import AffineTransform
from rawflow.kernels import cpu_coupling as K


@njit(parallel=True, cache=True)
def _parallel_copy(dst, src):
    n, m = src.shape
    for i in prange(n):
        d, s = dst[i], src[i]
        for j in range(m):
            d[j] = s[j]


def _time(fn, repeat: int) -> tuple[float, float]:
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), float(np.min(ts))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--cols", type=int, default=12288)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--scale", default="exp", choices=sorted(K.SCALE_KINDS))
    p.add_argument("--repeat", type=int, default=30)
    a = p.parse_args()
    numba.set_num_threads(a.threads)

    rng = np.random.default_rng(0)
    n, m = a.rows, a.cols
    x = rng.normal(size=(n, m)).astype(np.float32)
    h = (0.5 * rng.normal(size=(n, 2 * m))).astype(np.float32)
    gy = rng.normal(size=(n, m)).astype(np.float32)
    gl = rng.normal(size=n).astype(np.float32)
    ref = AffineTransform(a.scale)

    t0 = time.perf_counter()
    K.affine_forward(x, h, a.scale)
    K.affine_backward(x, h, gy, gl, a.scale)
    first_call = time.perf_counter() - t0

    def ref_fwd():
        return ref.forward(x, h)

    _, _, cache = ref_fwd()

    def ref_bwd():
        return ref.backward(cache, gy, gl)

    def ref_both():
        _, _, c = ref.forward(x, h)
        return ref.backward(c, gy, gl)

    def nb_fwd():
        return K.affine_forward(x, h, a.scale)

    def nb_bwd():
        return K.affine_backward(x, h, gy, gl, a.scale)

    def nb_both():
        K.affine_forward(x, h, a.scale)
        return K.affine_backward(x, h, gy, gl, a.scale)

    # Agreement (so the timed code is the right code): float32 vs the float32 reference.
    y_ref, ld_ref, _ = ref_fwd()
    y, ld = nb_fwd()
    gx_ref, gh_ref = ref_bwd()
    gx, gh = nb_bwd()
    pairs = ((y, y_ref), (ld, ld_ref), (gx, gx_ref), (gh, gh_ref))
    agree = max(float(np.max(np.abs(u - v)) / np.max(np.abs(v))) for u, v in pairs)

    # 11 arrays of traffic: read 5.5 and write 5.5 arrays' worth
    src = np.ones((n, 11 * m // 2), np.float32)
    dst = np.empty_like(src)
    _parallel_copy(dst, src)
    unit = n * m * 4  # bytes of one (rows × cols) float32 array
    rows = [
        ("reference forward", ref_fwd, 4),
        ("reference backward", ref_bwd, 7),
        ("reference fwd+bwd", ref_both, 11),
        (f"numba forward ({a.threads} thr)", nb_fwd, 4),
        (f"numba backward ({a.threads} thr)", nb_bwd, 7),
        (f"numba fwd+bwd ({a.threads} thr)", nb_both, 11),
        ("np.copyto (1 thr)", lambda: np.copyto(dst, src), 11),
        (f"prange copy ({a.threads} thr)", lambda: _parallel_copy(dst, src), 11),
    ]
    results = {}
    for name, fn, arrays in rows:
        fn()
        med, best = _time(fn, a.repeat)
        results[name] = (med, best, arrays * unit / med / 1e9, arrays * unit / best / 1e9)

    copy_bw = results["np.copyto (1 thr)"][3]
    pcopy_bw = results[f"prange copy ({a.threads} thr)"][3]
    print(
        f"affine coupling ({a.scale}) forward+backward, float32 {n} x {m}, numba threads {a.threads}, "
        f"threading layer {numba.threading_layer()}, {a.repeat} runs"
    )
    print(f"first call (compile or cache load, fwd + bwd): {first_call:.2f} s; "
          f"max rel. difference vs reference {agree:.1e}")
    print("(speed-ups and bandwidths from the minimum; % of the copies' best bandwidth)")
    print(f"{'':32s} {'median ms':>10s} {'min ms':>8s} {'vs ref':>7s} {'GB/s':>7s} {'% copy':>7s} {'% par copy':>10s}")
    base = {k: results[f"reference {k}"][1] for k in ("forward", "backward", "fwd+bwd")}
    for name, _, _ in rows:
        med, best, _, bw = results[name]
        key = next((k for k in base if k in name), None)
        speed = f"{base[key] / best:6.2f}x" if key else ""
        print(f"{name:32s} {med * 1e3:10.3f} {best * 1e3:8.3f} {speed:>7s} {bw:7.1f} "
              f"{100 * bw / copy_bw:6.0f}% {100 * bw / pcopy_bw:9.0f}%")


if __name__ == "__main__":
    main()
