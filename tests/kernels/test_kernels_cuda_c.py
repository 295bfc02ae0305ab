"""CUDA C kernels (:mod:`rawflow.kernels.cuda_c_coupling`) without a GPU.

1. **Run them on the CPU.** ``kernels/cuda_c_coupling.cu`` is compiled with g++ against the
   emulator in ``tests/kernels/cuda_emul`` (each block's threads are OS threads; ``__syncthreads`` and the
   warp shuffles are real barriers and exchanges), through ``emul_coupling_glue.cpp``. The
   module's own host-side code (validation, the 16-byte-vector decision, the launch shape) drives
   it via ``runtime=``: only the allocation and the launch differ from a CuPy run. The checks are
   those of the numba-cuda simulator run (``cuda_sim_check.run_case``): every entry point, every
   scale map, both dtypes, against the long-double oracle of ``test_kernels_cpu.py`` in its "term
   units" (≤ 2 float64, ≤ 4 float32), exact log-det cancellation, the round trip, grid-size
   independence; here on both the vector and the scalar path and with several warps per block.
2. **Compile them for the H200.** NVRTC (the compiler CuPy's ``RawModule`` calls) builds the same
   source and name expressions for sm_90; the PTX must hold the warp shuffles and the 16-byte
   loads. Skips only where no NVRTC library is installed (CI installs the ``ptx`` extra).

``tests/kernels/gpu_check.py`` runs the kernels on a device, through CuPy, when one is lent.
"""

from __future__ import annotations

import ctypes
import importlib.util
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rawflow import AffineTransform
from rawflow.kernels import cuda_c_coupling as CC

HERE = Path(__file__).resolve().parent
KERNELS = HERE.parents[1] / "kernels"
sys.path.insert(0, str(HERE))

import cuda_sim_check as SIM  # noqa: E402

# tests/kernels/cuda_emul/build.py, loaded by path (``build`` is too common a module name to import)
_spec = importlib.util.spec_from_file_location("rf_cuda_emul_build", HERE / "cuda_emul" / "build.py")
EMUL = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(EMUL)
from test_kernels_cpu import EXTENDED  # noqa: E402

needs_extended = pytest.mark.skipif(not EXTENDED, reason="needs an extended-precision np.longdouble oracle")


# ------------------------------------------------------------------ the emulated runtime
class EmulatedRuntime:
    """:class:`rawflow.kernels.cuda_c_coupling.CupyRuntime`'s interface on NumPy arrays, launching
    the kernels compiled for the CPU."""

    array_kind = "NumPy (emulated device)"
    _CTYPES = {np.int64: ctypes.c_longlong, np.int32: ctypes.c_int, np.float32: ctypes.c_float,
               np.float64: ctypes.c_double}

    def __init__(self, lib):
        self.lib = lib
        self.launches: list[tuple[str, int, int, bool]] = []  # (kernel, blocks, threads, vec)

    @staticmethod
    def is_array(a) -> bool:
        return isinstance(a, np.ndarray)

    @staticmethod
    def empty_like(a):
        return np.empty_like(a)

    @staticmethod
    def empty(n, dtype):
        return np.empty(n, dtype)

    @staticmethod
    def pointer(a) -> int:
        return a.ctypes.data

    def launch(self, name, blocks, threads, args):
        symbol = {v: k for k, v in CC.NAMES.items()}[name]
        fn = getattr(self.lib, f"rf_affine_rows{'_vjp' if symbol[0] == 'vjp' else ''}_f{symbol[1][-2:]}")
        cargs = [ctypes.c_void_p(a.ctypes.data) if isinstance(a, np.ndarray) else self._CTYPES[type(a)](a)
                 for a in args]
        self.launches.append((name, blocks, threads, bool(args[-1])))
        EMUL.check(self.lib, fn(ctypes.c_uint(blocks), ctypes.c_uint(threads), *cargs))


