"""Prepared GPU check: every numba-cuda kernel against the NumPy reference, and a Glow training step
on CuPy against NumPy. Run on a machine with a GPU and CuPy::

    python tests/kernels/gpu_check.py            # exit 0: all passed (or skipped: no GPU / no CuPy)

Where no GPU or CuPy is available it prints why and exits 0 (``--simulate`` runs the kernel
checks under numba's CUDA simulator with tiny sizes instead, to test this script itself; it must
be started with ``NUMBA_ENABLE_CUDASIM=1`` in the environment).

1. Kernels (:mod:`rawflow.kernels.cuda_coupling` (numba-cuda) and
   :mod:`rawflow.kernels.cuda_c_coupling` (CUDA C): affine forward/inverse/both VJPs for each scale
   map; :mod:`rawflow.kernels.cuda_actnorm`: all four), float32 and float64, CuPy inputs, default
   launch configuration, vector and image shapes. Oracle: the NumPy reference path (the
   :class:`~rawflow.AffineTransform` / :class:`~rawflow.ActNorm` code) evaluated on the host in
   ``np.longdouble`` where it is an extended type (else float64). Measure: term units as in
   ``test_kernels_cpu.py`` / ``test_kernels_actnorm.py``; bounds: coupling 2 (float64) / 4
   (float32), ActNorm 2 / 1. Exact log-det cancellation; ``gt``/``−gy`` copied exactly. With a
   float64 oracle the float64 bounds get +2 (the oracle's own rounding).
2. A Glow training step: ``rawflow.models.architectures.glow(2, 2, 16, (1, 8, 8))`` in a
   :class:`~rawflow.FlowModel` with ``StandardNormal``, float64, parameters perturbed off their
   init (so every term is live): loss and every gradient leaf on CuPy vs NumPy within 1e-12
   relative (norm-wise per leaf), then one Adam step, the updated parameters likewise.
3. The same kind of step through the kernels: ``Chain([ActNorm(backend="cuda"), LULinear,
   ChannelCoupling(backend="cuda" | "cuda-c")])`` on CuPy vs the reference layers on NumPy (float64).
   Kernels and reference round differently (the kernels' sums are compensated), so the bound is
   1e-11: a few eps per element, amplified by cancellation in the conditioner's parameter sums.

Printed last: every failing check in full, then a short table with the worst check per (group, dtype,
measure), its bound and where it occurred. Exit status 1 if anything failed or raised.
"""

from __future__ import annotations

import os
import sys
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

LD = np.longdouble if np.finfo(np.longdouble).nmant >= 63 else np.float64
ROWS: list = []  # (group, check, dtype, measure, value, bound)


def record(group, check, dtype, measure, value, bound):
    """One measured check; the final table shows the worst per (group, dtype, measure)."""
    ROWS.append((group, check, np.dtype(dtype).name, measure, float(value), float(bound)))


def unavailable() -> str | None:
    """Why the GPU checks cannot run here, or ``None``."""
    try:
        import cupy
    except Exception as e:  # noqa: BLE001
        return f"CuPy is not importable ({type(e).__name__}: {e})"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA device"
    except Exception as e:  # noqa: BLE001
        return f"no usable CUDA device ({type(e).__name__}: {e})"
    return None


class Device:
    """Moves arrays to and from the device: CuPy on a GPU, numba device arrays under the simulator."""

    def __init__(self, simulate: bool):
        self.simulate = simulate
        if simulate:
            from numba import cuda

            self.to = cuda.to_device
            self.host = lambda a: a.copy_to_host()
            self.launch = {"threads": 32}
        else:
            import cupy

            self.to = cupy.asarray
            self.host = cupy.asnumpy
            self.launch = {}


def term_error(got, exact, terms, dtype) -> float:
    fi = np.finfo(dtype)
    err = np.abs(np.asarray(got).astype(LD) - exact) / np.maximum(fi.eps * terms, fi.smallest_subnormal)
    return float(np.max(err, initial=0.0))


