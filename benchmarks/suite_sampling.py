"""Suite ``sampling``: generation throughput, ``x = f⁻¹(z)`` for ``z`` drawn from the prior.

Models: RealNVP on vectors (:func:`rawflow.realnvp`) and Glow on images (the ``glow`` suite's
model), with perturbed initial parameters. Rows: ``rawflow reference``
(:meth:`rawflow.FlowModel.sample`: host draw, then the inverse pass), ``rawflow numba``
(coupling kernels), ``torch eager`` (the same model in PyTorch, :mod:`benchmarks.torch_flows`,
``torch.randn`` then the inverse under ``no_grad``). ``items/s`` is samples per second. ``err``:
decoding one fixed latent batch, normwise relative difference from rawflow's float64 decode.
"""

from __future__ import annotations

import numpy as np

from . import models, torch_impls
from .runner import Candidate, Context, numba_threads, run_timed

NAME = "sampling"
BASELINE = "rawflow reference"
FULL = [("realnvp", dict(features=16, couplings=8, hidden=(64, 64)), 4096),
        ("glow", dict(K=4, L=2, width=64, shape=(3, 16, 16)), 64)]
QUICK = [("realnvp", dict(features=4, couplings=2, hidden=(8,)), 16),
         ("glow", dict(K=1, L=1, width=4, shape=(1, 4, 4)), 4)]


def _model(kind, cfg, backend="reference"):
    return models.realnvp_model(cfg, backend) if kind == "realnvp" else models.glow_model(cfg, backend)


def _label(kind, cfg, n, dtype):
    if kind == "realnvp":
        return f"RealNVP {cfg['features']}-d, {cfg['couplings']} couplings {cfg['hidden']}, {n} samples {dtype}"
    return (f"Glow K={cfg['K']} L={cfg['L']} width={cfg['width']} {'×'.join(map(str, cfg['shape']))}, "
            f"{n} samples {dtype}")


def run(ctx: Context):
    opts = ctx.opts
    dtype = np.dtype(opts.dtype)
    rows = []
    for kind, cfg, n in QUICK if opts.quick else FULL:
        case = _label(kind, cfg, n, opts.dtype)
        shape = (cfg["features"],) if kind == "realnvp" else tuple(cfg["shape"])
        rng = np.random.default_rng(opts.seed)
        x64 = rng.uniform(size=(max(n, 16), *shape)) if kind == "glow" else rng.standard_normal((max(n, 16), *shape))
        model = _model(kind, cfg)
        params64 = models.perturbed_params(model, x64, seed=opts.seed + 1, scale=0.01 if kind == "glow" else 0.05)
        d = int(np.prod(shape))
        z64 = np.random.default_rng(opts.seed + 3).standard_normal((n, d))
        ref = model.decode(params64, z64)
        params, z = models.cast(params64, dtype), z64.astype(dtype)
        from .harness import rel_error

        def rawflow_sampler(backend):
            err = {}

            def make():
                m = model if backend == "reference" else _model(kind, cfg, backend)
                err["v"] = rel_error(m.decode(params, z), ref)
                gen = np.random.default_rng(opts.seed + 4)
                return lambda: m.sample(params, gen, n)

            return make, (lambda out: err["v"])

        cands = []
        for name, backend, k in ((BASELINE, "reference", "baseline"), (f"rawflow numba ({opts.threads} thr)", "numba",
                                                                         "rawflow")):
            make, check = rawflow_sampler(backend)
            cands.append(Candidate(name, make, check, kind=k,
                                   enter=numba_threads(opts.threads) if backend == "numba" else None))
        if opts.torch:
            err_t = {}

            def make_torch():
                import torch

                from . import torch_flows

                torch_impls.set_threads(opts.threads)
                tp = torch_flows.to_torch(params["flow"])
                with torch.no_grad():
                    err_t["v"] = rel_error(torch_flows.inverse(model.bijector, tp, torch.from_numpy(z)).numpy(), ref)
                gen = torch.Generator().manual_seed(opts.seed + 4)
                tdtype = getattr(torch, opts.dtype)

                def sample():
                    with torch.no_grad():
                        zz = torch.randn(n, d, generator=gen, dtype=tdtype)
                        return torch_flows.inverse(model.bijector, tp, zz)

                return sample

            cands.append(Candidate(f"torch eager ({opts.threads} thr)", make_torch, lambda out: err_t["v"],
                                   kind="baseline", memory="torch", available=torch_impls.missing, note="same model"))
        tol = 1e-3 if dtype == np.float32 else 1e-9
        rows += run_timed(ctx, NAME, case, "sample", cands, BASELINE, items=n, tol=tol)
    ctx.note(NAME, "items/s: samples per second; err: a fixed latent batch decoded, against rawflow's float64 decode")
    return rows