class Api:
    """The module's four entry points bound to a runtime (what ``run_case`` calls)."""

    def __init__(self, runtime):
        for name in ("affine_forward", "affine_inverse", "affine_backward", "affine_inverse_backward"):
            fn = getattr(CC, name)
            setattr(self, name, lambda *a, _fn=fn, **k: _fn(*a, runtime=runtime, **k))


@pytest.fixture(scope="module")
def emu():
    why = EMUL.available()
    if why:
        pytest.skip(f"no C++ compiler for the CUDA emulator: {why}")
    out = Path(tempfile.gettempdir()) / "rawflow-cuda-emul"
    lib = EMUL.build([HERE / "emul_coupling_glue.cpp", KERNELS / "cuda_c_coupling.cu"], out,
                extra_flags=("-I", str(KERNELS)))
    return EmulatedRuntime(lib)


def _run(emu, cases, **kw):
    SIM.WORST.clear()
    SIM.FAILURES.clear()
    for case in cases:
        SIM.run_case(*case, api=Api(emu), to_device=np.ascontiguousarray, to_host=np.asarray, **kw)
    return dict(SIM.WORST), list(SIM.FAILURES)


SCALES = (("exp", 2.0), ("bounded", 2.0), ("bounded", 0.7), ("sigmoid", 2.0))


# ------------------------------------------------------------------ stress points (issue 14, item 8)
@pytest.mark.parametrize("scale", ["exp", "bounded", "sigmoid"])
def test_stress_points_against_the_precise_oracle(emu, scale):
    """``|h_s|`` up to 30, rows at 1e-6 / 1 / 8 and a batch of 1, on the 16-byte-vector and the
    scalar path: every output, log-det and VJP (input and ``h``; with both cotangents, the log-det's
    alone and the output's alone) in float64 and float32 within ``16·eps·T`` of the reference's
    60-digit oracle, both directions (:func:`cuda_sim_check.run_stress`)."""
    pytest.importorskip("mpmath")
    SIM.WORST.clear()
    SIM.FAILURES.clear()
    SIM.STRESS.clear()
    emu.launches.clear()
    SIM.run_stress(api=Api(emu), to_device=np.ascontiguousarray, to_host=np.asarray, threads=32, blocks=2,
                   label="cuda-c", cases=((scale, (3, 4)), (scale, (3, 5)), (scale, (1, 8))))
    assert not SIM.FAILURES, "\n".join(SIM.FAILURES)
    assert len(SIM.STRESS) == 3
    assert {vec for *_, vec in emu.launches} == {True, False}  # both load paths ran


# ------------------------------------------------------------------ against the oracle
@needs_extended
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("m", [45, 48], ids=["scalar-path", "vector-path"])
def test_every_entry_point_matches_the_oracle(emu, dtype, m):
    """3 rows on 2 blocks (the row loop strides), one warp striding over the row."""
    emu.launches.clear()
    cases = [(dtype, scale, c, 10 * k + (dtype == np.float32), (3, m)) for k, (scale, c) in enumerate(SCALES)]
    worst, failures = _run(emu, cases, threads=32, blocks=2, label="cuda-c ")
    assert not failures, "\n".join(failures)
    assert len(worst) == 3 * 8  # 8 checks per case; the two bounded cases share their keys (worst kept)
    assert {vec for *_, vec in emu.launches} == {m == 48}  # the intended path ran, every time


def test_empty_batch_gives_empty_outputs(emu):
    """N = 0 (issue 13's rule): every entry point returns correctly shaped empty outputs."""
    SIM.FAILURES.clear()
    SIM.run_empty(api=Api(emu), to_device=np.ascontiguousarray, to_host=np.asarray, label="cuda-c ")
    assert not SIM.FAILURES, "\n".join(SIM.FAILURES)