# ------------------------------------------------------------------ 1a. coupling kernels
def coupling_oracle(scale, c, xin, h, g, gl, direction, point):
    """The reference AffineTransform in LD at ``xin``; VJP at ``point``; term scales σ, σ_d."""
    from rawflow import AffineTransform
    from rawflow.bijectors.scales import BoundedScale

    t = AffineTransform(BoundedScale(c) if scale == "bounded" else scale)
    X, H, G, GL, P = (np.asarray(a).astype(LD) for a in (xin, h, g, gl, point))
    m = xin.shape[1]
    log_s, dlog_s = t.scale(H[:, :m])
    s = np.exp(log_s)
    if direction == "forward":
        out, ld, _ = t.forward(X, H)
        gin, gh = t.backward((P, s, dlog_s), G, GL)
    else:
        out, ld, _ = t.inverse(X, H)
        gin, gh = t.inverse_backward((P, s, dlog_s), G, GL)
    hs = H[:, :m]
    if scale == "exp":
        sigma = sigma_d = np.zeros_like(hs)
    elif scale == "bounded":
        sigma = np.abs(hs) * dlog_s + np.abs(log_s)
        sigma_d = dlog_s * (3 + 2 * np.abs(np.tanh(hs / c) * hs / c))
    else:
        sigma = np.abs(hs + 2) * dlog_s + np.abs(log_s)
        sigma_d = dlog_s * (1 + np.abs(hs + 2))
    fi = np.finfo(xin.dtype)
    sigma_d = sigma_d + LD(fi.smallest_subnormal) / LD(fi.eps)
    return dict(out=out, ld=ld, gin=gin, gh=gh, log_s=log_s, dlog_s=dlog_s, s=s, t=H[:, m:], sigma=sigma,
                sigma_d=sigma_d)


def check_coupling(dev: Device, dtype, scale, c, shape, seed, backend="cuda"):
    """``backend``: ``"cuda"`` (numba-cuda, :mod:`~rawflow.kernels.cuda_coupling`) or ``"cuda-c"``
    (CUDA C via CuPy's RawModule, :mod:`~rawflow.kernels.cuda_c_coupling`)."""
    from rawflow.kernels import cuda_c_coupling, cuda_coupling
    from rawflow.bijectors.scales import BoundedScale

    CK = cuda_c_coupling if backend == "cuda-c" else cuda_coupling

    rng = np.random.default_rng(seed)
    n, ch = shape[:2]
    x = (rng.normal(size=shape) * 3).astype(dtype)
    h = (rng.normal(size=(n, 2 * ch) + shape[2:]) * 2).astype(dtype)
    g = rng.normal(size=shape).astype(dtype)
    gl = rng.normal(size=n).astype(dtype)
    sc = BoundedScale(c) if scale == "bounded" else scale
    d = dev.to
    y, ld = CK.affine_forward(d(x), d(h), sc, **dev.launch)
    xi, ldi = CK.affine_inverse(y, d(h), sc, **dev.launch)
    gx, gh = CK.affine_backward(d(x), d(h), d(g), d(gl), sc, **dev.launch)
    xinv, _ = CK.affine_inverse(d(x), d(h), sc, **dev.launch)
    gy, ghi = CK.affine_inverse_backward(xinv, d(h), d(g), d(gl), sc, **dev.launch)
    y, ld, ldi, gx, gh, xinv, gy, ghi = map(dev.host, (y, ld, ldi, gx, gh, xinv, gy, ghi))
    f2 = lambda a: np.asarray(a).reshape(n, -1)  # noqa: E731
    x2, h2, g2, y2, xinv2 = f2(x), f2(h), f2(g), f2(y), f2(xinv)
    mm = x2.shape[1]
    tag = f"{backend} {scale}{'' if scale != 'bounded' else f'(c={c})'} {'x'.join(map(str, shape))}"
    bound = {np.float64: 2.0 if LD is not np.float64 else 4.0, np.float32: 4.0}[dtype]

    o = coupling_oracle(scale, c, x2, h2, g2, gl, "forward", x2)
    X, G, GL = x2.astype(LD), g2.astype(LD), gl.astype(LD)[:, None]
    worst = {}
    worst["y"] = term_error(y2, o["out"], np.abs(X * o["s"]) * (1 + o["sigma"]) + np.abs(o["t"]), dtype)
    worst["logdet"] = term_error(ld, o["ld"], np.sum(np.abs(o["log_s"]) + o["sigma"], axis=1), dtype)
    gsx = G * o["s"] * X
    terms_h = (np.abs(gsx) * (1 + o["sigma"]) + np.abs(GL)) * o["dlog_s"] + np.abs(gsx + GL) * o["sigma_d"]
    worst["backward gx"] = term_error(f2(gx), o["gin"], np.abs(G * o["s"]) * (1 + o["sigma"]), dtype)
    worst["backward gh_s"] = term_error(f2(gh)[:, :mm], o["gh"][:, :mm], terms_h, dtype)
    oi = coupling_oracle(scale, c, x2, h2, g2, gl, "inverse", xinv2)
    terms_x = (np.abs(X) + np.abs(oi["t"])) / oi["s"] * (1 + oi["sigma"])
    worst["inverse x"] = term_error(xinv2, oi["out"], terms_x, dtype)
    gxp = G * xinv2.astype(LD)
    terms_hi = (np.abs(gxp) + np.abs(GL)) * oi["dlog_s"] + np.abs(gxp + GL) * oi["sigma_d"]
    worst["inverse_backward gy"] = term_error(f2(gy), oi["gin"], np.abs(G / oi["s"]) * (1 + oi["sigma"]), dtype)
    worst["inverse_backward gh_s"] = term_error(f2(ghi)[:, :mm], oi["gh"][:, :mm], terms_hi, dtype)
    for k, v in worst.items():
        record("coupling kernels", f"{tag} {k}", dtype, "term units", v, bound)
    cancel = np.max(np.abs(ld + ldi))
    record("coupling kernels", f"{tag} log-dets cancel ({cancel:.3g})", dtype, "exact checks failed", cancel != 0, 0)
    exact_copies = np.array_equal(f2(gh)[:, mm:], g2) and np.array_equal(f2(ghi)[:, mm:], -f2(gy))
    record("coupling kernels", f"{tag} gt copied exactly (g, −gy)", dtype, "exact checks failed", not exact_copies, 0)


