"""``rawflow demo``: two trainings whose results are checked in the same run.

(a) A RealNVP on 8 Gaussians. The density is known in closed form
    (:func:`rawflow.data.datasets.eight_gaussians_log_prob`), so the flow's held-out NLL is compared with
    the true density's NLL on the same held-out points: their difference estimates
    ``KL(p ‖ p_model)``, which the demo requires below 0.05 nats.
(b) A small Glow on the 8×8 digits (17 grey levels, uniform dequantisation). Its held-out bits/dim
    must beat independent per-pixel categorical distributions fitted to the same training images
    (:func:`rawflow.data.images.independent_pixel_baseline`, exact under the same dequantisation).

Both are ordinary runs (:mod:`rawflow.app.runs`) in ``OUT/eight_gaussians`` and ``OUT/digits``, so
``rawflow sample|interpolate|eval --run OUT/digits`` works on them afterwards. Plots:
``eight_gaussians_density.png`` (data | learned density | true density | samples),
``digits_samples.png`` (held-out digits next to samples at two temperatures),
``digits_interpolation.png`` (latent interpolation between held-out digits), and each run's
``loss.png``. Everything is summarised in ``OUT/metrics.json``.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from .._version import __version__

GAP_NATS = 0.05  # the 8-Gaussians claim: flow NLL − true NLL on the same held-out points

# Chosen by measurement on 2 shared CPU cores, one BLAS thread, float64 (held-out figures, seed 0–3):
# * 8 Gaussians, 10000 steps: 8 couplings × (64, 64), exp scale: gap 0.13 (diverged at longer runs);
#   bounded scale: 0.07; 12 × (96, 96): 0.041/0.047 with 20k training points, of which ~0.017 was
#   overfitting (train gap 0.025), hence 120k points; 16 × (96, 96): 0.033, 0.036, 0.041, 0.031 (~70 s).
#   A leading ActNorm, LU mixing between couplings, tanh/leaky ReLU or scale bound 3 did not help.
# * digits, Glow (affine, sigmoid scale, LU 1×1): K=4, L=2, width 32: 2.32 bits/dim, overfits
#   after ~2000 steps; width 16: 2.30; K=8, L=1: 2.24–2.28; K=8, L=2, width 16: 2.20–2.23 (~90 s for
#   3000 steps, best validation around step 2000–2500). Independent pixels: 2.41. Those were with
#   the centring (x − ½); with `rawflow train`'s image defaults since then (logit preprocessing,
#   float32, early stopping), K=8, L=2, width 16: 2.0676 (seed 0, best validation at step 2750).
EIGHT_GAUSSIANS = {
    "model": "realnvp", "data": "eight_gaussians", "n_samples": 125000, "val_fraction": 0.02, "test_fraction": 0.04,
    "arch": {"n_couplings": 16, "hidden": [96, 96], "scale": "bounded", "activation": "relu"},
    "optimizer": "adam", "lr": 2e-3, "schedule": "cosine", "warmup": 200, "batch_size": 128, "steps": 10000,
    "eval_every": 1000,
}
DIGITS = {
    "model": "glow", "data": "digits", "val_fraction": 0.1, "test_fraction": 0.1,
    "arch": {"K": 8, "L": 2, "width": 16},
    "optimizer": "adam", "lr": 2e-3, "schedule": "cosine", "warmup": 100, "batch_size": 64, "steps": 3000,
    "eval_every": 250,
}
QUICK = {
    "eight_gaussians": {"n_samples": 2000, "val_fraction": 0.1, "test_fraction": 0.2,
                        "arch": {"n_couplings": 2, "hidden": [16]}, "steps": 30, "eval_every": 15, "warmup": 0},
    "digits": {"arch": {"K": 1, "L": 2, "width": 8}, "steps": 12, "eval_every": 6, "warmup": 0},
}


def _options(base: dict, quick: dict | None, seed: int) -> dict:
    options = {**base, "seed": seed}
    if quick:
        options.update({k: v for k, v in quick.items() if k != "arch"})
        options["arch"] = {**base["arch"], **quick.get("arch", {})}
    return options


def run(out: str, *, quick: bool = False, seed: int = 0, quiet: bool = False) -> int:
    from . import plots
    from .._array import to_numpy
    from ..data.datasets import eight_gaussians_log_prob
    from .files import run_lock
    from .runs import RunDiverged, eval_inputs, load_data, load_params, make_config, quantize, run_training

    start = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    say = (lambda *a: None) if quiet else print
    rng = np.random.default_rng([seed, 99])
    written = []
    results: dict = {}

    # (a) 8 Gaussians ----------------------------------------------------------------------------
    cfg = make_config(_options(EIGHT_GAUSSIANS, QUICK["eight_gaussians"] if quick else None, seed))
    run_dir = os.path.join(out, "eight_gaussians")
    realnvp = (f"RealNVP ({cfg['arch']['n_couplings']} affine couplings, {cfg['arch']['scale']} scale, "
               f"{'-'.join(map(str, cfg['arch']['hidden']))} ReLU MLPs)")
    say(f"[1/2] {realnvp} on 8 Gaussians: {cfg['steps']} steps")
    try:
        with run_lock(run_dir):
            m = run_training(_fresh(cfg, run_dir), run_dir, quiet=quiet, desc="8 Gaussians")
    except RunDiverged as exc:
        print(f"rawflow demo: {exc}", file=sys.stderr)
        return 1
    gap = m["test_nll"] - m["test_true_nll"]
    results["eight_gaussians"] = {**m, "nll_minus_true_nll": gap, "run": run_dir}
    say(f"      RealNVP's held-out NLL {m['test_nll']:.4f} nats; true density {m['test_true_nll']:.4f} "
        f"(gap {gap:+.4f}, claim < {GAP_NATS}); full-covariance Gaussian {m['test_gaussian_nll']:.4f}")
    params, model, cfg, _ = load_params(run_dir)
    data = load_data(cfg)
    written.append(plots.density_panels(
        os.path.join(out, "eight_gaussians_density.png"), data.test,
        lambda g: to_numpy(model.log_prob(params, g)), true_log_prob=eight_gaussians_log_prob,
        samples=to_numpy(model.sample(params, rng, len(data.test))),
        title=f"RealNVP on 8 Gaussians: held-out NLL {m['test_nll']:.3f} vs true {m['test_true_nll']:.3f} nats"))
    figures = {written[-1]: f"{realnvp} on 8 Gaussians: data, learned density, true density, samples",
               os.path.join(run_dir, "loss.png"): "RealNVP on 8 Gaussians: training curve"}

    # (b) digits ---------------------------------------------------------------------------------
    cfg = make_config(_options(DIGITS, QUICK["digits"] if quick else None, seed))
    run_dir = os.path.join(out, "digits")
    a = cfg["arch"]
    glow = f"Glow (K={a['K']}, L={a['L']}, width {a['width']}, {a['coupling']} couplings, {a['permutation']} 1×1 convs)"
    say(f"[2/2] {glow} on 8×8 digits ({cfg['n_bins']} levels, dequantised, {cfg['preprocess']} preprocessing, "
        f"{cfg['dtype']}): {cfg['steps']} steps")
    try:
        with run_lock(run_dir):
            m = run_training(_fresh(cfg, run_dir), run_dir, quiet=quiet, desc="digits Glow")
    except RunDiverged as exc:
        print(f"rawflow demo: {exc}", file=sys.stderr)
        return 1
    margin = m["test_baseline_bits_per_dim"] - m["test_bits_per_dim"]
    results["digits"] = {**m, "baseline_minus_bits_per_dim": margin, "run": run_dir,
                         "baseline": "independent per-pixel categorical distributions (add-one smoothing) fitted "
                                     "to the training images, exact under the same dequantisation"}
    say(f"      Glow's held-out {m['test_bits_per_dim']:.4f} bits/dim; independent-pixel baseline "
        f"{m['test_baseline_bits_per_dim']:.4f} (better by {margin:.4f})")
    params, model, cfg, _ = load_params(run_dir)
    data = load_data(cfg)
    n_bins = cfg["n_bins"]
    grids = {"held-out digits": data.test[:64] / (n_bins - 1)}
    for t in (1.0, 0.7):
        grids[f"samples, T = {t}"] = quantize(cfg, model.sample(params, rng, 64, temperature=t)) / (n_bins - 1)
    written.append(plots.sample_grids(os.path.join(out, "digits_samples.png"), grids,
                                      title=f"Glow on 8×8 digits: {m['test_bits_per_dim']:.3f} bits/dim "
                                      f"(independent pixels {m['test_baseline_bits_per_dim']:.3f})"))
    x = eval_inputs(cfg, data, "test")
    frames = to_numpy(model.interpolate(params, x[0:12:2], x[1:12:2], 10))
    pixels = quantize(cfg, frames.reshape(-1, *frames.shape[2:])).reshape(frames.shape) / (n_bins - 1)
    written.append(plots.interpolation_strip(os.path.join(out, "digits_interpolation.png"), pixels,
                                             title="Glow on 8×8 digits: latent interpolation (decoded)"))
    figures.update({written[-2]: f"{glow} on digits: held-out digits, samples at T = 1.0 and 0.7",
                    written[-1]: f"{glow} on digits: decoded latent interpolation between held-out digits",
                    os.path.join(run_dir, "loss.png"): "Glow on digits: training curve"})

    # summary ------------------------------------------------------------------------------------
    claims = {
        "eight_gaussians_within_0.05_nats_of_true_nll": {
            "value": gap, "threshold": GAP_NATS, "holds": bool(gap < GAP_NATS)},
        "glow_beats_independent_pixel_baseline": {
            "value": margin, "threshold": 0.0, "holds": bool(margin > 0)},
    }
    summary = {"rawflow_version": __version__, "seed": seed, "quick": quick, "claims": claims, **results,
               "figures": figures, "wall_time_s": time.perf_counter() - start}
    from .runs import write_json

    write_json(os.path.join(out, "metrics.json"), summary)
    written.append(os.path.join(out, "metrics.json"))
    systems = {"eight_gaussians_within_0.05_nats_of_true_nll": "RealNVP, 8 Gaussians",
               "glow_beats_independent_pixel_baseline": "Glow, digits"}
    for name, c in claims.items():
        print(f"{'ok ' if c['holds'] else 'NOT'} {name} ({systems[name]}): {c['value']:+.4f}")
    print(f"held-out NLL (8 Gaussians): RealNVP {results['eight_gaussians']['test_nll']:.4f} nats, "
          f"true density {results['eight_gaussians']['test_true_nll']:.4f}")
    print(f"held-out bits/dim (digits): Glow {results['digits']['test_bits_per_dim']:.4f}, "
          f"independent pixels {results['digits']['test_baseline_bits_per_dim']:.4f}")
    print("figures (and the system each comes from):")
    width = max(len(path) for path in figures)
    for path, what in figures.items():
        print(f"  {path.ljust(width)}  {what}")
    print(f"demo took {summary['wall_time_s']:.0f} s; wrote {os.path.join(out, 'metrics.json')} and the runs "
          f"{out}/eight_gaussians (RealNVP), {out}/digits (Glow)")
    if not quick and not all(c["holds"] for c in claims.values()):
        print("rawflow demo: a claimed result did not hold (see metrics.json)", file=sys.stderr)
        return 1
    return 0


def _fresh(cfg: dict, run_dir: str) -> dict:
    """The demo retrains from scratch: an old checkpoint in its run folder (the CLI asked for
    ``--force`` before an existing demo folder is reused) is replaced."""
    from .runs import CHECKPOINT, LEGACY_CHECKPOINT

    for name in (CHECKPOINT, LEGACY_CHECKPOINT):
        path = os.path.join(run_dir, name)
        if os.path.isfile(path):
            os.remove(path)
    return cfg