@needs_extended
def test_several_warps_per_block_and_images(emu):
    """Warps combine through shared memory (128 threads = 4 warps; 3 warps' worth of columns so
    one warp contributes nothing but zeros), and (N, C, H, W) inputs flatten to rows."""
    cases = [(np.float64, "bounded", 2.0, 5, (2, 96 * 3 // 2)), (np.float32, "sigmoid", 2.0, 99, (2, 2, 3, 4))]
    worst, failures = _run(emu, cases, threads=128, blocks=1, label="cuda-c warps ")
    assert not failures, "\n".join(failures)
    assert len(worst) == 2 * 8


@needs_extended
@given(
    dtype=st.sampled_from([np.float32, np.float64]),
    scale=st.sampled_from(SCALES),
    n=st.integers(1, 4),
    m=st.integers(1, 70),
    threads=st.sampled_from([32, 64]),
    blocks=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_and_launches_match_the_oracle(emu, dtype, scale, n, m, threads, blocks, seed):
    """Hypothesis over shapes (both paths: m a multiple of the vector width or not, rows shorter
    than a warp), block sizes and grid sizes (fewer or more blocks than rows)."""
    worst, failures = _run(emu, [(dtype, scale[0], scale[1], seed, (n, m))], threads=threads, blocks=blocks,
                           label="cuda-c hyp ")
    assert not failures, "\n".join(failures)
    assert len(worst) == 8


def test_vector_and_scalar_paths_agree(emu):
    """Same elementwise results either way (bitwise); the log-dets sum in a different order, so
    they agree to the accumulation's own error (compensated float64, then one rounding)."""
    rng = np.random.default_rng(3)
    n, m = 3, 64
    for dtype in (np.float32, np.float64):
        x, g = (rng.normal(size=(n, m)).astype(dtype) for _ in range(2))
        h = rng.normal(size=(n, 2 * m)).astype(dtype)
        gl = rng.normal(size=n).astype(dtype)

        def shifted(a):  # the same values 4 bytes off 16-byte alignment: forces the scalar path
            buf = np.empty(a.size + 1, dtype)
            view = buf[1:].reshape(a.shape) if buf.ctypes.data % 16 == 0 else buf[:-1].reshape(a.shape)
            view[...] = a
            assert view.ctypes.data % 16 != 0
            return view

        emu.launches.clear()
        y_v, ld_v = CC.affine_forward(x, h, "bounded", threads=32, runtime=emu)
        gx_v, gh_v = CC.affine_backward(x, h, g, gl, "bounded", threads=32, runtime=emu)
        y_s, ld_s = CC.affine_forward(shifted(x), shifted(h), "bounded", threads=32, runtime=emu)
        gx_s, gh_s = CC.affine_backward(shifted(x), h, g, gl, "bounded", threads=32, runtime=emu)
        assert [vec for *_, vec in emu.launches] == [True, True, False, False]
        assert np.array_equal(y_v, y_s) and np.array_equal(gx_v, gx_s) and np.array_equal(gh_v, gh_s)
        # both are the float64 sum of the same float64 log s values to within ~2 u64·Σ|log s|,
        # then rounded to the dtype: at most one unit of the dtype's rounding apart
        log_s = 2.0 * np.tanh(h[:, :m].astype(np.float64) / 2.0)
        scale = np.abs(log_s).sum(axis=1)
        assert np.all(np.abs(ld_v.astype(np.float64) - ld_s) <= np.finfo(dtype).eps * scale + 4 * 2.0**-53 * scale)


def test_results_do_not_depend_on_block_count_and_inverse_cancels(emu):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, 40))
    h = rng.normal(size=(5, 80))
    y1, ld1 = CC.affine_forward(x, h, "sigmoid", threads=64, blocks=1, runtime=emu)
    y3, ld3 = CC.affine_forward(x, h, "sigmoid", threads=64, blocks=3, runtime=emu)
    assert np.array_equal(y1, y3) and np.array_equal(ld1, ld3)
    _, ldi = CC.affine_inverse(y1, h, "sigmoid", threads=64, runtime=emu)
    assert np.all(ld1 + ldi == 0)


def test_default_block_size_follows_the_row_length(emu):
    """256 threads by default, fewer warps for short rows; the elementwise results never depend on it."""
    rng = np.random.default_rng(5)
    for dtype, m, want in ((np.float32, 8, 32), (np.float64, 130, 96), (np.float64, 45, 64), (np.float64, 3000, 256)):
        x = rng.normal(size=(2, m)).astype(dtype)
        h = rng.normal(size=(2, 2 * m)).astype(dtype)
        emu.launches.clear()
        y, ld = CC.affine_forward(x, h, "exp", runtime=emu)
        y32, ld32 = CC.affine_forward(x, h, "exp", threads=32, runtime=emu)
        assert [t for _, _, t, _ in emu.launches] == [want, 32]
        assert np.array_equal(y, y32)
        exact = h[:, :m].astype(np.float64).sum(axis=1)
        scale = np.abs(h[:, :m]).astype(np.float64).sum(axis=1)
        assert np.all(np.abs(ld - exact) <= np.finfo(dtype).eps * scale)


# ------------------------------------------------------------------ host side: errors, selection
def test_bad_input_is_reported(emu):
    x, h = np.ones((2, 4)), np.ones((2, 8))
    cases = [
        (lambda: CC.affine_forward(x, h), "NumPy (host) array"),  # the CuPy runtime gets host arrays
        (lambda: CC.affine_forward(x, np.ones((2, 7)), runtime=emu), "expected (2, 8)"),
        (lambda: CC.affine_forward(x, np.ones((2, 8), np.float32), runtime=emu), "dtype"),
        (lambda: CC.affine_forward(x, h, threads=48, runtime=emu), "multiple of 32"),
        (lambda: CC.affine_forward(x, h, threads=2048, runtime=emu), "multiple of 32"),
        (lambda: CC.affine_forward(x, h, blocks=0, runtime=emu), "blocks must be positive"),
        (lambda: CC.affine_forward(x, h, "nope", runtime=emu), "unknown scale map"),
        (lambda: CC.affine_forward(np.ones((2, 4), np.int64), np.ones((2, 8), np.int64), runtime=emu), "float32"),
        (lambda: CC.affine_forward(np.ones((4, 2)).T, h, runtime=emu), "C-contiguous"),
        (lambda: CC.affine_backward(x, h, x, np.ones(3), runtime=emu), "log-det cotangent"),
    ]
    for call, words in cases:
        with pytest.raises(ValueError, match=re.escape(words)):
            call()


def test_backend_cuda_c_needs_device_arrays():
    tr = AffineTransform("exp", backend="cuda-c")
    with pytest.raises(ValueError, match="backend='cuda-c' needs CuPy"):
        tr.forward(np.ones((2, 3)), np.ones((2, 6)))
    with pytest.raises(ValueError, match="cuda-c"):
        AffineTransform("exp", backend="cuda_c")


# ------------------------------------------------------------------ compile for the H200
def test_compiles_for_sm90_with_nvrtc():
    import nvrtc  # tests/kernels/nvrtc.py

    if nvrtc.find_nvrtc() is None:
        pytest.skip("no NVRTC library (pip install '.[ptx]')")
    ptx, lowered = nvrtc.compile_ptx(CC.SOURCE.read_text(), list(CC.NAMES.values()), "compute_90", CC.OPTIONS)
    assert ".target sm_90" in ptx
    assert all(lowered[name] in ptx for name in CC.NAMES.values())
    assert "shfl.sync.down" in ptx  # the warp-level log-det reduction
    assert "ld.global.nc.v4.f32" in ptx and "ld.global.nc.v2.f64" in ptx  # 16-byte loads, both dtypes
    assert "st.global.v4.f32" in ptx and "st.global.v2.f64" in ptx
