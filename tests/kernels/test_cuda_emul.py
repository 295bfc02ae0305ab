"""The CUDA-on-CPU emulator (``tests/kernels/cuda_emul``) is itself right.

Kernels written as CUDA C (``tests/kernels/cuda_emul/selftest.cu``) are compiled with g++ against
``cuda_emul.h`` and run on NumPy arrays through ctypes. Each check compares with an oracle that is
independent of the emulator's code: NumPy for sums and copies, the CUDA C Programming Guide's
wording of the shuffle semantics for every flavour and width, exact integer arithmetic for the
votes. The launches that CUDA leaves undefined (divergent barriers, partial warps, a failing thread)
must come back as errors, never as a hang: every call runs with a timeout.
"""

from __future__ import annotations

import ctypes
import importlib.util
import re
import threading
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
EMUL = HERE / "cuda_emul"
_spec = importlib.util.spec_from_file_location("rf_cuda_emul_build", EMUL / "build.py")
B = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(B)

U, LL, D, F, I = ctypes.c_uint, ctypes.c_longlong, ctypes.c_double, ctypes.c_float, ctypes.c_int


def ptr(a: np.ndarray) -> ctypes.c_void_p:
    assert a.flags.c_contiguous
    return ctypes.c_void_p(a.ctypes.data)


def call(lib, name: str, *args, timeout: float = 60.0) -> tuple[int, str]:
    """(return code, error message) of a glue function, run in a daemon thread: a hung launch fails
    the test instead of hanging the run."""
    box: dict = {}

    def target():
        box["rc"] = getattr(lib, name)(*args)
        box["err"] = B.last_error(lib)  # per calling thread: read it in the same thread

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(timeout)
    if th.is_alive():
        pytest.fail(f"{name} did not return within {timeout} s (hung launch)")
    return box["rc"], box["err"]


def ok(lib, name: str, *args) -> None:
    rc, err = call(lib, name, *args)
    assert rc == 0, f"{name} failed: {err}"


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    why = B.available()
    if why is not None:
        pytest.skip(f"no C++ compiler for the CUDA emulator: {why}")
    return B.build([EMUL / "selftest.cu"], tmp_path_factory.mktemp("emul"))


# ------------------------------------------------------------------ block reduction
@pytest.mark.parametrize(
    "dtype, grid, block, n, m",
    [
        (np.float64, 3, 32, 7, 100),  # one warp: the shared-memory stage sees a single partial
        (np.float64, 2, 96, 5, 1000),  # 3 warps: warp 0 also reads lanes nobody wrote this row
        (np.float32, 4, 256, 9, 513),  # 8 warps, rows shorter than 2 strides
        (np.float64, 1, 1024, 2, 3000),  # the largest block
    ],
)
def test_block_sum_over_grid_stride_rows(lib, dtype, grid, block, n, m):
    rng = np.random.default_rng(block)
    x = rng.integers(-1000, 1000, size=(n, m)).astype(dtype)  # integers: every order sums exactly
    y = np.full(n, np.nan, dtype)
    owner = np.full(n, -1, np.int32)
    name = "rf_t_rowsum_f64" if dtype == np.float64 else "rf_t_rowsum_f32"
    ok(lib, name, U(grid), U(block), ptr(x), ptr(y), ptr(owner), LL(n), LL(m))
    assert np.array_equal(y, x.sum(axis=1, dtype=np.float64).astype(dtype))
    assert np.array_equal(owner, np.arange(n) % grid)  # row r went to block r mod grid


# ------------------------------------------------------------------ shuffles
def expected_source(kind: str, lane: int, a: int, width: int) -> int:
    """The source lane per the CUDA C Programming Guide (warp shuffle functions), for 0 <= a < 32
    (idx: any int). Lanes form segments of `width`; out-of-range sources leave a lane its value."""
    seg = lane - lane % width
    if kind == "idx":  # "srcLane outside [0:width-1]: the value of var held by srcLane modulo width"
        return seg + a % width
    if kind == "up":  # lane - delta, unless that leaves the segment at its start
        return lane - a if lane % width >= a else lane
    if kind == "down":  # lane + delta, unless that leaves the segment at its end
        return lane + a if lane % width + a < width else lane
    # xor: "can access elements from earlier groups ... later groups return their own value"
    return lane ^ a if (lane ^ a) < seg + width else lane


