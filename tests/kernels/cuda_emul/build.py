"""Compile CUDA C kernels for the CPU against ``cuda_emul.h`` and load them with ctypes.

The kernels' ``.cu`` source is the one NVRTC compiles for the GPU, unchanged: g++ compiles it as
C++20 with ``cuda_emul.h`` force-included (``-include``), which supplies CUDA's keywords, built-in
variables, vector types, shuffles, barriers and intrinsics, and ``rf_emul::launch``, which runs a
grid with every CUDA thread as an OS thread (see the header's opening comment for the exact model
and what it reports as errors). There is no ``<<<grid, block>>>``: a few lines of C++ glue launch
the kernels and export plain C functions for ctypes.

How to use it from a test
-------------------------
1. A glue file, e.g. ``tests/kernels/emul_mykernel_glue.cpp`` (the header is force-included; a template
   kernel must be instantiated in the file that launches it, hence the ``#include``)::

       #include "my_kernels.cu"   // found through extra_flags=("-I", kernels_dir)

       extern "C" int rf_scale_f64(unsigned grid, unsigned block, const double *x, double *y,
                                   long long n) {
           return rf_emul::guarded([&] { rf_emul::launch(scale<double>, grid, block, x, y, n); });
       }

   ``rf_emul::guarded`` returns 0, or 1 after any error (a bad launch configuration, an exception
   in a kernel thread, a divergent barrier, a deadlock); the message is then
   ``rf_emul_last_error()``, which every library built here exports.
2. The test builds it (cached: the same sources, includes and flags load the library built before)
   and calls it on NumPy arrays::

       import sys; sys.path.insert(0, str(Path(__file__).parent / "cuda_emul"))
       from build import available, build, check

       if (why := available()) is not None:
           pytest.skip(f"no C++ compiler for the CUDA emulator: {why}")
       lib = build([HERE / "emul_mykernel_glue.cpp", KERNELS / "my_kernels.cu"], tmp_dir,
                   extra_flags=("-I", str(KERNELS)))
       x = np.arange(100.0); y = np.empty_like(x)
       check(lib, lib.rf_scale_f64(ctypes.c_uint(2), ctypes.c_uint(64), ctypes.c_void_p(x.ctypes.data),
                                   ctypes.c_void_p(y.ctypes.data), ctypes.c_longlong(x.size)))

   Pass every argument with an explicit ctypes type (``c_uint``, ``c_longlong``, ``c_double``,
   ``c_void_p`` for arrays): ctypes does not know the C signature unless ``argtypes`` is set.
   Listing the ``.cu`` file among the sources is harmless (it compiles to nothing by itself) and
   documents the dependency; the cache key covers every included file in any case.
3. Launch small grids: every block starts its threads afresh (a 256-thread block costs a few
   milliseconds), and each barrier or shuffle is a round of context switches. Undefined launches
   (divergent barriers, deadlocks, failing threads) come back as errors, but a kernel that loops
   forever still hangs and one that writes out of bounds may crash the process:
   ``tests/kernels/test_cuda_emul.py``'s ``call()`` runs a call under a timeout.

The build is ``g++ -std=c++20 -O1 -fPIC -shared -pthread -fno-fast-math -ffp-contract=off`` (no
fused multiply-adds unless the kernel writes them: see the header on NVRTC's contraction) plus
``-fno-gnu-unique``, which keeps each library's emulator state (the built-in variables, the launch
lock) its own when several are loaded into one process.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
HEADER = HERE / "cuda_emul.h"
CXX = "g++"
FLAGS = (
    "-std=c++20",
    "-O1",
    "-fPIC",
    "-shared",
    "-pthread",
    "-fno-fast-math",
    "-ffp-contract=off",
    "-fno-gnu-unique",
)


class BuildError(RuntimeError):
    """g++ could not compile or link the sources (the message holds its command and output)."""


class EmulError(RuntimeError):
    """An emulated launch failed; the message is the emulator's ``rf_emul_last_error()``."""


def _command(sources: Sequence[Path], extra_flags: Iterable[str]) -> list[str]:
    # -x c++ before the sources: g++ would otherwise take a .cu file for a linker script.
    return [CXX, *FLAGS, *extra_flags, "-I", str(HERE), "-include", str(HEADER), "-x", "c++", *map(str, sources)]