# ------------------------------------------------------------------ 1b. ActNorm kernels
def check_actnorm(dev: Device, dtype, shape, seed):
    from cuda_sim_actnorm import BOUND, oracle, run_kernels, view

    from rawflow.kernels import cuda_actnorm as AK

    rng = np.random.default_rng(seed)
    c = shape[1]
    bias = rng.normal(size=c) * 3
    x = (rng.normal(size=shape) * 2 - view(bias, np.empty(shape))).astype(dtype)
    bias = bias.astype(dtype)
    log_scale = rng.normal(size=c).astype(dtype)
    g = rng.normal(size=shape).astype(dtype)
    gl = rng.normal(size=shape[0]).astype(dtype)

    class OnDevice:
        def __getattr__(self, name):
            fn = getattr(AK, name)
            return lambda *a: tuple(dev.host(o) for o in fn(*(dev.to(v) for v in a), **dev.launch))

    got = run_kernels(OnDevice(), x, bias, log_scale, g, gl)
    exact, terms, _ = oracle(x, bias, log_scale, g, gl, got["forward z"], got["inverse x"])
    tag = f"actnorm {'x'.join(map(str, shape))}"
    bound = BOUND[dtype] + (2.0 if (LD is np.float64 and dtype == np.float64) else 0.0)
    for k in exact:
        record("ActNorm kernels", f"{tag} {k}", dtype, "term units",
               term_error(got[k], exact[k], terms[k], dtype), bound)
    _, ldi = OnDevice().actnorm_inverse(got["forward z"], bias, log_scale)
    cancel = np.max(np.abs(got["forward logdet"] + ldi))
    record("ActNorm kernels", f"{tag} log-dets cancel ({cancel:.3g})", dtype, "exact checks failed", cancel != 0, 0)


# ------------------------------------------------------------------ 2./3. training steps on CuPy
def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    err = np.max(np.abs(a - b), initial=0.0)
    ref = np.max(np.abs(b), initial=0.0)
    return 0.0 if err == 0 else (np.inf if ref == 0 else err / ref)


def compare_step(name, model_np, model_cp, params, x, bound):
    """Loss, every gradient leaf and one Adam update, CuPy vs NumPy (float64)."""
    import cupy

    from rawflow import Adam, tree

    loss_np, g_np = model_np.nll_and_grad(params, x)
    params_cp = tree.map(cupy.asarray, params)
    loss_cp, g_cp = model_cp.nll_and_grad(params_cp, cupy.asarray(x))
    record(name, "loss", np.float64, "loss, relative", abs(loss_cp - loss_np) / abs(loss_np), bound)
    worst_leaf, worst_path = 0.0, ""
    leaves_cp = dict(tree.leaves(g_cp))
    for path, leaf in tree.leaves(g_np):
        e = rel(cupy.asnumpy(leaves_cp[path]), leaf)
        if e >= worst_leaf:
            worst_leaf, worst_path = e, path
    record(name, f"gradient leaf {worst_path} (worst of {len(leaves_cp)})", np.float64, "gradients, relative",
           worst_leaf, bound)
    opt = Adam(1e-3)
    p1_np, _ = opt.update(params, g_np, opt.init(params))
    p1_cp, _ = opt.update(params_cp, g_cp, opt.init(params_cp))
    leaves_cp = dict(tree.leaves(p1_cp))
    worst = max(rel(cupy.asnumpy(leaves_cp[p]), v) for p, v in tree.leaves(p1_np))
    record(name, "parameters after one Adam step", np.float64, "Adam step, relative", worst, bound)


def perturbed(params, rng, scale=0.05):
    from rawflow import tree

    return tree.map(lambda a: a + scale * rng.normal(size=a.shape).astype(a.dtype), params)


def check_glow_step():
    from rawflow import FlowModel, StandardNormal, glow

    rng = np.random.default_rng(0)
    model = FlowModel(glow(2, 2, 16, (1, 8, 8)), StandardNormal((64,)))
    x = rng.uniform(size=(8, 1, 8, 8))
    params = perturbed(model.init(rng, x), rng)
    compare_step("Glow step, CuPy vs NumPy", model, model, params, x, 1e-12)


