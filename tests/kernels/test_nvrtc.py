"""``tests/kernels/nvrtc.py``: CUDA C++ to PTX for sm_90 through NVRTC, without a GPU.

The kernel below uses what rawflow's CUDA C kernels rely on: templates instantiated through name
expressions (the lowered names are what ``cupy.RawModule`` looks up), a ``__shfl_down_sync`` warp
tree reduction and 128-bit ``float4`` global loads. Each feature is checked in the PTX by the
instruction it must produce. Skips only where no NVRTC library exists; with the ``ptx`` extra
installed (CI) the wheel's NVRTC is found and everything here runs.
"""

from __future__ import annotations

import os
import re

import pytest

import nvrtc

LIB = nvrtc.find_nvrtc()
needs_nvrtc = pytest.mark.skipif(
    LIB is None, reason="no NVRTC library: pip install -e '.[ptx]' (nvidia-cuda-nvrtc-cu12) or a CUDA toolkit")

SOURCE = r"""
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    #pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1)
        v += __shfl_down_sync(0xffffffffu, v, offset);
    return v;
}

// Sum of n4 float4 values (4·n4 floats) into out[0]: vector loads, per-warp tree, one atomic per warp.
template <typename Acc, int BLOCK>
__global__ void __launch_bounds__(BLOCK) sum4(const float4* __restrict__ x, Acc* __restrict__ out, int n4) {
    Acc acc = Acc(0);
    for (int i = blockIdx.x * BLOCK + threadIdx.x; i < n4; i += gridDim.x * BLOCK) {
        const float4 v = x[i];
        if constexpr (sizeof(Acc) == 8)
            acc += (Acc(v.x) + Acc(v.y)) + (Acc(v.z) + Acc(v.w));
        else
            acc += (v.x + v.y) + (v.z + v.w);
    }
    acc = warp_sum(acc);
    if ((threadIdx.x & 31) == 0) atomicAdd(out, acc);
}
"""
NAMES = ["sum4<float, 256>", "sum4<double, 128>"]


@pytest.fixture(scope="module")
def compiled():
    return nvrtc.compile_ptx(SOURCE, NAMES)


@needs_nvrtc
def test_ptx_targets_sm90(compiled):
    ptx, _ = compiled
    assert re.search(r"^\.target\s+sm_90\b", ptx, re.M), ptx[:400]


@needs_nvrtc
def test_warp_shuffle_and_vector_loads_in_ptx(compiled):
    ptx, _ = compiled
    assert "shfl.sync.down" in ptx
    assert re.search(r"\bld\.global(\.nc)?\.v4\.f32\b", ptx), "float4 loads did not become 128-bit vector loads"
    assert "atom.global.add.f64" in ptx and "atom.global.add.f32" in ptx  # both instantiations are in


@needs_nvrtc
def test_lowered_names_are_the_ptx_entries(compiled):
    ptx, lowered = compiled
    assert set(lowered) == set(NAMES)
    assert len(set(lowered.values())) == len(NAMES)  # distinct instantiations, distinct symbols
    entries = set(re.findall(r"\.entry\s+(\w+)\s*\(", ptx))
    for expr, sym in lowered.items():
        assert sym.startswith("_Z") and sym != expr, (expr, sym)  # C++-mangled, not the source spelling
        assert sym in entries, f"{expr} lowered to {sym}, not among the PTX entries {sorted(entries)}"


@needs_nvrtc
def test_other_arch_and_options_pass_through():
    ptx, lowered = nvrtc.compile_ptx(SOURCE, ["sum4<float, 64>"], arch="compute_80", options=("-DUNUSED=1",))
    assert re.search(r"^\.target\s+sm_80\b", ptx, re.M)
    assert lowered["sum4<float, 64>"] in ptx


@needs_nvrtc
def test_syntax_error_raises_with_the_compile_log():
    bad = "__global__ void k(float* x) {\n    x[0] = ;\n}\n"
    with pytest.raises(RuntimeError) as info:
        nvrtc.compile_ptx(bad, [], name="broken.cu")
    msg = str(info.value)
    assert "NVRTC_ERROR_COMPILATION" in msg
    assert "broken.cu(2): error: expected an expression" in msg  # the log itself: file, line, diagnostic
    assert "x[0] = ;" in msg  # NVRTC quotes the offending line


@needs_nvrtc
def test_bad_option_and_bad_name_expression_raise():
    good = "__global__ void k(float* x) { x[0] = 1.0f; }"
    with pytest.raises(RuntimeError, match="--no-such-option"):
        nvrtc.compile_ptx(good, [], options=("--no-such-option",))
    with pytest.raises(RuntimeError, match="nothere"):
        nvrtc.compile_ptx(good, ["nothere<int>"])


def test_find_nvrtc_prefers_the_wheel_then_the_newest(tmp_path, monkeypatch):
    """Discovery order on fake files: the wheel's ``libnvrtc.so.N`` (never its ``.alt`` or
    ``-builtins`` siblings) before ``$CUDA_HOME``; within a directory the highest version."""
    real_wheel = nvrtc.wheel_dir("cuda_nvrtc")
    wheel, home = tmp_path / "wheel", tmp_path / "home"
    for d, names in ((wheel / "lib", ["libnvrtc.alt.so.12", "libnvrtc-builtins.so.12.9", "libnvrtc.so.12"]),
                     (home / "lib64", ["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.13.0.48", "libnvrtc.so.9.2"])):
        d.mkdir(parents=True)
        for n in names:
            (d / n).write_bytes(b"")
    monkeypatch.setenv("CUDA_HOME", str(home))
    monkeypatch.setattr(nvrtc, "wheel_dir", lambda component: wheel if component == "cuda_nvrtc" else None)
    assert nvrtc.find_nvrtc() == str(wheel / "lib" / "libnvrtc.so.12")
    monkeypatch.setattr(nvrtc, "wheel_dir", lambda component: None)
    assert nvrtc.find_nvrtc() == str(home / "lib64" / "libnvrtc.so.13.0.48")
    if real_wheel is not None:  # the ptx extra installed (CI): the library the tests above used is the wheel's
        assert os.path.realpath(LIB).startswith(os.path.realpath(real_wheel) + os.sep), LIB
        assert nvrtc.version(LIB)[0] >= 12
