"""A tiny ctypes binding of NVRTC, the runtime CUDA C++ compiler CuPy's ``RawModule`` uses.

Test plumbing, not part of rawflow: it lets the suite compile CUDA C sources to PTX for a chosen
architecture (``compute_90``: Hopper, sm_90) on a machine with neither a GPU nor a CUDA toolkit.
NVRTC is a pure compiler library (no driver, no device): source text in, PTX text out.

Where the library comes from, first hit wins:

1. the PyPI wheel ``nvidia-cuda-nvrtc-cu12`` (the ``ptx`` extra), ``nvidia/cuda_nvrtc/lib/libnvrtc.so.N``;
2. a system toolkit: ``$CUDA_HOME``/``$CUDA_PATH``, ``/usr/local/cuda`` (``lib64``, ``lib``), any major version;
3. whatever the dynamic loader finds as ``libnvrtc.so*`` (``ctypes.util.find_library``).

:func:`wheel_dir` also locates the sibling wheel ``nvidia-cuda-nvcc-cu12`` (NVVM + libdevice) for
numba's compile-only check (``cuda_sim_actnorm.py --ptx``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib.util
import os
import re
from pathlib import Path

__all__ = ["wheel_dir", "find_nvrtc", "load_nvrtc", "version", "compile_ptx"]

# libnvrtc.so.12, libnvrtc.so.12.9.86, libnvrtc.so — not libnvrtc.alt.so.* nor libnvrtc-builtins.so.*
_LIBNAME = re.compile(r"libnvrtc\.so(\.\d+)*$")


def wheel_dir(component: str) -> Path | None:
    """Directory of the installed NVIDIA wheel package ``nvidia.<component>`` (e.g. ``"cuda_nvrtc"``,
    ``"cuda_nvcc"``), or ``None`` when that wheel is not installed.

    The wheels install namespace packages (no ``__init__.py``), so the location comes from the
    import spec's search path rather than ``__file__``; nothing is imported.
    """
    try:
        spec = importlib.util.find_spec(f"nvidia.{component}")
    except (ImportError, ValueError):  # no `nvidia` namespace at all
        return None
    if spec is None:
        return None
    for loc in spec.submodule_search_locations or ():
        if os.path.isdir(loc):
            return Path(loc)
    return None


def _version_key(path: str) -> tuple:
    """Sort key: the numeric suffix of ``libnvrtc.so.12.9.86`` (a bare ``libnvrtc.so`` sorts first)."""
    return tuple(int(p) for p in re.findall(r"\d+", os.path.basename(path)))


def _libs_in(directory) -> list[str]:
    found = [p for p in glob.glob(os.path.join(str(directory), "libnvrtc.so*")) if _LIBNAME.search(p)]
    return sorted((p for p in found if os.path.isfile(p)), key=_version_key, reverse=True)


def find_nvrtc() -> str | None:
    """Path of an NVRTC shared library: the pip wheel's first, then a system toolkit's, then the
    loader's (a bare name such as ``libnvrtc.so.12``, which ``ctypes.CDLL`` resolves), else ``None``.

    Within one directory the highest version wins. Any major version is accepted: the C API used
    here (create, add name expression, compile, get PTX / log / lowered name) is stable since CUDA 8.
    """
    wheel = wheel_dir("cuda_nvrtc")
    dirs = [wheel / "lib"] if wheel else []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            dirs += [Path(os.environ[var]) / "lib64", Path(os.environ[var]) / "lib"]
    dirs += [Path("/usr/local/cuda/lib64"), Path("/usr/local/cuda/lib")]
    for d in dirs:
        libs = _libs_in(d)
        if libs:
            return libs[0]
    return ctypes.util.find_library("nvrtc")  # the loader's cache: e.g. a distribution package


_LIB: dict[str, ctypes.CDLL] = {}


def load_nvrtc(path: str | None = None) -> ctypes.CDLL:
    """The NVRTC library at ``path`` (default :func:`find_nvrtc`) with argument types declared.

    Raises ``RuntimeError`` when no library is found (callers that may skip test ``find_nvrtc()``
    first) and ``OSError`` when one is found but cannot be loaded.
    """
    path = path or find_nvrtc()
    if path is None:
        raise RuntimeError("NVRTC not found: pip install nvidia-cuda-nvrtc-cu12 (the 'ptx' extra) or a CUDA toolkit")
    if path in _LIB:
        return _LIB[path]
    lib = ctypes.CDLL(path)
    P, I, S, C = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t, ctypes.c_char_p
    protos = {
        "nvrtcGetErrorString": (C, [I]),
        "nvrtcVersion": (I, [ctypes.POINTER(I), ctypes.POINTER(I)]),
        "nvrtcCreateProgram": (I, [ctypes.POINTER(P), C, C, I, ctypes.POINTER(C), ctypes.POINTER(C)]),
        "nvrtcDestroyProgram": (I, [ctypes.POINTER(P)]),
        "nvrtcAddNameExpression": (I, [P, C]),
        "nvrtcCompileProgram": (I, [P, I, ctypes.POINTER(C)]),
        "nvrtcGetProgramLogSize": (I, [P, ctypes.POINTER(S)]),
        "nvrtcGetProgramLog": (I, [P, C]),
        "nvrtcGetPTXSize": (I, [P, ctypes.POINTER(S)]),
        "nvrtcGetPTX": (I, [P, C]),
        "nvrtcGetLoweredName": (I, [P, C, ctypes.POINTER(C)]),
    }
    for name, (res, args) in protos.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    _LIB[path] = lib
    return lib


def _check(lib, result: int, what: str, log: str = "") -> None:
    if result != 0:
        err = lib.nvrtcGetErrorString(result).decode(errors="replace")
        raise RuntimeError(f"NVRTC {what} failed: {err} ({result})" + (f"\n{log}" if log else ""))


def version(path: str | None = None) -> tuple[int, int]:
    """``(major, minor)`` of the NVRTC library (its CUDA toolkit version)."""
    lib = load_nvrtc(path)
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(lib, lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


def compile_ptx(source: str, name_expressions: list[str], arch: str = "compute_90",
                options: tuple[str, ...] = (), *, name: str = "rawflow_nvrtc.cu",
                path: str | None = None) -> tuple[str, dict[str, str]]:
    """Compile CUDA C++ ``source`` to PTX for virtual architecture ``arch``.

    Passes ``--gpu-architecture=<arch>``, ``-std=c++17`` and then ``options``. Each entry of
    ``name_expressions`` (e.g. ``"reduce<float, 256>"``) is registered before compiling, which
    instantiates that template, and is returned with its lowered (mangled) name, the symbol the
    PTX defines and a loader such as ``cupy.RawModule.get_function`` looks up.

    ``arch`` is a virtual ``compute_XY`` (PTX is its only output; a real ``sm_XY`` additionally
    makes NVRTC build a cubin, which is never fetched here). Returns ``(ptx, {expression: lowered})``.
    Raises ``RuntimeError`` with NVRTC's full compile log when compilation fails.
    """
    lib = load_nvrtc(path)
    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None),
           "nvrtcCreateProgram")
    try:
        for expr in name_expressions:
            _check(lib, lib.nvrtcAddNameExpression(prog, expr.encode()), f"nvrtcAddNameExpression({expr!r})")
        opts = [f"--gpu-architecture={arch}", "-std=c++17", *options]
        argv = (ctypes.c_char_p * len(opts))(*(o.encode() for o in opts))
        result = lib.nvrtcCompileProgram(prog, len(opts), argv)
        size = ctypes.c_size_t()
        _check(lib, lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
        buf = ctypes.create_string_buffer(size.value)
        _check(lib, lib.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
        log = buf.value.decode(errors="replace")
        _check(lib, result, f"compiling {name} with {' '.join(opts)}", log or "(empty compile log)")
        _check(lib, lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), f"nvrtcGetPTXSize (arch {arch})")
        buf = ctypes.create_string_buffer(size.value)
        _check(lib, lib.nvrtcGetPTX(prog, buf), f"nvrtcGetPTX (arch {arch})")
        ptx = buf.value.decode()
        lowered = {}
        for expr in name_expressions:
            out = ctypes.c_char_p()
            _check(lib, lib.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(out)),
                   f"nvrtcGetLoweredName({expr!r})")
            lowered[expr] = out.value.decode()  # owned by the program: copied before it is destroyed
        return ptx, lowered
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
