"""Checks of :mod:`rawflow.kernels.cuda_actnorm`, run by ``test_kernels_actnorm.py`` in a subprocess;
also home of the ActNorm long-double oracle those tests and ``gpu_check.py`` share (this module
needs neither pytest nor Hypothesis).

Two modes, each printing one JSON line last and exiting 0 (the pytest side asserts):

* default, with ``NUMBA_ENABLE_CUDASIM=1`` in the environment (read when numba is first imported):
  the four kernels under the simulator against the long-double reference of
  ``test_kernels_actnorm.py`` (same term units and bounds), exact log-det cancellation, the round
  trip, independence of the launch shape, input validation. ``{"worst", "failures", "simulator"}``.
  Tiny grids: the simulator runs each CUDA thread as a Python thread.
* ``--ptx``: compile every numba-cuda kernel (ActNorm's four, the couplings' two; float32 and
  float64) to PTX for sm_90 without a GPU (NVVM only). ``{"compiled", "failures", "vjp_mul_rn",
  "targets", "nvvm", "nvvm_found_by", "nvvm_version", "libdevice"}`` or ``{"skip": reason}``
  where NVVM is unavailable. NVVM comes from ``$CUDA_HOME`` (see :func:`wheel_nvvm_home`) or a
  system toolkit.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rawflow.bijectors._channel import sum_but_channel  # noqa: E402
from rawflow.bijectors.actnorm import ActNorm  # noqa: E402

LD = np.longdouble
EXTENDED = np.finfo(LD).nmant >= 63
#: term units (see test_kernels_actnorm.py): the issue's 2 for float64; float32 is held to 1 (derived: ½)
BOUND = {np.float64: 2.0, np.float32: 1.0}
WORST: dict = {}
FAILURES: list = []


# ------------------------------------------------------------------ the oracle (shared with the tests)
def term_error(got, exact, terms, dtype) -> float:
    """``max |got − exact| / (eps·T)``; a scale below the subnormal spacing is raised to it."""
    fi = np.finfo(dtype)
    err = np.abs(np.asarray(got).astype(LD) - exact) / np.maximum(fi.eps * terms, fi.smallest_subnormal)
    return float(np.max(err, initial=0.0))


def view(v, like):
    return v.reshape((1, -1) + (1,) * (like.ndim - 2))


def oracle(x, bias, log_scale, g, gl, z_point, x_point):
    """Reference layer in long double: outputs, gradients at the given cache points, term scales.

    ``x`` is the forward's input and the inverse's input alike (both maps are evaluated there);
    ``z_point``/``x_point`` are the kernels' cache arrays for ``backward``/``inverse_backward``.
    """
    layer = ActNorm(x.shape[1], spatial=x.ndim - 2)
    X, B, LS, G, GL, ZP, XP = (np.asarray(a).astype(LD) for a in (x, bias, log_scale, g, gl, z_point, x_point))
    params = {"bias": B, "log_scale": LS}
    E = np.exp(LS)
    p = int(np.prod(x.shape[2:]))
    # The unchecked methods: the public ones refuse long double (one dtype rule, issue 13); the
    # reference code computes in whatever dtype it is handed, which is what this oracle needs.
    z, logdet, _ = layer._forward(params, X)
    xi, logdet_inv, _ = layer._inverse(params, X)
    gx, gp = layer._backward(params, (ZP / view(E, X), ZP, E), G, GL)
    gz, gpi = layer._inverse_backward(params, (XP + view(B, X), None, E), G, GL)
    gl_terms = p * np.sum(np.abs(GL))
    terms = {
        "forward z": (np.abs(X) + np.abs(view(B, X))) * view(E, X),
        "forward logdet": np.full(x.shape[0], p * np.sum(np.abs(LS))),
        "inverse x": np.abs(X) / view(E, X) + np.abs(view(B, X)),
        "backward gx": np.abs(G) * view(E, X),
        "backward g bias": E * sum_but_channel(np.abs(G)),
        "backward g log_scale": sum_but_channel(np.abs(G * ZP)) + gl_terms,
        "inverse_backward gz": np.abs(G) / view(E, X),
        "inverse_backward g bias": sum_but_channel(np.abs(G)),
        "inverse_backward g log_scale": sum_but_channel(np.abs(G) * (np.abs(XP) + np.abs(view(B, X)))) + gl_terms,
    }
    exact = {
        "forward z": z, "forward logdet": logdet, "inverse x": xi,
        "backward gx": gx, "backward g bias": gp["bias"], "backward g log_scale": gp["log_scale"],
        "inverse_backward gz": gz, "inverse_backward g bias": gpi["bias"],
        "inverse_backward g log_scale": gpi["log_scale"],
    }
    return exact, terms, logdet_inv


def run_kernels(mod, x, bias, log_scale, g, gl, **kw):
    """All four kernels of ``mod`` on host arrays; results keyed like :func:`oracle`'s."""
    z, ld = mod.actnorm_forward(x, bias, log_scale, **kw)
    xi, ldi = mod.actnorm_inverse(x, bias, log_scale, **kw)
    gx, gb, gls = mod.actnorm_backward(z, bias, log_scale, g, gl, **kw)
    gz, gbi, glsi = mod.actnorm_inverse_backward(xi, bias, log_scale, g, gl, **kw)
    return {
        "forward z": z, "forward logdet": ld, "inverse x": xi, "inverse logdet": ldi,
        "backward gx": gx, "backward g bias": gb, "backward g log_scale": gls,
        "inverse_backward gz": gz, "inverse_backward g bias": gbi, "inverse_backward g log_scale": glsi,
    }