def _key(sources: Sequence[Path], extra_flags: Sequence[str]) -> str:
    """Hash of the compiler, the flags and the preprocessed sources.

    Preprocessing (``-E``) expands every ``#include``, so the key changes when the header, a kernel
    file included by the glue, or a macro passed in the flags changes, not only when a listed
    source does: a stale library is never loaded."""
    cmd = [c for c in _command(sources, extra_flags) if c != "-shared"] + ["-E"]
    pre = _run(cmd)
    version = _run([CXX, "-dumpfullversion", "-dumpmachine"])
    h = hashlib.sha256()
    for part in (version, "\0".join(cmd), pre):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _run(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except OSError as e:
        raise BuildError(f"could not run {cmd[0]}: {e}") from e
    if proc.returncode != 0:
        raise BuildError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()}")
    return proc.stdout


def build(sources: Sequence[Path | str], out: Path | str, *, extra_flags: Iterable[str] = ()) -> ctypes.CDLL:
    """Compile ``sources`` (C++ / ``.cu``) with the emulator into a shared library in folder ``out``
    and load it. A library built before from the same preprocessed sources and flags is reused.

    Raises :class:`BuildError` with g++'s messages when the build fails."""
    sources = [Path(s).resolve() for s in sources]
    if not sources:
        raise ValueError("build() needs at least one source file")
    for s in sources:
        if not s.is_file():
            raise FileNotFoundError(f"no such source file: {s}")
    extra = [str(f) for f in extra_flags]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lib_path = out / f"rf_emul_{sources[0].stem}_{_key(sources, extra)[:20]}.so"
    if not lib_path.exists():
        # Build under a temporary name and rename: concurrent test processes never load half a file.
        fd, tmp = tempfile.mkstemp(prefix=lib_path.stem + ".", suffix=".tmp.so", dir=out)
        os.close(fd)
        try:
            _run(_command(sources, extra) + ["-o", tmp])
            os.replace(tmp, lib_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(lib_path))
    lib.rf_emul_last_error.restype = ctypes.c_char_p
    lib.rf_emul_last_error.argtypes = []
    return lib


def last_error(lib: ctypes.CDLL) -> str:
    """The message of the calling thread's last failed ``rf_emul::guarded`` call in ``lib``."""
    return lib.rf_emul_last_error().decode(errors="replace")


def check(lib: ctypes.CDLL, rc: int) -> None:
    """Raise :class:`EmulError` with the emulator's message unless a glue function returned 0."""
    if rc != 0:
        raise EmulError(last_error(lib) or f"emulated call returned {rc}")


_PROBE = r"""
#include <atomic>
#include <bit>
#include <thread>
// What the emulator needs from the toolchain: C++20 atomics with wait/notify, atomic_ref on
// floating point, bit_cast, threads; and a shared library that loads.
extern "C" int rf_probe(void) {
    std::atomic<unsigned> flag{0};
    float f = 0.5f;
    std::thread t([&] {
        std::atomic_ref<float>(f).fetch_add(1.0f);
        flag.store(1);
        flag.notify_all();
    });
    flag.wait(0);
    t.join();
    return int(std::bit_cast<unsigned>(f) == std::bit_cast<unsigned>(1.5f));
}
"""


@functools.cache
def available() -> str | None:
    """None when g++ can build C++20 threaded code into a loadable library here, else the reason.

    This checks the toolchain only, not the emulator: a test that skips on ``available()`` still
    fails, rather than skips, when ``cuda_emul.h`` itself does not compile."""
    if shutil.which(CXX) is None:
        return f"{CXX} not found on PATH"
    with tempfile.TemporaryDirectory(prefix="rf_emul_probe_") as d:
        src, lib_path = Path(d) / "probe.cpp", Path(d) / "probe.so"
        src.write_text(_PROBE)
        try:
            _run([CXX, *FLAGS, str(src), "-o", str(lib_path)])
            ok = ctypes.CDLL(str(lib_path)).rf_probe() == 1
        except (BuildError, OSError) as e:
            return f"{CXX} cannot build C++20 threaded shared libraries: {e}"
        if not ok:
            return f"{CXX}'s C++20 atomics gave a wrong result in the probe"
    return None
