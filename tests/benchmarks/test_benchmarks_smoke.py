"""Smoke test of ``benchmarks/``: every CPU suite in ``--quick`` mode, bring-your-own-kernel, and the
GPU script's ``--dry-run``. Tiny sizes, one or two repeats; nothing here asserts a time (the
numbers of a quick run mean nothing), only that every suite runs, every implementation agrees
with the float64 reference, and failures are reported as failures.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _package():
    """The benchmarks package: ``rawflow.benchmarks`` when installed that way, else ``benchmarks``
    from the checkout."""
    try:
        return importlib.import_module("rawflow.benchmarks")
    except ImportError:
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        return importlib.import_module("benchmarks")


B = _package()
HAS_TORCH = importlib.util.find_spec("torch") is not None


def _run(tmp_path, *argv):
    out = tmp_path / "results.json"
    rc = B.main(["--quick", "--quiet", "--json", str(out), *argv])
    return rc, json.loads(out.read_text())


def _rows(results, suite):
    return results["suites"][suite]["rows"]


@pytest.fixture(autouse=True)
def _clean_registry(monkeypatch):
    # main() sets OMP_WAIT_POLICY for the runtimes it loads; keep it out of the other tests' environment
    monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    B.unregister()
    yield
    B.unregister()


# ``quality`` (training runs, not timings) has its own quick test: tests/benchmarks/test_torch_yardstick.py
@pytest.mark.parametrize("suite", [s for s in B.SUITES if s != "quality"])
def test_quick_suite_runs_and_agrees_with_float64(tmp_path, suite):
    rc, res = _run(tmp_path, suite)
    assert rc == 0, res["suites"][suite]
    rows = _rows(res, suite)
    assert rows, f"{suite}: no rows"
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok, f"{suite}: nothing was measured"
    assert not [r for r in rows if r["status"] == "error"], [r["note"] for r in rows if r["status"] == "error"]
    for r in ok:
        assert r["repeats"] >= 1 and r["median_s"] > 0 and r["min_s"] <= r["median_s"] <= r["max_s"]
        if r["err"] is not None:
            assert r["ok"] is not False, r
    # every row of a suite has its baseline measured in the same run
    assert any(r["ratio"] == 1.0 for r in ok)
    # the results file says where and with what it was measured
    meta = res["meta"]
    for key in ("date", "cpu", "python", "versions", "git_commit", "runtime"):
        assert key in meta
    assert meta["versions"]["numpy"] == np.__version__
    if not HAS_TORCH and suite in ("coupling", "actnorm", "glow"):
        torch_rows = [r for r in rows if r["impl"].startswith("torch")]
        assert torch_rows and all(r["status"] == "skipped" for r in torch_rows)


def test_operation_suites_report_bandwidth_and_memory(tmp_path):
    rc, res = _run(tmp_path, "coupling", "actnorm", "--no-torch")
    assert rc == 0
    for suite in ("coupling", "actnorm"):
        ok = [r for r in _rows(res, suite) if r["status"] == "ok"]
        assert all(r["gbps"] > 0 and r["copy_gbps"] > 0 and r["pct_copy"] > 0 for r in ok)
        assert all(r["peak_bytes"] is not None for r in ok if r["mem_method"] == "tracemalloc")
        assert {"numpy reference", "rawflow numba (1 thr)"} <= {r["impl"] for r in ok}
    assert res["copy_bandwidth"]


def test_markdown_and_list(tmp_path, capsys):
    md, js = tmp_path / "tables.md", tmp_path / "r.json"
    assert B.main(["conv1x1", "--quick", "--quiet", "--no-torch", "--markdown", str(md), "--json", str(js)]) == 0
    text = md.read_text()
    assert "### conv1x1" in text and "| case | op | impl |" in text
    again = tmp_path / "again.md"
    assert B.main(["--render", str(js), "--markdown", str(again)]) == 0  # tables back from the JSON
    assert again.read_text() == text
    capsys.readouterr()
    assert B.main(["--list"]) == 0
    listed = capsys.readouterr().out
    for op in ("coupling.forward", "coupling.backward", "actnorm.forward", "conv1x1.logdet"):
        assert op in listed


def test_unknown_suite_is_an_error(capsys):
    assert B.main(["nosuchsuite", "--quick", "--quiet"]) == 2


# ------------------------------------------------------------------------------------ your kernel
def _forward(x, h, scale):
    m = x.shape[1]
    return x * np.exp(h[:, :m]) + h[:, m:], h[:, :m].sum(axis=1)


def _backward(x, h, gy, glogdet, scale):
    m = x.shape[1]
    gys = gy * np.exp(h[:, :m])
    return gys, np.concatenate([gys * x + glogdet[:, None], gy], axis=1)


def _wrong_forward(x, h, scale):
    m = x.shape[1]
    return x * np.exp(h[:, :m]) + 1.001 * h[:, m:], h[:, :m].sum(axis=1)


def test_register_your_kernel_timed_and_checked(tmp_path):
    B.register("coupling.forward", "mine", _forward)
    B.register("coupling.backward", "mine", _backward)
    B.register("coupling.forward", "wrong", _wrong_forward)

    @B.register("coupling.inverse", "decorated")
    def _inverse(y, h, scale):
        m = y.shape[1]
        return (y - h[:, m:]) * np.exp(-h[:, :m]), -h[:, :m].sum(axis=1)

    rc, res = _run(tmp_path, "coupling", "--no-torch")
    rows = {(r["op"], r["impl"]): r for r in _rows(res, "coupling")}
    for op in ("coupling.forward", "coupling.backward", "coupling.fwd+bwd"):
        r = rows[(op, "mine")]  # fwd+bwd: composed from the two registered parts
        assert r["status"] == "ok" and r["ok"] is True and r["kind"] == "user", r
        assert r["err"] < 1e-6 and r["ratio"] > 0 and r["baseline"] == "numpy reference"
    assert rows[("coupling.inverse", "decorated")]["ok"] is True
    assert _inverse(np.zeros((1, 2)), np.zeros((1, 4)), "exp")[0].shape == (1, 2)  # the decorator returns fn
    wrong = rows[("coupling.forward", "wrong")]
    assert wrong["status"] == "ok" and wrong["ok"] is False and wrong["err"] > 1e-4
    assert rc == 1  # a wrong implementation fails the run


def test_prepare_hook_and_errors_are_reported(tmp_path):
    calls = []

    def prepare(x, bias, log_scale):
        calls.append(x.shape)  # untimed: allocate, compile, build caches here
        view = (1, -1, 1, 1)

        def run():
            z = (x + bias.reshape(view)) * np.exp(log_scale).reshape(view)
            return z, np.full(x.shape[0], np.prod(x.shape[2:]) * log_scale.sum(), dtype=x.dtype)

        return run

    def broken(x, bias, log_scale):
        raise RuntimeError("boom")

    B.register("actnorm.forward", "prepared", prepare=prepare)
    B.register("actnorm.forward", "broken", broken)
    rc, res = _run(tmp_path, "actnorm", "--no-torch")
    rows = {(r["op"], r["impl"]): r for r in _rows(res, "actnorm")}
    assert calls and rows[("actnorm.forward", "prepared")]["ok"] is True
    assert rows[("actnorm.forward", "broken")]["status"] == "error"
    assert "boom" in rows[("actnorm.forward", "broken")]["note"]
    assert rc == 1


def test_impl_option_and_plugin(tmp_path):
    mod = tmp_path / "my_kernels_smoke.py"
    mod.write_text(textwrap.dedent("""
        import numpy as np

        def forward(x, h, scale):
            m = x.shape[1]
            return x * np.exp(h[:, :m]) + h[:, m:], h[:, :m].sum(axis=1)

        def logdet(w):
            return np.linalg.slogdet(w)[1]
    """))
    plugin = tmp_path / "plugin_smoke.py"
    plugin.write_text(textwrap.dedent(f"""
        import importlib
        B = importlib.import_module({B.__name__!r})
        B.register("conv1x1.logdet", "from plugin", lambda w: __import__("numpy").linalg.slogdet(w)[1])
    """))
    rc, res = _run(tmp_path, "coupling", "conv1x1", "--no-torch",
                   "--impl", f"coupling.forward={mod}:forward#cli kernel",
                   "--impl", f"conv1x1.logdet={mod}:logdet", "--plugin", str(plugin),
                   "--only", "cli kernel", "logdet", "from plugin")
    assert rc == 0
    names = {(r["op"], r["impl"]): r for s in ("coupling", "conv1x1") for r in _rows(res, s)}
    assert names[("coupling.forward", "cli kernel")]["ok"] is True
    assert names[("conv1x1.logdet", "logdet")]["ok"] is True
    assert names[("conv1x1.logdet", "from plugin")]["ok"] is True
    with pytest.raises(SystemExit):
        B.main(["--quick", "--impl", "no.such.op=x:y"])


def test_registrations_shared_across_import_names():
    """``benchmarks`` and ``rawflow.benchmarks`` are two names of one package: a plugin written
    against either must register into the store the command reads."""
    other = "rawflow.benchmarks" if B.__name__ == "benchmarks" else "benchmarks"
    spec = importlib.util.spec_from_file_location(f"_alias_{other.replace('.', '_')}",
                                                  REPO / "benchmarks" / "__init__.py",
                                                  submodule_search_locations=[str(REPO / "benchmarks")])
    alias = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = alias
    try:
        spec.loader.exec_module(alias)
        alias.register("coupling.forward", "via alias", _forward)
        assert any(u.name == "via alias" for u in B.user_implementations("coupling.forward"))
    finally:
        for name in [n for n in sys.modules if n == spec.name or n.startswith(spec.name + ".")]:
            del sys.modules[name]


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch not installed")
def test_torch_user_kernel(tmp_path):
    def torch_forward(x, h, scale):
        import torch

        m = x.shape[1]
        return x * torch.exp(h[:, :m]) + h[:, m:], h[:, :m].sum(dim=1)

    B.register("coupling.forward", "mine (torch)", torch_forward, array="torch")
    rc, res = _run(tmp_path, "coupling", "--only", "mine (torch)")
    rows = _rows(res, "coupling")
    row = next(r for r in rows if r["impl"] == "mine (torch)")
    assert rc == 0 and row["ok"] is True and row["mem_method"] == "torch" and row["peak_bytes"] > 0
    assert {r["impl"] for r in rows} == {"numpy reference", "mine (torch)"}  # --only keeps the baseline


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch not installed")
@pytest.mark.parametrize("kind", ["glow-lu", "glow-dense-exp", "glow-additive", "realnvp"])
def test_torch_baseline_is_the_same_model(kind):
    """The glow and sampling suites' PyTorch rows evaluate rawflow's own model: loss, every gradient
    and the inverse agree with rawflow's float64 pass to round-off."""
    import torch

    from rawflow import FlowModel, StandardNormal, realnvp, tree
    from rawflow.models.architectures import glow

    tf = importlib.import_module(B.__name__ + ".torch_flows")
    shape = (6,) if kind == "realnvp" else (2, 8, 8)
    flow = {"glow-lu": lambda: glow(2, 2, 8, shape), "realnvp": lambda: realnvp(6, 4, (16, 16)),
            "glow-dense-exp": lambda: glow(2, 2, 8, shape, permutation="dense", scale="exp"),
            "glow-additive": lambda: glow(2, 2, 8, shape, coupling="additive")}[kind]()
    model = FlowModel(flow, StandardNormal((int(np.prod(shape)),)))
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(4, *shape))
    params = tree.map(lambda a: a + 0.05 * rng.normal(size=a.shape), model.init(rng, x))
    same = tf.check_same(model, params, x)
    # float64 through a few dozen layers: ~100 roundings of O(1) values
    assert same["loss_rel"] < 1e-12 and same["grad_rel"] < 1e-12, same
    z = model.encode(params, x)
    back = tf.inverse(flow, tf.to_torch(params["flow"]), torch.from_numpy(z)).numpy()
    # the inverse of a near-orthogonal 1×1 conv via inv(W): cond(W)·eps-sized differences
    assert np.max(np.abs(back - x)) < 1e-7


