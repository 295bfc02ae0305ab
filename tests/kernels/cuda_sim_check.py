"""Checks of :mod:`rawflow.kernels.cuda_coupling`, run by ``test_kernels_cuda_sim.py`` in a subprocess.

Must start with ``NUMBA_ENABLE_CUDASIM=1`` in the environment (read when numba is first imported),
or on a machine with a GPU. Prints one JSON line ``{"worst": {...}, "failures": [...],
"simulator": bool}`` and exits 0; the pytest side asserts. Oracle and error measures are those of
``test_kernels_cpu.py`` (the reference path in long double, "term units").
Tiny grids: the simulator runs each CUDA thread as a Python thread.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import numpy as np
from numba import cuda

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_kernels_cpu import BOUND, LD, oracle, scale_obj, term_error  # noqa: E402

from rawflow.kernels import cuda_coupling as G  # noqa: E402

THREADS, BLOCKS = 32, 2  # 3 rows on 2 blocks: the row loop strides; 45 columns on one warp
WORST: dict = {}
FAILURES: list = []


def check(ok: bool, what: str) -> None:
    if not ok:
        FAILURES.append(what)


def note(key: str, value: float, bound: float) -> None:
    WORST[key] = max(WORST.get(key, 0.0), float(value))
    check(value <= bound, f"{key}: {value:.3f} > {bound}")


def host(a):
    return a.copy_to_host()


def run_case(dtype, scale: str, c: float, seed: int, shape=(3, 45), *, api=G, to_device=cuda.to_device,
             to_host=host, threads=THREADS, blocks=BLOCKS, label="") -> None:
    """Every entry point of ``api`` (a coupling-kernel module: ``affine_forward`` … with ``threads=``
    and ``blocks=`` keywords) on one case, against the long-double oracle; arrays move with
    ``to_device`` / ``to_host``. ``tests/kernels/test_kernels_cuda_c.py`` reuses it for the CUDA C kernels."""
    G, host = api, to_host  # noqa: N806  (the names the checks below were written with)
    rng = np.random.default_rng(seed)
    n, m = shape[0], shape[1]
    trailing = shape[2:]
    size = int(np.prod(trailing, dtype=int))
    x = (rng.normal(size=shape) * 3).astype(dtype)
    h = rng.normal(size=(n, 2 * m) + trailing).astype(dtype) * dtype(2)
    g = rng.normal(size=shape).astype(dtype)
    gl = rng.normal(size=n).astype(dtype)
    sc = scale_obj(scale, c)
    kw = dict(threads=threads, blocks=blocks)
    dx, dh, dg, dgl = (to_device(a) for a in (x, h, g, gl))
    tag = f"{label}{np.dtype(dtype).name} {scale}{'' if not trailing else ' image'}"
    bound = BOUND[dtype]

    y, ld = G.affine_forward(dx, dh, sc, **kw)
    xi, ldi = G.affine_inverse(y, dh, sc, **kw)
    gx, gh = G.affine_backward(dx, dh, dg, dgl, sc, **kw)
    gy, ghi = G.affine_inverse_backward(xi, dh, dg, dgl, sc, **kw)
    y, ld, xi, ldi, gx, gh, gy, ghi = map(host, (y, ld, xi, ldi, gx, gh, gy, ghi))
    check(y.shape == x.shape and gh.shape == h.shape and y.dtype == dtype, f"{tag}: shapes/dtypes")

    # rows of M·size columns, as the kernels see them
    f2 = lambda a: a.reshape(n, -1)  # noqa: E731
    x2, h2, g2, y2, xi2 = f2(x), f2(h), f2(g), f2(y), f2(xi)
    mm = m * size

    o = oracle(scale, c, x2, h2, g2, gl, "forward")
    X = x2.astype(LD)
    terms_y = np.abs(X * o["s"]) * (1 + o["sigma"]) + np.abs(o["t"])
    note(f"forward y {tag}", term_error(y2, o["out"], terms_y, dtype), bound)
    ld_terms = np.sum(np.abs(o["log_s"]) + o["sigma"], axis=1)
    note(f"forward logdet {tag}", term_error(ld, o["ld"], ld_terms, dtype), bound)
    check(bool(np.all(ld + ldi == 0)), f"{tag}: forward + inverse log-dets do not cancel exactly")
    eps = np.finfo(dtype).eps
    rt_terms = np.maximum(np.abs(x2), np.abs(y2) / o["s"].astype(np.float64))
    rt = np.max(np.abs(xi2.astype(np.float64) - x2) / (eps * rt_terms))
    note(f"roundtrip {tag}", rt, 2.0)

    G_, GL = g2.astype(LD), gl.astype(LD)[:, None]
    gsx = G_ * o["s"] * X
    terms_h = (np.abs(gsx) * (1 + o["sigma"]) + np.abs(GL)) * o["dlog_s"] + np.abs(gsx + GL) * o["sigma_d"]
    note(f"backward input {tag}", term_error(f2(gx), o["gin"], np.abs(G_ * o["s"]) * (1 + o["sigma"]), dtype), bound)
    note(f"backward h_s {tag}", term_error(f2(gh)[:, :mm], o["gh"][:, :mm], terms_h, dtype), bound)
    check(np.array_equal(f2(gh)[:, mm:], g2), f"{tag}: backward gt is not the cotangent")

    oi = oracle(scale, c, y2, h2, g2, gl, "inverse")
    terms_x = (np.abs(y2.astype(LD)) + np.abs(oi["t"])) / oi["s"] * (1 + oi["sigma"])
    note(f"inverse x {tag}", term_error(xi2, oi["out"], terms_x, dtype), bound)
    P = xi2.astype(LD)
    gxp = G_ * P
    terms_hi = (np.abs(gxp) + np.abs(GL)) * oi["dlog_s"] + np.abs(gxp + GL) * oi["sigma_d"]
    # oracle gradients at the kernel's own inverse output (the cache the VJP was given)
    oc = oracle(scale, c, xi2, h2, g2, gl, "forward")
    terms_gy = np.abs(G_ / oc["s"]) * (1 + oc["sigma"])
    note(f"inverse_backward input {tag}", term_error(f2(gy), G_ / oc["s"], terms_gy, dtype), bound)
    ghs_exact = (-(G_ * P) - GL) * oc["dlog_s"]
    note(f"inverse_backward h_s {tag}", term_error(f2(ghi)[:, :mm], ghs_exact, terms_hi, dtype), bound)
    check(np.array_equal(f2(ghi)[:, mm:], -f2(gy)), f"{tag}: inverse_backward gt is not −gy")

    # Same results whatever the number of blocks (rows are independent; per-row order is fixed).
    y1, ld1 = G.affine_forward(dx, dh, sc, threads=threads, blocks=1)
    check(np.array_equal(host(y1), y) and np.array_equal(host(ld1), ld), f"{tag}: result depends on the grid size")


STRESS: list = []  # the stress cases run (names)


def run_stress(api=G, to_device=cuda.to_device, to_host=host, threads=THREADS, blocks=1, label="cuda",
               cases=(("exp", (3, 5)), ("bounded", (3, 5)), ("sigmoid", (3, 5)))) -> None:
    """Issue 14, item 8: the stress points of :mod:`rawflow.check.stress` (``|h_s|`` up to 30 for
    every scale map, rows at 1e-6 / 1 / 8) through the device kernels, judged against the
    reference transform's 60-digit oracle and its conditioning bounds (``16·eps·T``), both dtypes,
    both directions, every VJP (the log-det cancellation is :func:`run_case`'s). One block and
    three cases: the simulator runs each thread as a Python thread (a forward launch with its
    log-det reduction takes ~1 s); the CUDA C emulator's test adds batches of 1 and both load paths.
    Needs mpmath."""
    try:
        import mpmath  # noqa: F401
    except ImportError:
        return
    from rawflow import AffineTransform
    from rawflow.check import check_precise
    from rawflow.check.stress import KernelTransformLayer, TransformLayer, transform_points

    for i, (scale, shape) in enumerate(cases):
        x, h = transform_points(scale, shape, seed=500 + i)
        ref = TransformLayer(AffineTransform(scale))
        dev = KernelTransformLayer(api, scale, to_device=to_device, to_host=to_host, threads=threads, blocks=blocks)
        report = check_precise(ref, {"h": h}, x, variants={"reference": ref, label: dev}, structure=False,
                               verify_oracle=False, name=f"stress-{scale}-{shape[0]}x{shape[1]}")
        FAILURES.extend(f"{label} stress: {r.line()}" for r in report.failures())
        for dtype in ("float64", "float32"):
            worst = report.worst(check="precise", dtype=dtype, layer=f"{report.meta['layer']}[{label}]")
            # in units of the conditioning bound eps·T (the check's bar is 16)
            note(f"{label} stress {scale} {dtype} err/(eps·T)", worst.max_rel_err / np.finfo(dtype).eps, 16.0)
        STRESS.append(report.meta["layer"])


def run_validation() -> None:
    x = cuda.to_device(np.ones((2, 4)))
    h = cuda.to_device(np.ones((2, 8)))
    bad = [
        lambda: G.affine_forward(np.ones((2, 4)), h),  # host array
        lambda: G.affine_forward(x, cuda.to_device(np.ones((2, 7)))),  # shape
        lambda: G.affine_forward(x, cuda.to_device(np.ones((2, 8), np.float32))),  # dtype
        lambda: G.affine_forward(x, h, threads=48),  # not a multiple of 32
        lambda: G.affine_forward(x, h, "nope"),
        lambda: G.affine_backward(x, h, x, cuda.to_device(np.ones(3))),  # glogdet shape
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


def run_empty(*, api=G, to_device=cuda.to_device, to_host=host, label="") -> None:
    """An empty batch (N = 0, issue 13's rule): every entry point returns correctly shaped empty
    outputs, vectors and images, both dtypes."""
    for dtype in (np.float64, np.float32):
        for shape in ((0, 45), (0, 2, 3, 4)):
            x = np.empty(shape, dtype)
            h = np.empty((0, 2 * shape[1]) + shape[2:], dtype)
            dx, dh, dgl = to_device(x), to_device(h), to_device(np.empty(0, dtype))
            outs = {
                "forward": api.affine_forward(dx, dh, "exp"),
                "inverse": api.affine_inverse(dx, dh, "exp"),
                "backward": api.affine_backward(dx, dh, dx, dgl, "exp"),
                "inverse_backward": api.affine_inverse_backward(dx, dh, dx, dgl, "exp"),
            }
            for name, (a, b) in outs.items():
                a, b = to_host(a), to_host(b)
                want = (shape, (0,)) if name in ("forward", "inverse") else (shape, h.shape)
                check((a.shape, b.shape) == want and a.dtype == b.dtype == dtype,
                      f"{label}empty batch {np.dtype(dtype).name} {shape} {name}: got {a.shape}, {b.shape}")


def main() -> None:
    try:
        run_empty()
        for dtype in (np.float64, np.float32):
            for k, (scale, c) in enumerate((("exp", 2.0), ("bounded", 2.0), ("bounded", 0.7), ("sigmoid", 2.0))):
                run_case(dtype, scale, c, seed=10 * k + (dtype == np.float32))
        run_case(np.float32, "sigmoid", 2.0, seed=99, shape=(2, 2, 3, 4))  # (N, C, H, W) images
        # two warps per block: the warps' pairs meet in shared memory, then warp 0's shuffle tree
        run_case(np.float64, "bounded", 2.0, seed=7, shape=(2, 70), threads=64, blocks=1, label="2 warps ")
        run_validation()
        run_stress()
    except Exception:  # noqa: BLE001
        FAILURES.append(traceback.format_exc())
    simulator = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    print(json.dumps({"worst": WORST, "failures": FAILURES, "simulator": simulator, "stress": STRESS}))


if __name__ == "__main__":
    main()
