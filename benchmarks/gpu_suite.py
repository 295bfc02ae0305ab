#!/usr/bin/env python3
"""GPU suite: the affine coupling's elementwise part on one GPU, five implementations, one run.

    python3 benchmarks/gpu_suite.py [--quick] [--sizes 64x3072 ...] [--ops fwd+bwd ...] [--json FILE]
    python3 benchmarks/gpu_suite.py --dry-run        # no GPU needed: the plan and what is importable

Implementations (each in its own try/except; what fails is reported, the rest still runs):

* ``cupy reference`` — :class:`rawflow.AffineTransform` on CuPy arrays (the reference path);
* ``numba-cuda`` — :mod:`rawflow.kernels.cuda_coupling` (the project's numba-cuda kernels);
* ``rawflow cuda-c`` — :mod:`rawflow.kernels.cuda_c_coupling` (the library's CUDA C kernels,
  ``backend="cuda-c"``: 16-byte loads, compensated log-det through warp shuffles, no FMA
  contraction of outputs, every dtype and scale map, plain cache policy);
* ``cuda-c`` — the fused CUDA C pair in this file (``CUDA_SOURCE``), compiled by CuPy's
  ``RawModule``: one block per row, ``float4`` loads/stores with streaming cache hints, the
  log-det reduced per row in double (warp shuffles, then shared memory), deterministic;
* ``torch eager`` — the same maths in PyTorch on the same (zero-copy) buffers, autograd;
* ``torch.compile`` — the same function under ``torch.compile`` (inductor; ``fwd+bwd`` only
  unless ``--compile-all``: every shape is a fresh compilation), while its compile budget lasts.

Operations (``x: (N, M)``, ``h = [h_s | t]: (N, 2M)``, ``gy: (N, M)``, ``glogdet: (N,)``, float32,
scale map ``exp`` by default): ``forward`` (y, logdet), ``backward`` (gx, gh = [gh_s | gt]) and
``fwd+bwd`` (both, what a training step pays). Compulsory traffic in arrays of ``N·M``: forward
4 (read x, h_s, t; write y), backward 6 (read x, h_s, gy; write gx, gh_s, gt — the API returns
``gt = gy`` inside ``gh``), fwd+bwd 8 (every array either pass touches, once: what one fused pass
would move). ``% copy`` is against the device-to-device copy bandwidth
measured in the same run for the same number of bytes (at least 4× the L2 cache).

Method: every implementation is checked against rawflow's float64 reference (on the GPU) at every
size before it is timed; timing uses CUDA events around back-to-back calls after a warm-up,
cycling through enough input sets that together they exceed 3× the L2 cache (no call reads what
the previous one left in cache), medians over repeats. Writes JSON to ``--json`` or, if the
environment has ``OUT``, to ``$OUT/gpu_suite.json``; prints progress as it goes and the table last.
Sizes: four (64×3072, 256×12288, 1024×98304, 4096×16384) and two larger ones;
the whole default run is sized for under 5 minutes on an H200 (``--time-limit`` guards it).

Self-contained on purpose: it runs from a bare checkout on the GPU machine (``rawflow`` need not
be installed: the repository root is put on ``sys.path`` and ``kernels/`` mounted as
``rawflow.kernels``); nothing GPU-related is imported before it is needed, so ``--dry-run`` and
``--help`` work anywhere.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DESIGN_SIZES = [(64, 3072), (256, 12288), (1024, 98304), (4096, 16384)]
LARGER_SIZES = [(8192, 16384), (16384, 16384)]
QUICK_SIZES = [(64, 3072), (256, 12288)]
OPS = ("forward", "backward", "fwd+bwd")
IMPLS = ("cupy reference", "numba-cuda", "rawflow cuda-c", "cuda-c", "torch eager", "torch.compile")
ARRAYS = {"forward": 4, "backward": 6, "fwd+bwd": 8}
SCALES = {"exp": 0, "bounded": 1, "sigmoid": 2}

CUDA_SOURCE = r"""
// Fused affine coupling, elementwise part (rawflow.bijectors.coupling.AffineTransform), float32.
// Rows n = 0..N-1 of x (N, M), h = [h_s | t] (N, 2M); one block owns a row at a time (grid-stride
// over rows), threads stride the row's columns, 4 at a time (float4) when M % 4 == 0.
// kind 0: exp (log s = h); 1: bounded (log s = c*tanh(h/c)); 2: sigmoid (s = sigmoid(h + 2)).
#ifndef RAWFLOW_NO_STREAMING_HINTS
#define LDS(p) __ldcs(p)
#define STS(p, v) __stcs(p, v)
#else
#define LDS(p) (*(p))
#define STS(p, v) (*(p) = (v))
#endif