# ------------------------------------------------------------------------------------ GPU script
GPU = REPO / "benchmarks" / "gpu_suite.py"


def _gpu_module():
    spec = importlib.util.spec_from_file_location("_gpu_suite_smoke", GPU)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_suite_dry_run_and_arguments(capsys):
    g = _gpu_module()
    assert g.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    for size in ("64×3072", "256×12288", "1024×98304", "4096×16384"):
        assert size in out
    assert g.main(["--dry-run", "--quick", "--ops", "fwd+bwd", "--impls", "cuda-c", "torch eager"]) == 0
    assert "1 ops × 2 implementations" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        g.main(["--sizes", "64by3072", "--dry-run"])
    with pytest.raises(SystemExit):
        g.main(["--threads", "100", "--dry-run"])
    # importing the script touched no GPU library
    assert "cupy" not in sys.modules or importlib.util.find_spec("cupy") is not None


def test_gpu_suite_as_a_script():
    r = subprocess.run([sys.executable, str(GPU), "--dry-run"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "dry run" in r.stdout


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy present: would run on the GPU")
def test_gpu_suite_without_cupy_reports_and_writes_json(tmp_path):
    g = _gpu_module()
    out = tmp_path / "gpu.json"
    assert g.main(["--quick", "--json", str(out)]) == 2
    res = json.loads(out.read_text())
    assert "cupy" in res["fatal"] and res["rows"] == []


SHIM = r"""
#include <cmath>
struct float4 { float x, y, z, w; };
struct dim3_ { unsigned x; };
static dim3_ threadIdx, blockIdx, blockDim, gridDim;
#define __device__
#define __forceinline__ inline
#define __global__
#define __restrict__
#define __shared__ static
#define __syncthreads()
template <class T> T __ldcs(const T *p) { return *p; }
template <class T> void __stcs(T *p, T v) { *p = v; }
inline double __shfl_down_sync(unsigned, double, int) { return 0.0; }  // one thread per block here
"""

LAUNCH = r"""
extern "C" void run_forward(const float *x, const float *h, float *y, float *ld, long long N, long long M, int k,
                            float c) {
    blockDim.x = 1; gridDim.x = (unsigned)N; threadIdx.x = 0;
    for (long long b = 0; b < N; ++b) { blockIdx.x = (unsigned)b; affine_forward_f32(x, h, y, ld, N, M, k, c); }
}
extern "C" void run_backward(const float *x, const float *h, const float *gy, const float *gl, float *gx,
                             float *gh, long long N, long long M, int k, float c) {
    blockDim.x = 1; gridDim.x = (unsigned)N; threadIdx.x = 0;
    for (long long b = 0; b < N; ++b) { blockIdx.x = (unsigned)b; affine_backward_f32(x, h, gy, gl, gx, gh, N, M, k, c); }
}
"""


def _host_kernels(tmp_path, source):
    """The CUDA C source compiled for the host (one thread per block) through ``SHIM``; ctypes handles."""
    import ctypes

    src = tmp_path / "k.cpp"
    src.write_text(SHIM + source + LAUNCH)
    lib = tmp_path / "k.so"
    r = subprocess.run(["g++", "-O1", "-shared", "-fPIC", "-o", str(lib), str(src)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    k = ctypes.CDLL(str(lib))
    ptr = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
    k.run_forward.argtypes = [ptr, ptr, ptr, ptr, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_int, ctypes.c_float]
    k.run_backward.argtypes = [ptr] * 6 + [ctypes.c_longlong, ctypes.c_longlong, ctypes.c_int, ctypes.c_float]
    return k


NO_GXX = shutil.which("g++") is None


@pytest.mark.skipif(NO_GXX, reason="no host C++ compiler")
def test_cuda_c_kernels_maths_on_the_host(tmp_path):
    """The CUDA C pair's per-element maths, layout (float4 and scalar paths) and log-det, compiled
    for the host with one thread per block, against rawflow's float64 reference. (The warp and
    block reductions are the GPU's; under this shim they are identities.)"""
    from rawflow import AffineTransform

    g = _gpu_module()
    k = _host_kernels(tmp_path, g.CUDA_SOURCE)
    rng = np.random.default_rng(0)
    for (n, m) in ((3, 8), (2, 7)):  # float4 path, scalar path
        for scale, kind in g.SCALES.items():
            x = rng.standard_normal((n, m)).astype(np.float32)
            h = (0.7 * rng.standard_normal((n, 2 * m))).astype(np.float32)
            gy = rng.standard_normal((n, m)).astype(np.float32)
            gl = rng.standard_normal(n).astype(np.float32)
            y, ld = np.empty_like(x), np.empty(n, np.float32)
            gx, gh = np.empty_like(x), np.empty_like(h)
            k.run_forward(x, h, y, ld, n, m, kind, 2.0)
            k.run_backward(x, h, gy, gl, gx, gh, n, m, kind, 2.0)
            tr = AffineTransform(scale)
            y64, ld64, cache = tr.forward(x.astype(np.float64), h.astype(np.float64))
            gx64, gh64 = tr.backward(cache, gy.astype(np.float64), gl.astype(np.float64))
            for a, e in ((y, y64), (ld, ld64), (gx, gx64), (gh, gh64)):
                # float32 arithmetic on O(1) values: a few ulp of the largest term
                assert np.max(np.abs(a - e)) <= 1e-5 * max(1.0, np.max(np.abs(e))), (scale, n, m)


def _fake_cupy(kernels):
    """Enough of CuPy's API, on NumPy and the host-compiled kernels, to run ``gpu_suite`` end to end
    on a machine without a GPU: its control flow, checks, timing loop, JSON and table."""
    import ctypes
    import time
    import types

    class Arr(np.ndarray):  # CuPy arrays expose .data.ptr
        @property
        def data(self):
            return types.SimpleNamespace(ptr=self.ctypes.data)

    class Event:
        def record(self, stream=None):
            self.t = time.perf_counter()

        def synchronize(self):
            pass

    class RawModule:
        def __init__(self, code, options=()):
            self.code = code

        def get_function(self, name):
            fn = kernels.run_forward if name == "affine_forward_f32" else kernels.run_backward
            return lambda grid, block, args: fn(*args)

    class RandomState:
        def __init__(self, seed):
            self.rng = np.random.default_rng(seed)

        def standard_normal(self, size, dtype=np.float64):
            return self.rng.standard_normal(size).astype(dtype)

    cp = types.ModuleType("cupy")
    for name in ("float32", "float64", "int32", "int64", "ndarray", "abs", "concatenate", "exp", "max", "isfinite",
                 "all", "empty", "empty_like", "asarray", "copyto"):
        setattr(cp, name, getattr(np, name))
    cp.ones = lambda *a, **k: np.ones(*a, **k).view(Arr)
    cp.from_dlpack = np.from_dlpack
    cp.RawModule = RawModule
    cp.random = types.SimpleNamespace(RandomState=RandomState)
    cp.get_default_memory_pool = lambda: types.SimpleNamespace(free_all_blocks=lambda: None)
    props = {"name": b"host (fake cupy)", "multiProcessorCount": 1, "totalGlobalMem": 2**30, "l2CacheSize": 2**16,
             "major": 0, "minor": 0}
    runtime = types.SimpleNamespace(
        getDeviceProperties=lambda i: props, driverGetVersion=lambda: 0, runtimeGetVersion=lambda: 0,
        memcpyDeviceToDevice=3, memcpyAsync=lambda dst, src, n, kind, stream: ctypes.memmove(dst, src, n))
    cp.cuda = types.SimpleNamespace(Event=Event, runtime=runtime,
                                    Device=lambda: types.SimpleNamespace(id=0, synchronize=lambda: None),
                                    get_elapsed_time=lambda a, b: 1e3 * (b.t - a.t))
    return cp


@pytest.mark.skipif(NO_GXX, reason="no host C++ compiler")
def test_gpu_suite_end_to_end_on_a_fake_device(tmp_path, monkeypatch):
    """The whole GPU script on NumPy posing as CuPy: the reference and CUDA C rows must run and pass
    their float64 check; numba-cuda and torch, which need a real device, must be reported as
    failures without stopping the run; JSON and table are written."""
    g = _gpu_module()
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(_host_kernels(tmp_path, g.CUDA_SOURCE)))
    out = tmp_path / "gpu.json"
    rc = g.main(["--sizes", "4x8", "3x6", "--repeats", "2", "--min-ms", "0.01", "--warmup", "1",
                 "--impls", "cupy reference", "cuda-c", "numba-cuda", "torch eager", "--json", str(out)])
    res = json.loads(out.read_text())
    rows = {(r["size"], r["op"], r["impl"]): r for r in res["rows"]}
    for size in ("4x8", "3x6"):  # float4 and scalar paths
        for op in g.OPS:
            for impl in ("cupy reference", "cuda-c"):
                r = rows[(size, op, impl)]
                assert r["status"] == "ok" and r["ok"] and r["err"] < 1e-6, r
                assert r["median_s"] > 0 and r["pct_copy"] > 0
            assert rows[(size, op, "cuda-c")]["x_cupy"] > 0
            for impl in ("numba-cuda", "torch eager"):
                assert rows[(size, op, impl)]["status"] in ("error", "skipped")
    assert rc == 1  # the failed implementations are failures
    assert res["device"]["name"] == "host (fake cupy)" and res["copy_bandwidth"]