def check(ok: bool, what: str) -> None:
    if not ok:
        FAILURES.append(what)


def note(key: str, value: float, bound: float) -> None:
    WORST[key] = max(WORST.get(key, 0.0), float(value))
    check(value <= bound, f"{key}: {value:.3f} > {bound}")


# ------------------------------------------------------------------ simulator
def run_case(dtype, shape, seed, threads=16, rows_per_block=2, other_launch=False) -> None:
    from numba import cuda

    from rawflow.kernels import cuda_actnorm as G

    rng = np.random.default_rng(seed)
    c = shape[1]
    bias = rng.normal(size=c) * 3
    x = (rng.normal(size=shape) * 2 - view(bias, np.empty(shape))).astype(dtype)  # x + b partly cancels
    bias = bias.astype(dtype)
    log_scale = rng.normal(size=c).astype(dtype)
    g = rng.normal(size=shape).astype(dtype)
    gl = rng.normal(size=shape[0]).astype(dtype)
    tag = f"{np.dtype(dtype).name} {'image' if len(shape) > 2 else 'vector'}"

    dev = _with(G, cuda, threads=threads, rows_per_block=rows_per_block)
    got = run_kernels(dev, x, bias, log_scale, g, gl)
    check(all(v.dtype == dtype for v in got.values()), f"{tag}: dtypes")
    check(got["forward z"].shape == x.shape, f"{tag}: shapes")
    exact, terms, _ = oracle(x, bias, log_scale, g, gl, got["forward z"], got["inverse x"])
    for k in exact:
        note(f"{k} {tag}", term_error(got[k], exact[k], terms[k], dtype), BOUND[dtype])

    z, ld = got["forward z"], got["forward logdet"]
    x2, ld2 = dev.actnorm_inverse(z, bias, log_scale)
    check(bool(np.all(ld + ld2 == 0)), f"{tag}: forward + inverse log-dets do not cancel exactly")
    eps = np.finfo(dtype).eps
    e = np.exp(log_scale.astype(np.float64))
    rho = np.maximum(np.abs(x), np.abs(z) / view(e, x)).astype(np.float64)
    bound = 2.0 if dtype == np.float64 else 1.0001  # derived in test_kernels_actnorm.py
    note(f"roundtrip {tag}", np.max(np.abs(x2.astype(np.float64) - x) / (eps * rho)), bound)

    if not other_launch:
        return
    # Elementwise outputs do not depend on the launch shape; the sums only through their order.
    other = run_kernels(_with(G, cuda, threads=32, rows_per_block=1), x, bias, log_scale, g, gl)
    for k in ("forward z", "forward logdet", "inverse x", "backward gx", "inverse_backward gz"):
        check(np.array_equal(other[k], got[k]), f"{tag}: {k} depends on the launch shape")
    for k in exact:
        note(f"{k} {tag} (threads=32, rows_per_block=1)", term_error(other[k], exact[k], terms[k], dtype), BOUND[dtype])


def _with(G, cuda, **kw):
    """``G``'s entry points taking and returning host arrays, launched with ``kw``."""

    class Device:
        def __getattr__(self, name):
            fn = getattr(G, name)
            return lambda *args: tuple(o.copy_to_host() for o in fn(*(cuda.to_device(a) for a in args), **kw))

    return Device()