__device__ __forceinline__ void scale_map(int kind, float c, float hv, float &log_s, float &s, float &dlog) {
    if (kind == 0) {
        log_s = hv; s = expf(hv); dlog = 1.0f;
    } else if (kind == 2) {
        float u = hv + 2.0f;
        float e = expf(-fabsf(u));          // in (0, 1]: no overflow either side
        float lp = log1pf(e);
        float r = 1.0f / (1.0f + e);
        bool pos = u >= 0.0f;
        log_s = pos ? -lp : u - lp;         // -softplus(-u)
        s = pos ? r : e * r;                // sigmoid(u)
        dlog = pos ? e * r : r;             // sigmoid(-u)
    } else {
        float th = tanhf(hv / c);
        log_s = c * th; s = expf(log_s); dlog = 1.0f - th * th;
    }
}

__device__ __forceinline__ double warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double block_sum(double v, double *shared) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = (threadIdx.x < nwarps) ? shared[lane] : 0.0;
    if (warp == 0) v = warp_sum(v);
    __syncthreads();                        // shared[] is reused by the next row
    return v;                               // valid in thread 0
}

#define FWD1(X, H, T, Y) { float ls_, s_, d_; scale_map(kind, c, H, ls_, s_, d_); Y = X * s_ + T; acc += (double)ls_; }

extern "C" __global__ void affine_forward_f32(const float *__restrict__ x, const float *__restrict__ h,
                                              float *__restrict__ y, float *__restrict__ logdet,
                                              long long N, long long M, int kind, float c) {
    __shared__ double shared[32];
    for (long long n = blockIdx.x; n < N; n += gridDim.x) {
        const float *xr = x + n * M, *hr = h + n * 2 * M, *tr = hr + M;
        float *yr = y + n * M;
        double acc = 0.0;
        if ((M & 3) == 0) {
            long long m4 = M >> 2;
            const float4 *x4 = (const float4 *)xr, *h4 = (const float4 *)hr, *t4 = (const float4 *)tr;
            float4 *y4 = (float4 *)yr;
            for (long long j = threadIdx.x; j < m4; j += blockDim.x) {
                float4 a = LDS(x4 + j), b = LDS(h4 + j), t = LDS(t4 + j), o;
                FWD1(a.x, b.x, t.x, o.x) FWD1(a.y, b.y, t.y, o.y) FWD1(a.z, b.z, t.z, o.z) FWD1(a.w, b.w, t.w, o.w)
                STS(y4 + j, o);
            }
        } else {
            for (long long j = threadIdx.x; j < M; j += blockDim.x) {
                float o;
                FWD1(xr[j], hr[j], tr[j], o)
                yr[j] = o;
            }
        }
        double total = block_sum(acc, shared);
        if (threadIdx.x == 0) logdet[n] = (float)total;
    }
}

#define BWD1(X, H, G, GX, GHS) { float ls_, s_, d_; scale_map(kind, c, H, ls_, s_, d_); float gs_ = G * s_; \
                                 GX = gs_; GHS = (gs_ * X + gl) * d_; }