def check_kernel_step(coupling_backend="cuda"):
    from rawflow import ActNorm, Chain, FlowModel, StandardNormal
    from rawflow.bijectors.image_coupling import ChannelCoupling
    from rawflow.bijectors.linear import LULinear

    def flow(backend, coupling):
        return Chain([
            ActNorm(4, 2, backend=backend),
            LULinear(4, 2, seed=1),
            ChannelCoupling(4, "affine", scale="sigmoid", width=8, backend=coupling),
            ActNorm(4, 2, backend=backend),
        ])

    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 4, 8, 8))
    ref = FlowModel(flow("reference", "reference"), StandardNormal((4, None, None)))
    ker = FlowModel(flow("cuda", coupling_backend), StandardNormal((4, None, None)))
    params = perturbed(ref.init(rng, x), rng)
    compare_step(f"kernel flow step, {coupling_backend} vs reference", ref, ker, params, x, 1e-11)


# ------------------------------------------------------------------ driver
def table() -> bool:
    """Failures in full, then the summary: the worst check per (group, dtype, measure)."""
    for group, check, dtype, measure, value, bound in ROWS:
        if not value <= bound:
            print(f"FAIL {group}: {check} ({dtype}): {measure} {value:.3g} > {bound:.3g}")
    summary: dict = {}  # (group, dtype, measure) -> (count, worst row); "worst" = largest value/bound
    for row in ROWS:
        key = (row[0], row[2], row[3])
        count, worst = summary.get(key, (0, row))
        badness = (lambda r: r[4] / r[5] if r[5] > 0 else r[4])
        summary[key] = (count + 1, row if badness(row) >= badness(worst) else worst)
    w = max(len(k[0]) for k in summary) if summary else 10
    print(f"\n{'check':{w}s}  {'dtype':7s}  {'measure':20s}  {'n':>3s}  {'worst':>9s}  {'bound':>7s}  ok    worst at")
    ok_all = True
    for (group, dtype, measure), (count, (_, check, _, _, value, bound)) in summary.items():
        ok = all(r[4] <= r[5] for r in ROWS if (r[0], r[2], r[3]) == (group, dtype, measure))
        ok_all &= ok
        print(f"{group:{w}s}  {dtype:7s}  {measure:20s}  {count:3d}  {value:9.3g}  {bound:7.3g}  "
              f"{'ok  ' if ok else 'FAIL'}  {check[:60]}")
    return ok_all


def main(argv) -> int:
    simulate = "--simulate" in argv
    if simulate:
        if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
            print("gpu_check: --simulate needs NUMBA_ENABLE_CUDASIM=1 in the environment")
            return 2
    else:
        reason = unavailable()
        if reason:
            print(f"gpu_check: skipped, {reason}")
            return 0
    dev = Device(simulate)
    t0 = time.perf_counter()
    errors = []
    if simulate:
        coupling_shapes, actnorm_shapes = [(3, 5), (2, 2, 3, 2)], [(5, 3), (2, 3, 2, 3)]
    else:
        import cupy

        print(f"gpu_check: {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}, "
              f"CuPy {cupy.__version__}, oracle {np.dtype(LD).name}")
        # (5, 3, 7, 5): 105 columns, the CUDA C kernels' scalar path
        coupling_shapes = [(64, 3072), (8, 12, 16, 16), (5, 3, 7, 5)]
        actnorm_shapes = [(64, 3072), (16, 12, 16, 16), (4096, 6)]
    backends = ("cuda",) if simulate else ("cuda", "cuda-c")
    for dtype in (np.float64, np.float32):
        for k, (scale, c) in enumerate((("exp", 2.0), ("bounded", 2.0), ("sigmoid", 2.0))):
            for j, shape in enumerate(coupling_shapes):
                for backend in backends:
                    try:
                        check_coupling(dev, dtype, scale, c, shape, seed=10 * k + j, backend=backend)
                    except Exception:  # noqa: BLE001
                        errors.append(traceback.format_exc())
        for j, shape in enumerate(actnorm_shapes):
            try:
                check_actnorm(dev, dtype, shape, seed=100 + j)
            except Exception:  # noqa: BLE001
                errors.append(traceback.format_exc())
    if not simulate:
        for step in (check_glow_step, check_kernel_step, lambda: check_kernel_step("cuda-c")):
            try:
                step()
            except Exception:  # noqa: BLE001
                errors.append(traceback.format_exc())
    for e in errors:
        print(e, file=sys.stderr)
    ok = table() and not errors
    print(f"gpu_check: {'PASSED' if ok else 'FAILED'} ({len(ROWS)} checks, {len(errors)} errors, "
          f"{time.perf_counter() - t0:.1f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