def run_validation() -> None:
    from numba import cuda

    from rawflow.kernels import cuda_actnorm as G

    x = cuda.to_device(np.ones((2, 3)))
    b = cuda.to_device(np.ones(3))
    bad = [
        lambda: G.actnorm_forward(np.ones((2, 3)), b, b),  # host array
        lambda: G.actnorm_forward(x, cuda.to_device(np.ones(4)), b),  # bias shape
        lambda: G.actnorm_forward(x, b, cuda.to_device(np.ones(3, np.float32))),  # dtype
        lambda: G.actnorm_forward(x, b, b, threads=24),  # not a power of two
        lambda: G.actnorm_forward(cuda.to_device(np.ones(3)), b, b),  # ndim
        lambda: G.actnorm_backward(x, b, b, x, cuda.to_device(np.ones(3))),  # glogdet shape
        lambda: G.actnorm_inverse_backward(x, b, b, cuda.to_device(np.ones((2, 4))), cuda.to_device(np.ones(2))),
    ]
    for i, call in enumerate(bad):
        try:
            call()
        except ValueError:
            continue
        except Exception as e:  # noqa: BLE001
            FAILURES.append(f"validation case {i}: raised {type(e).__name__}: {e}")
            continue
        FAILURES.append(f"validation case {i}: no ValueError")


def run_empty() -> None:
    """An empty batch (N = 0, issue 13's rule): empty outputs, exactly zero parameter gradients."""
    from numba import cuda

    from rawflow.kernels import cuda_actnorm as G

    dev = _with(G, cuda, threads=16)
    for dtype in (np.float64, np.float32):
        for shape in ((0, 3), (0, 2, 3, 4)):
            c, x = shape[1], np.empty(shape, dtype)
            got = run_kernels(dev, x, np.ones(c, dtype), np.full(c, 0.5, dtype), x, np.empty(0, dtype))
            for k, v in got.items():
                want = (c,) if " g " in k else (0,) if "logdet" in k else shape
                check(v.shape == want and v.dtype == dtype, f"empty batch {shape} {k}: shape {v.shape}")
                if " g " in k:
                    check(not np.any(v), f"empty batch {shape} {k}: {v} is not zero")