extern "C" __global__ void affine_backward_f32(const float *__restrict__ x, const float *__restrict__ h,
                                               const float *__restrict__ gy, const float *__restrict__ glogdet,
                                               float *__restrict__ gx, float *__restrict__ gh,
                                               long long N, long long M, int kind, float c) {
    for (long long n = blockIdx.x; n < N; n += gridDim.x) {
        const float *xr = x + n * M, *hr = h + n * 2 * M, *gr = gy + n * M;
        float *gxr = gx + n * M, *ghs = gh + n * 2 * M, *gt = ghs + M;
        const float gl = glogdet[n];
        if ((M & 3) == 0) {
            long long m4 = M >> 2;
            const float4 *x4 = (const float4 *)xr, *h4 = (const float4 *)hr, *g4 = (const float4 *)gr;
            float4 *gx4 = (float4 *)gxr, *ghs4 = (float4 *)ghs, *gt4 = (float4 *)gt;
            for (long long j = threadIdx.x; j < m4; j += blockDim.x) {
                float4 a = LDS(x4 + j), b = LDS(h4 + j), g = LDS(g4 + j), o, p;
                BWD1(a.x, b.x, g.x, o.x, p.x) BWD1(a.y, b.y, g.y, o.y, p.y)
                BWD1(a.z, b.z, g.z, o.z, p.z) BWD1(a.w, b.w, g.w, o.w, p.w)
                STS(gx4 + j, o); STS(ghs4 + j, p); STS(gt4 + j, g);
            }
        } else {
            for (long long j = threadIdx.x; j < M; j += blockDim.x) {
                float o, p, g = gr[j];
                BWD1(xr[j], hr[j], g, o, p)
                gxr[j] = o; ghs[j] = p; gt[j] = g;
            }
        }
    }
}
"""


# ------------------------------------------------------------------------------------ arguments
def _size(text: str):
    try:
        r, c = text.lower().replace("×", "x").split("x")
        return int(r), int(c)
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes are ROWSxCOLS, e.g. 4096x16384; got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu_suite.py", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=_size, nargs="+", help="ROWSxCOLS (default: 64x3072 … 4096x16384 and two larger)")
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    p.add_argument("--scale", choices=sorted(SCALES), default="exp")
    p.add_argument("--repeats", type=int, default=20, help="timed repeats (each ≥ --min-ms of back-to-back calls)")
    p.add_argument("--min-ms", type=float, default=2.0)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile-budget", type=float, default=150.0, help="seconds of torch.compile compilation, at most")
    p.add_argument("--compile-all", action="store_true",
                   help="torch.compile every op (default: fwd+bwd only; each shape is a fresh compilation)")
    p.add_argument("--time-limit", type=float, default=270.0,
                   help="stop starting new measurements after this many seconds (default 270)")
    p.add_argument("--threads", type=int, default=256, help="CUDA C block size (a power of two ≤ 1024)")
    p.add_argument("--quick", action="store_true", help="two small sizes, 5 repeats, no torch.compile")
    p.add_argument("--json", metavar="FILE", help="results file (default: $OUT/gpu_suite.json when OUT is set)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and what is importable; touch no GPU")
    p.add_argument("--check-source", action="store_true",
                   help="with --dry-run: compile CUDA_SOURCE to PTX for sm_90 with nvcc, if nvcc is on PATH")
    return p


def settle(args):
    if args.quick:
        args.sizes = args.sizes or QUICK_SIZES
        args.repeats = min(args.repeats, 5)
        args.impls = [i for i in args.impls if i != "torch.compile"]
    args.sizes = args.sizes or DESIGN_SIZES + LARGER_SIZES
    if args.threads < 32 or args.threads > 1024 or args.threads & (args.threads - 1):
        raise SystemExit("--threads must be a power of two in [32, 1024]")
    return args


def plan(args) -> list[tuple]:
    return [(size, op, impl) for size in args.sizes for op in args.ops for impl in args.impls]


def environment() -> dict:
    """What is importable here, without importing anything that touches a GPU."""
    found = {}
    for mod in ("numpy", "cupy", "torch", "numba", "numba_cuda", "rawflow"):
        try:
            found[mod] = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):
            found[mod] = False
    found["kernels_dir"] = (REPO / "kernels" / "cuda_coupling.py").exists()
    return found


def check_source() -> str:
    import shutil
    import subprocess
    import tempfile

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return "nvcc not on PATH: source not compiled"
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "coupling.cu"
        src.write_text(CUDA_SOURCE)
        r = subprocess.run([nvcc, "-ptx", "-arch=sm_90", "-o", str(Path(d) / "coupling.ptx"), str(src)],
                           capture_output=True, text=True, timeout=300)
        if r.returncode:
            raise SystemExit(f"CUDA_SOURCE does not compile:\n{r.stderr}")
        return "CUDA_SOURCE compiles to PTX for sm_90 (nvcc)"


def dry_run(args) -> int:
    cells = plan(args)
    print(f"gpu_suite dry run: {len(args.sizes)} sizes × {len(args.ops)} ops × {len(args.impls)} implementations "
          f"= {len(cells)} measurements, scale {args.scale}, {args.repeats} repeats, time limit {args.time_limit:.0f} s")
    for n, m in args.sizes:
        print(f"  {n}×{m} ({n * m / 1e6:.1f}M elements, {n * m * 4 / 2**20:.0f} MiB per float32 array)")
    print("importable:", ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in environment().items()))
    if args.check_source:
        print(check_source())
    return 0


# ------------------------------------------------------------------------------------ setup
def ensure_rawflow():
    """Import rawflow (from the checkout if not installed) and mount ``kernels/`` as ``rawflow.kernels``."""
    import numpy as np

    if not hasattr(np, "row_stack"):  # numba-cuda (0.30) on NumPy ≥ 2.4 still uses it
        np.row_stack = np.vstack
    if importlib.util.find_spec("rawflow") is None:
        sys.path.insert(0, str(REPO))
    rawflow = importlib.import_module("rawflow")
    try:
        importlib.import_module("rawflow.kernels")
    except ImportError:
        spec = importlib.util.spec_from_file_location("rawflow.kernels", REPO / "kernels" / "__init__.py",
                                                      submodule_search_locations=[str(REPO / "kernels")])
        module = importlib.util.module_from_spec(spec)
        sys.modules["rawflow.kernels"] = module
        spec.loader.exec_module(module)
    return rawflow


def device_info(cp) -> dict:
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return {"name": name, "multiprocessors": props.get("multiProcessorCount"),
            "memory_bytes": props.get("totalGlobalMem"), "l2_bytes": props.get("l2CacheSize"),
            "compute_capability": f"{props.get('major')}.{props.get('minor')}",
            "driver": cp.cuda.runtime.driverGetVersion(), "runtime": cp.cuda.runtime.runtimeGetVersion()}


def versions() -> dict:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in ("numpy", "cupy", "cupy-cuda12x", "cupy-cuda13x", "torch", "numba", "numba-cuda", "triton"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        import subprocess

        out["git_commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                                           text=True, timeout=10).stdout.strip() or None
    except Exception:  # noqa: BLE001
        out["git_commit"] = None
    return out


# ------------------------------------------------------------------------------------ pieces
class Skip(Exception):
    pass


def reference64(cp, x, h, gy, gl, scale):
    """float64 outputs of every op and the scale of their terms (rawflow's reference on CuPy)."""
    from rawflow import AffineTransform
    from rawflow.bijectors.scales import scale_map

    x, h, gy, gl = (a.astype(cp.float64) for a in (x, h, gy, gl))
    tr = AffineTransform(scale)
    y, ld, cache = tr.forward(x, h)
    gx, gh = tr.backward(cache, gy, gl)
    m = x.shape[1]
    log_s, dlog_s = scale_map(scale)(h[:, :m])
    s = cp.exp(log_s)
    fwd = [(y, cp.abs(x * s) + cp.abs(h[:, m:])), (ld, cp.abs(log_s).sum(axis=1))]
    bwd = [(gx, cp.abs(gy * s)),
           (gh, cp.concatenate([(cp.abs(gy * s * x) + cp.abs(gl)[:, None]) * cp.abs(dlog_s), cp.abs(gy)], axis=1))]
    return {"forward": fwd, "backward": bwd, "fwd+bwd": fwd + bwd}


def as_cupy(cp, a):
    if isinstance(a, cp.ndarray):
        return a
    if hasattr(a, "__dlpack__") and type(a).__module__.startswith("torch"):
        return cp.from_dlpack(a.detach())
    return cp.asarray(a)


def max_error(cp, outs, ref) -> float:
    if len(outs) != len(ref):
        raise ValueError(f"{len(outs)} outputs, expected {len(ref)}")
    worst = 0.0
    for o, (e, s) in zip(outs, ref):
        o = as_cupy(cp, o).reshape(e.shape).astype(cp.float64)
        if not bool(cp.all(cp.isfinite(o))):
            return float("inf")
        worst = max(worst, float(cp.max(cp.abs(o - e))) / max(float(cp.max(s)), 1e-300))
    return worst


def torch_fns(scale):
    import torch
    import torch.nn.functional as F

    def parts(h):
        m = h.shape[1] // 2
        hs, t = h[:, :m], h[:, m:]
        if scale == "exp":
            return hs, torch.exp(hs), t
        if scale == "sigmoid":
            return F.logsigmoid(hs + 2.0), torch.sigmoid(hs + 2.0), t
        log_s = 2.0 * torch.tanh(hs / 2.0)
        return log_s, torch.exp(log_s), t

    def forward(x, h):
        log_s, s, t = parts(h)
        return x * s + t, log_s.sum(dim=1)

    return forward


class Runner:
    def __init__(self, args, cp):
        self.args, self.cp = args, cp
        self.t0 = time.perf_counter()
        self.compile_spent = 0.0
        self.l2 = device_info(cp).get("l2_bytes") or 50 * 2**20
        self._module = None
        self._copy = {}

    # -------------------------------------------------------------- implementations
    def rawmodule(self):
        if self._module is None:
            cp = self.cp
            try:
                mod = cp.RawModule(code=CUDA_SOURCE, options=("--std=c++17",))
                mod.get_function("affine_forward_f32")
            except Exception:  # noqa: BLE001  (older NVRTC without the streaming intrinsics)
                mod = cp.RawModule(code=CUDA_SOURCE, options=("--std=c++17", "-DRAWFLOW_NO_STREAMING_HINTS"))
            self._module = (mod.get_function("affine_forward_f32"), mod.get_function("affine_backward_f32"))
        return self._module

    def make(self, impl, op, x, h, gy, gl):
        """A zero-argument callable computing ``op`` on these buffers, returning its outputs."""
        cp, scale = self.cp, self.args.scale
        if impl == "cupy reference":
            from rawflow import AffineTransform

            tr = AffineTransform(scale)
            if op == "forward":
                return lambda: tr.forward(x, h)[:2]
            if op == "backward":
                cache = tr.forward(x, h)[2]
                return lambda: tr.backward(cache, gy, gl)

            def both():
                y, ld, c = tr.forward(x, h)
                return (y, ld) + tuple(tr.backward(c, gy, gl))

            return both
        if impl == "numba-cuda":
            from rawflow.kernels import cuda_coupling as K

            if op == "forward":
                return lambda: K.affine_forward(x, h, scale)
            if op == "backward":
                return lambda: K.affine_backward(x, h, gy, gl, scale)
            return lambda: K.affine_forward(x, h, scale) + K.affine_backward(x, h, gy, gl, scale)
        if impl == "rawflow cuda-c":
            from rawflow.kernels import cuda_c_coupling as KC

            kw = {"threads": self.args.threads}
            if op == "forward":
                return lambda: KC.affine_forward(x, h, scale, **kw)
            if op == "backward":
                return lambda: KC.affine_backward(x, h, gy, gl, scale, **kw)
            return lambda: KC.affine_forward(x, h, scale, **kw) + KC.affine_backward(x, h, gy, gl, scale, **kw)
        if impl == "cuda-c":
            if x.dtype != cp.float32:
                raise Skip("the CUDA C kernels are float32 only")
            fwd, bwd = self.rawmodule()
            n, m = x.shape
            threads = self.args.threads
            blocks = min(n, 1 << 20)
            kind, c = SCALES[scale], cp.float32(2.0)

            def f():
                y = cp.empty_like(x)
                ld = cp.empty(n, dtype=x.dtype)
                fwd((blocks,), (threads,), (x, h, y, ld, cp.int64(n), cp.int64(m), cp.int32(kind), c))
                return y, ld

            def b():
                gx = cp.empty_like(x)
                gh = cp.empty_like(h)
                bwd((blocks,), (threads,), (x, h, gy, gl, gx, gh, cp.int64(n), cp.int64(m), cp.int32(kind), c))
                return gx, gh

            return f if op == "forward" else b if op == "backward" else (lambda: f() + b())
        if impl in ("torch eager", "torch.compile"):
            import torch

            tx, th, tg, tl = (torch.as_tensor(a, device="cuda") for a in (x, h, gy, gl))
            fn = torch_fns(scale)
            if impl == "torch.compile":
                fn = self.compiled(fn, op, tx, th, tg, tl)
            if op == "forward":
                def run():
                    with torch.no_grad():
                        return fn(tx, th)

                return run
            lx, lh = tx.detach().requires_grad_(), th.detach().requires_grad_()
            if op == "backward":
                outs = fn(lx, lh)
                return lambda: torch.autograd.grad(outs, (lx, lh), (tg, tl), retain_graph=True)

            def both():
                y, ld = fn(lx, lh)
                return (y.detach(), ld.detach()) + tuple(torch.autograd.grad((y, ld), (lx, lh), (tg, tl)))

            return both
        raise ValueError(f"unknown implementation {impl!r}")

    def compiled(self, fn, op, tx, th, tg, tl):
        import torch

        if op != "fwd+bwd" and not self.args.compile_all:
            raise Skip("torch.compile: fwd+bwd only (--compile-all for every op)")
        if self.compile_spent >= self.args.compile_budget:
            raise Skip(f"torch.compile budget ({self.args.compile_budget:.0f} s) spent")
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        t0 = time.perf_counter()
        try:
            cf = torch.compile(fn, dynamic=False)
            if op == "forward":
                with torch.no_grad():
                    cf(tx, th)
            else:
                lx, lh = tx.detach().requires_grad_(), th.detach().requires_grad_()
                torch.autograd.grad(cf(lx, lh), (lx, lh), (tg, tl))
            torch.cuda.synchronize()
        except Exception as e:  # noqa: BLE001
            raise Skip(f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
        finally:
            self.compile_spent += time.perf_counter() - t0
        return cf

    # -------------------------------------------------------------- measuring
    def time_calls(self, calls):
        """Per-call seconds (median, min, max, repeats, calls per repeat) with CUDA events."""
        cp, args = self.cp, self.args
        k = len(calls)
        for i in range(max(args.warmup, 1)):
            calls[i % k]()
        cp.cuda.Device().synchronize()
        start, stop = cp.cuda.Event(), cp.cuda.Event()

        def loop(number, offset):
            start.record()
            for i in range(number):
                calls[(offset + i) % k]()
            stop.record()
            stop.synchronize()
            return cp.cuda.get_elapsed_time(start, stop) / 1e3 / number

        single = loop(1, 0)
        number = max(1, min(1000, math.ceil(args.min_ms / 1e3 / max(single, 1e-7))))
        times = [loop(number, r * number) for r in range(args.repeats)]
        return statistics.median(times), min(times), max(times), len(times), number

    def copy_bandwidth(self, nbytes: int) -> dict:
        cp = self.cp
        size = max(int(nbytes), 4 * self.l2)
        key = 1 << max(0, (size - 1).bit_length())
        if key not in self._copy:
            half = key // 2
            src = cp.ones(half // 4, dtype=cp.float32)
            dst = cp.empty_like(src)
            d2d = cp.cuda.runtime.memcpyDeviceToDevice

            def memcpy():
                cp.cuda.runtime.memcpyAsync(dst.data.ptr, src.data.ptr, src.nbytes, d2d, 0)

            def kernel():
                cp.copyto(dst, src)

            res = {}
            for name, fn in (("cudaMemcpy D2D", memcpy), ("cupy.copyto", kernel)):
                med = self.time_calls([fn])[0]
                res[name] = 2 * src.nbytes / med / 1e9
            self._copy[key] = {"bytes": 2 * src.nbytes, "by_method": res, "gbps": max(res.values())}
            del src, dst
            cp.get_default_memory_pool().free_all_blocks()
        return self._copy[key]

    def inputs(self, n, m, rng_seed):
        """Input sets: enough that cycling through them spans 3× the L2 cache."""
        cp = self.cp
        per_set = 4 * (4 * n * m + n)
        k = max(1, min(64, math.ceil(3 * self.l2 / per_set)))
        rs = cp.random.RandomState(rng_seed)
        sets = []
        for _ in range(k):
            x = rs.standard_normal((n, m), dtype=cp.float32)
            h = (0.5 * rs.standard_normal((n, 2 * m), dtype=cp.float32)).astype(cp.float32)
            gy = rs.standard_normal((n, m), dtype=cp.float32)
            gl = rs.standard_normal(n, dtype=cp.float32)
            sets.append((x, h, gy, gl))
        return sets

    def run(self, log):
        cp, args = self.cp, self.args
        rows, failures = [], []
        for size in args.sizes:
            n, m = size
            if time.perf_counter() - self.t0 > args.time_limit:
                failures.append({"size": f"{n}x{m}", "what": "not started: --time-limit reached"})
                continue
            try:
                sets = self.inputs(n, m, 0)
                ref = reference64(cp, *sets[0], args.scale)
            except Exception as e:  # noqa: BLE001
                failures.append({"size": f"{n}x{m}", "what": f"inputs/reference: {type(e).__name__}: {e}"})
                log(f"{n}x{m}: inputs failed: {e}")
                continue
            for op in args.ops:
                for impl in args.impls:
                    row = {"size": f"{n}x{m}", "elements": n * m, "op": op, "impl": impl, "status": "ok",
                           "bytes": (ARRAYS[op] * n * m + (2 if op == "fwd+bwd" else 1) * n) * 4, "sets": len(sets)}
                    if time.perf_counter() - self.t0 > args.time_limit:
                        row.update(status="skipped", note="--time-limit reached")
                        rows.append(row)
                        continue
                    try:
                        calls = [self.make(impl, op, *s) for s in sets]
                        out = calls[0]()
                        cp.cuda.Device().synchronize()
                        row["err"] = max_error(cp, out if isinstance(out, tuple) else (out,), ref[op])
                        row["ok"] = row["err"] <= 1e-5
                        del out
                        med, lo, hi, reps, number = self.time_calls(calls)
                        row.update(median_s=med, min_s=lo, max_s=hi, repeats=reps, number=number)
                        copy = self.copy_bandwidth(row["bytes"])
                        row["gbps"] = row["bytes"] / med / 1e9
                        row["copy_gbps"] = copy["gbps"]
                        row["pct_copy"] = 100 * row["gbps"] / copy["gbps"]
                    except Skip as e:
                        row.update(status="skipped", note=str(e))
                    except Exception as e:  # noqa: BLE001
                        row.update(status="error", note=f"{type(e).__name__}: {str(e)[:300]}")
                        failures.append({"size": row["size"], "op": op, "impl": impl,
                                         "traceback": traceback.format_exc()[-2000:]})
                    finally:
                        calls = None
                        free(cp)
                    rows.append(row)
                    log(f"{row['size']:>12s} {op:9s} {impl:15s} " + (
                        f"{row['median_s'] * 1e6:9.1f} µs  {row.get('pct_copy', 0):5.1f}% copy  err {row['err']:.1e}"
                        if row["status"] == "ok" else f"{row['status']}: {row.get('note', '')}"))
            del sets, ref
            free(cp)
        ratios(rows)
        return rows, failures


def free(cp):
    """Give cached device memory back (CuPy's pool, and PyTorch's if it was used)."""
    cp.get_default_memory_pool().free_all_blocks()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def ratios(rows):
    by = {(r["size"], r["op"], r["impl"]): r for r in rows if r["status"] == "ok"}
    for r in rows:
        if r["status"] != "ok":
            continue
        for base, key in (("torch eager", "x_eager"), ("torch.compile", "x_compile"), ("cupy reference", "x_cupy")):
            b = by.get((r["size"], r["op"], base))
            if b is not None:
                r[key] = b["median_s"] / r["median_s"]


def targets(rows) -> list[dict]:
    """Issue 5's GPU targets for the fused fwd+bwd of each kernel (the library's two, and this file's pair)."""
    out = []
    kernels = ("rawflow cuda-c", "numba-cuda", "cuda-c")
    fb = [r for r in rows if r["op"] == "fwd+bwd" and r["status"] == "ok" and r["impl"] in kernels]
    for impl in kernels:
        mine = [r for r in fb if r["impl"] == impl]
        big = [r for r in mine if r["elements"] >= 64 * 2**20]
        for r in big:
            out.append({"impl": impl, "size": r["size"], "target": "≥ 90 % of copy", "measured": r["pct_copy"],
                        "met": r["pct_copy"] >= 90})
            if "x_eager" in r:
                out.append({"impl": impl, "size": r["size"], "target": "≥ 2.4× torch eager", "measured": r["x_eager"],
                            "met": r["x_eager"] >= 2.4})
            if "x_compile" in r:
                out.append({"impl": impl, "size": r["size"], "target": "≥ 1.3× torch.compile",
                            "measured": r["x_compile"], "met": r["x_compile"] >= 1.3})
        small = [r for r in mine if r["size"] == "64x3072" and "x_eager" in r]
        for r in small:
            out.append({"impl": impl, "size": r["size"], "target": "≥ 5× torch eager", "measured": r["x_eager"],
                        "met": r["x_eager"] >= 5})
    return out


def table(rows) -> str:
    head = ["size", "op", "impl", "median µs", "min–max µs", "GB/s", "%copy", "×eager", "×compile", "err", "note"]
    cells = []
    for r in rows:
        if r["status"] != "ok":
            cells.append([r["size"], r["op"], r["impl"], "", "", "", "", "", "", "", f"{r['status']}: {r.get('note', '')}"])
            continue
        f = (lambda k, spec: format(r[k], spec) if k in r else "")
        cells.append([r["size"], r["op"], r["impl"], f"{r['median_s'] * 1e6:.1f}",
                      f"{r['min_s'] * 1e6:.1f}–{r['max_s'] * 1e6:.1f}", f"{r['gbps']:.0f}", f"{r['pct_copy']:.1f}",
                      f("x_eager", ".2f"), f("x_compile", ".2f"), f"{r['err']:.1e}" + ("" if r["ok"] else " FAIL"), ""])
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip() for c in cells]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = settle(build_parser().parse_args(argv))
    if args.dry_run:
        return dry_run(args)

    def log(msg):
        print(msg, flush=True)

    results = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
               "argv": sys.argv[1:] if argv is None else list(argv), "versions": versions(), "rows": [],
               "failures": []}
    status = 0
    try:
        import cupy as cp

        ensure_rawflow()
        results["device"] = device_info(cp)
        log(f"device: {results['device']}")
        runner = Runner(args, cp)
        rows, failures = runner.run(log)
        results.update(rows=rows, failures=failures, copy_bandwidth=list(runner._copy.values()),
                       targets=targets(rows), compile_seconds=runner.compile_spent,
                       seconds=time.perf_counter() - runner.t0)
        if any(r["status"] == "error" or r.get("ok") is False for r in rows):
            status = 1
    except Exception as e:  # noqa: BLE001  (no GPU, no CuPy: still write what happened)
        results["fatal"] = f"{type(e).__name__}: {e}"
        results["failures"].append({"what": "setup", "traceback": traceback.format_exc()[-3000:]})
        status = 2
    out = args.json or (os.path.join(os.environ["OUT"], "gpu_suite.json") if os.environ.get("OUT") else None)
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=1, default=str)
            f.write("\n")
    print()
    if "fatal" in results:
        print(f"gpu_suite: could not run: {results['fatal']}")
    for fl in results["failures"]:
        print(f"failure: {fl.get('size', '')} {fl.get('op', '')} {fl.get('impl', '')} "
              f"{fl.get('what', '')}\n{fl.get('traceback', '')}")
    for c in results.get("copy_bandwidth", []):
        print(f"copy {c['bytes'] / 2**20:.0f} MiB moved: " + ", ".join(f"{k} {v:.0f} GB/s" for k, v in c["by_method"].items()))
    for t in results.get("targets", []):
        print(f"target {t['impl']} {t['size']}: {t['target']}: {t['measured']:.2f} {'met' if t['met'] else 'NOT met'}")
    if results["rows"]:
        print(table(results["rows"]))
    return status


if __name__ == "__main__":
    sys.exit(main())