SHFL_TYPES = {  # glue suffix: (dtype, values for threads 0..63 with distinct high and low bits)
    "f32": (np.float32, lambda t: np.float32(1.5) + t * np.float32(0.25)),
    "f64": (np.float64, lambda t: 1.0 + t * (1 + 2.0**-40)),
    "i32": (np.int32, lambda t: -(t * 65537 + 3)),
    "u32": (np.uint32, lambda t: 0xF0000000 + t * 65537),
    "i64": (np.int64, lambda t: -(t * (2**33 + 1) + 7)),
    "u64": (np.uint64, lambda t: 0xF000000000000000 + t * (2**33 + 1)),
}


@pytest.mark.parametrize("suffix", list(SHFL_TYPES))
def test_shuffle_lane_semantics(lib, suffix):
    dtype, value = SHFL_TYPES[suffix]
    block = 64  # two warps: each warp exchanges only within itself
    vals = np.array([value(t) for t in range(block)], dtype)
    rng = np.random.default_rng(7)
    cases = []  # (kind, per-lane argument, width)
    kinds = {"idx": 0, "up": 1, "down": 2, "xor": 3}
    for width in (32, 16, 8, 1):
        for d in (0, 1, 2, 5, 16, 31):
            cases += [("up", [d] * block, width), ("down", [d] * block, width), ("xor", [d] * block, width)]
        cases.append(("idx", [3] * block, width))
        cases.append(("idx", list(rng.integers(-40, 72, block)), width))  # per-lane sources, out of range too
    P = len(cases)
    kind = np.array([kinds[k] for k, _, _ in cases], np.int32)
    arg = np.array([a for _, a, _ in cases], np.int32)
    width = np.array([w for *_, w in cases], np.int32)
    out = np.zeros((P, block), dtype)
    ok(lib, f"rf_t_shfl_{suffix}", U(block), ptr(vals), ptr(out), ptr(kind), ptr(arg), ptr(width), I(P))
    for p, (k, a, w) in enumerate(cases):
        src = [32 * (t // 32) + expected_source(k, t % 32, int(a[t]), w) for t in range(block)]
        assert np.array_equal(out[p], vals[src]), f"{k} arg={a[:4]}... width={w}"


def test_votes_and_counting_barriers(lib):
    block = 96
    pred = np.zeros(block, np.int32)
    pred[[0, 5, 31, 33]] = 1  # warp 0: some; warp 1: one; warp 2: none
    pred[64:] = 0
    outs = [np.zeros(block, np.uint32)] + [np.zeros(block, np.int32) for _ in range(5)]
    ok(lib, "rf_t_votes_run", U(block), ptr(pred), *map(ptr, outs))
    ballot, any_, all_, count, band, bor = outs
    want = [(1 << 0) | (1 << 5) | (1 << 31), 1 << 1, 0]
    assert list(ballot) == [want[t // 32] for t in range(block)]
    assert list(any_) == [int(want[t // 32] != 0) for t in range(block)]
    assert not all_.any()
    pred[:32] = 1
    ok(lib, "rf_t_votes_run", U(block), ptr(pred), *map(ptr, outs))
    assert list(outs[2][:32]) == [1] * 32 and not outs[2][32:].any()  # __all_sync per warp
    assert set(outs[3]) == {33} and set(outs[4]) == {0} and set(outs[5]) == {1}  # count / and / or
    pred[:] = 1
    ok(lib, "rf_t_votes_run", U(block), ptr(pred), *map(ptr, outs))
    assert set(outs[3]) == {block} and set(outs[4]) == {1}


# ------------------------------------------------------------------ barriers order memory
def test_syncthreads_orders_shared_memory(lib):
    """Reversing rows through shared memory is right with the barriers, even when half the block
    is slow to write; the same kernel without them reads slots before they are written."""
    grid, block, rows = 2, 64, 4
    x = np.arange(rows * block, dtype=np.float64).reshape(rows, block)
    y = np.full_like(x, np.nan)
    ok(lib, "rf_t_reverse_run", U(grid), U(block), ptr(x), ptr(y), LL(rows), I(1), I(5))
    assert np.array_equal(y, x[:, ::-1])
    y[:] = np.nan
    ok(lib, "rf_t_reverse_run", U(grid), U(block), ptr(x), ptr(y), LL(rows), I(0), I(5))
    assert not np.array_equal(y, x[:, ::-1])  # the test kernel does depend on the barrier


# ------------------------------------------------------------------ vector memory access
def test_vector_types_have_cuda_layout(lib):
    out = np.zeros(16, np.int64)
    lib.rf_t_layout(ptr(out))
    # sizeof, alignof: float2 float4 double2 double4 int2 int4 uint2 uint4 (CUDA's vector_types.h)
    assert list(out) == [8, 8, 16, 16, 16, 16, 32, 16, 8, 8, 16, 16, 8, 8, 16, 16]


def test_float4_and_double2_loads_and_stores(lib):
    x32 = np.arange(1, 4 * 37 + 1, dtype=np.float32) / 3  # 37 vectors: the grid-stride loop wraps
    y32 = np.zeros_like(x32)
    assert x32.ctypes.data % 16 == 0 and y32.ctypes.data % 16 == 0
    ok(lib, "rf_t_vec_f32_run", U(2), U(32), ptr(x32), ptr(y32), LL(37), F(1.5))
    want = (x32 * np.float32(1.5)).reshape(-1, 4)[:, ::-1].ravel()  # components reversed per vector
    assert np.array_equal(y32, want)
    x64 = np.linspace(-2, 2, 2 * 41)
    y64 = np.zeros_like(x64)
    ok(lib, "rf_t_vec_f64_run", U(1), U(32), ptr(x64), ptr(y64), LL(41), D(-0.75))
    assert np.array_equal(y64, (x64 * -0.75).reshape(-1, 2)[:, ::-1].ravel())


def test_misaligned_vector_load_is_an_error(lib):
    buf = np.zeros(4 * 9, np.float32)
    y = np.zeros_like(buf)
    assert buf.ctypes.data % 16 == 0
    rc, err = call(lib, "rf_t_vec_f32_run", U(1), U(32), ctypes.c_void_p(buf.ctypes.data + 4), ptr(y), LL(8), F(1.0))
    assert rc == 1 and "__ldg: misaligned address" in err and "block 0 of 1" in err


# ------------------------------------------------------------------ arithmetic, atomics
def test_no_contraction_and_explicit_fma(lib):
    """a·b + c with a = b = 1 + 2^-30, c = -(1 + 2^-29): rounded separately it is 0, fused 2^-60;
    in float, the same with 2^-12 / 2^-11 / 2^-24."""
    e, ef = 2.0**-30, 2.0**-12
    inp = np.array([1 + e, 1 + e, -(1 + 2 * e), 1 + ef, 1 + ef, -(1 + 2 * ef)])
    out = np.full(4, np.nan)
    ok(lib, "rf_t_arith_run", ptr(inp), ptr(out))
    assert list(out) == [0.0, 2.0**-60, 2.0**-24, 0.0]


def test_atomic_add(lib):
    """Single adds return distinct old values; 64 threads racing for one address lose nothing."""
    for grid, block, reps in ((3, 64, 1), (1, 64, 50000)):
        acc_d, acc_f = np.zeros(1), np.zeros(1, np.float32)
        old = np.full(grid * block, np.nan)
        ok(lib, "rf_t_atomics_run", U(grid), U(block), ptr(acc_d), ptr(acc_f), ptr(old), I(reps))
        n = grid * block * reps  # float32 counts halves exactly up to 2^25
        assert acc_d[0] == n and acc_f[0] == n / 2
        if reps == 1:
            assert sorted(old) == list(range(n))  # every thread saw a distinct old value


# ------------------------------------------------------------------ what the emulator rejects
@pytest.mark.parametrize("block", [0, 16, 48, 1000, 2048])
def test_launch_needs_full_warps(lib, block):
    rc, err = call(lib, "rf_t_faulty_run", U(1), U(block), I(6), ptr(np.zeros(64)))
    assert rc == 1 and f"invalid block: {block} threads" in err and "multiple of 32" in err


@pytest.mark.parametrize(
    "mode, grid, block, pattern",
    [
        (0, 1, 64, r"deadlock: every live thread waits .*: 32 at __syncthreads; warp 0: 16 lane\(s\) at __shfl"),
        (1, 2, 64, r"^block 0 of 2 \(64 threads\): thread 37: device assert failed: t != 37"),
        # whether the others already wait when thread 5 returns is up to the scheduler: either way
        (2, 1, 32, r"thread 5 returned while|divergent block: thread 0 passed 1 block barriers .*, thread 5 0$"),
        (7, 1, 32, r"thread 5 returned while 31 thread\(s\) of its block wait for it in __syncthreads$"),
        (3, 1, 32, r"__shfl_down_sync with mask 0x0000ffff"),
        (4, 1, 32, r"divergent warp: thread \d+ called (__syncwarp|__shfl_xor_sync) while"),
        (5, 1, 32, r"wait for it in __shfl_xor_sync|divergent warp: lane 0 of warp 0 passed 2 .* lane 16 0$"),
    ],
    ids=["deadlock", "assert", "early-return", "late-return", "partial-mask", "mixed-ops", "half-warp"],
)
def test_undefined_launches_are_errors_not_hangs(lib, mode, grid, block, pattern):
    out = np.zeros(block)
    rc, err = call(lib, "rf_t_faulty_run", U(grid), U(block), I(mode), ptr(out))
    assert rc == 1 and re.search(pattern, err), err
    # the library is usable afterwards: no held lock, no stale state, the error cleared
    out = np.zeros(64)
    assert call(lib, "rf_t_faulty_run", U(2), U(64), I(6), ptr(out)) == (0, "")
    assert list(out[:32]) == [t ^ 1 for t in range(32)] and not out[32:].any()


def test_bad_grid_and_builtins_outside_a_kernel(lib):
    rc, err = call(lib, "rf_t_faulty_run", U(0), U(32), I(6), ptr(np.zeros(64)))
    assert rc == 1 and "invalid grid: 0 blocks" in err
    rc, err = call(lib, "rf_t_builtin_outside_kernel")
    assert rc == 1 and "outside a kernel" in err


# ------------------------------------------------------------------ the build
def test_build_cache_follows_included_files(tmp_path):
    if B.available() is not None:
        pytest.skip("no C++ compiler for the CUDA emulator")
    src, inc, out = tmp_path / "glue.cpp", tmp_path / "value.h", tmp_path / "out"
    src.write_text('#include "value.h"\nextern "C" int value(void) { return VALUE; }\n')
    inc.write_text("#define VALUE 1\n")
    first = B.build([src], out)
    assert first.value() == 1
    assert B.build([src], out)._name == first._name  # nothing changed: the same library
    inc.write_text("#define VALUE 2\n")  # only an included file changes
    second = B.build([src], out)
    assert second._name != first._name and second.value() == 2
    assert B.build([src], out, extra_flags=("-DVALUE_UNUSED",))._name != second._name  # flags count
    with pytest.raises(B.BuildError, match="VALUE"):
        inc.write_text("")
        B.build([src], out)


def test_available_names_a_missing_compiler(monkeypatch):
    monkeypatch.setattr(B, "CXX", "no-such-compiler-rf")
    assert B.available.__wrapped__() == "no-such-compiler-rf not found on PATH"