def simulate() -> dict:
    try:
        run_empty()
        for dtype in (np.float64, np.float32):
            run_case(dtype, (5, 3), seed=1 + (dtype == np.float32))  # vectors: 3 row blocks
            # P = 21 > threads: planes straddle blocks; also run with another launch shape
            run_case(dtype, (3, 2, 3, 7), seed=3 + (dtype == np.float32), other_launch=True)
        run_validation()
    except Exception:  # noqa: BLE001
        FAILURES.append(traceback.format_exc())
    return {"worst": WORST, "failures": FAILURES, "simulator": os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"}


# ------------------------------------------------------------------ compile-only (sm_90)
def wheel_nvvm_home(dest) -> str | None:
    """A ``CUDA_HOME`` for numba made of the pip wheel ``nvidia-cuda-nvcc-cu12``'s NVVM, or ``None``
    when that wheel (the ``ptx`` extra) is not installed.

    numba (``numba.cuda.cuda_paths``) looks for ``$CUDA_HOME/nvvm/lib64/libnvvm.so.N`` and
    ``$CUDA_HOME/nvvm/libdevice/libdevice*.bc`` before the system's ``/usr/local/cuda``, so setting
    ``CUDA_HOME`` in a subprocess makes that process prefer the wheel. The wheel's directory
    (``nvidia/cuda_nvcc``) has the same layout except that it ships an unversioned ``libnvvm.so``,
    which numba's pattern does not match; ``dest`` gets symlinks with a versioned name (the suffix
    only satisfies the pattern: numba opens the file by its path).
    """
    from nvrtc import wheel_dir

    wheel = wheel_dir("cuda_nvcc")
    if wheel is None or not (wheel / "nvvm" / "lib64" / "libnvvm.so").is_file():
        return None
    lib64, libdevice = os.path.join(dest, "nvvm", "lib64"), os.path.join(dest, "nvvm", "libdevice")
    os.makedirs(lib64, exist_ok=True)
    os.symlink(wheel / "nvvm" / "lib64" / "libnvvm.so", os.path.join(lib64, "libnvvm.so.0"))
    os.symlink(wheel / "nvvm" / "libdevice", libdevice)
    return str(dest)


def _nvvm_in_use(nvvm) -> list[str]:
    """Real paths of every libnvvm mapped into this process (Linux), else the one numba opened."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split(None, 5)[-1].strip() for line in f if "libnvvm" in line}
    except OSError:
        paths = {nvvm.driver._name}
    return sorted(os.path.realpath(p) for p in paths)


def compile_ptx() -> dict:
    """Every numba-cuda kernel compiled to PTX for sm_90 with NVVM alone (no GPU, no CUDA runtime).

    NVVM is whatever numba finds: ``$CUDA_HOME`` first (the test points it at the pip wheel, see
    :func:`wheel_nvvm_home`), else a system toolkit. The report names the NVVM library actually
    loaded and the libdevice used, so the caller can check which toolkit did the compiling.
    """
    import types as pytypes

    # numba asks the CUDA runtime (libcudart) which compute capabilities the toolkit supports and
    # fails with none; a compile-only run has no runtime (the pip wheels ship none), and names its
    # target itself: pin it (this process only; read by numba's config reload at compile time).
    os.environ["NUMBA_FORCE_CUDA_CC"] = "9.0"
    from numba import cuda
    from numba import types as T
    from numba.core import config

    config.reload_config()
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return {"skip": "compile-only check needs NUMBA_ENABLE_CUDASIM unset"}
    # Device functions called from a kernel are compiled for the *current* device's compute
    # capability; without a GPU there is none, so name sm_90 for them (this process only).
    import numba.cuda.dispatcher as dispatcher
    from numba.cuda.cuda_paths import get_cuda_paths
    from numba.cuda.cudadrv import nvvm

    dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=(9, 0))
    try:
        cuda.compile_ptx(lambda a: None, (T.float64[:],), cc=(9, 0))
    except Exception as e:  # noqa: BLE001
        return {"skip": f"NVVM unavailable: {type(e).__name__}: {e}"[:300]}

    from rawflow.kernels import cuda_actnorm, cuda_coupling

    compiled = 0
    mul_rn = 0
    coupling_shfl = 0  # the coupling forward's log-det reduction: warp shuffles on a GPU
    targets = set()
    map_k, logdet_k, vjp_k, fin_k = cuda_actnorm._kernels(256)
    for ft in (T.float32, T.float64):
        a2, a1, p3 = T.Array(ft, 2, "C"), T.Array(ft, 1, "C"), T.Array(T.float64, 3, "C")
        jobs = [
            (map_k, (a2, a1, a1, a2, T.int64, T.boolean)),
            (logdet_k, (a1, T.int64, a1, T.boolean)),
            (vjp_k, (a2, a2, a1, a1, a2, p3, T.int64, T.boolean)),
            (fin_k, (p3, a1, a1, a1, a1, T.boolean)),
        ]
        fwd, vjp = cuda_coupling._kernels(np.dtype(ft.name).name, 256)
        jobs += [
            (fwd, (a2, a2, a2, a1, T.int64, ft, T.boolean)),
            (vjp, (a2, a2, a2, a1, a2, a2, T.int64, ft, T.boolean)),
        ]
        for kernel, sig in jobs:
            try:
                ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))
                compiled += 1
                targets.update(line.split()[1] for line in ptx.splitlines() if line.startswith(".target"))
                if kernel is vjp_k:
                    mul_rn += ptx.count("mul.rn.f64")
                if kernel is fwd:
                    coupling_shfl += ptx.count("shfl.sync.down")
            except Exception as e:  # noqa: BLE001
                FAILURES.append(f"{kernel.py_func.__name__} {ft}: {type(e).__name__}: {e}"[:500])
    paths = get_cuda_paths()
    return {
        "compiled": compiled, "failures": FAILURES, "vjp_mul_rn": mul_rn, "coupling_shfl": coupling_shfl,
        "targets": sorted(targets),
        "nvvm": _nvvm_in_use(nvvm.NVVM()), "nvvm_found_by": paths["nvvm"].by,
        "nvvm_version": list(nvvm.NVVM().get_version()),
        "libdevice": os.path.realpath(paths["libdevice"].info or ""),
    }


if __name__ == "__main__":
    result = compile_ptx() if "--ptx" in sys.argv[1:] else simulate()
    print(json.dumps(result))
