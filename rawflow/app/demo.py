"""``rawflow demo``: two trainings whose results are checked in the same run.

(a) A RealNVP on 8 Gaussians. The density is known in closed form
    (:func:`rawflow.data.datasets.eight_gaussians_log_prob`), so the flow's held-out NLL is compared with
    the true density's NLL on the same held-out points: their difference estimates
    ``KL(p ‖ p_model)``, which the demo requires below 0.05 nats.
(b) A small Glow on the 8×8 digits (17 grey levels, uniform dequantisation). Its held-out bits/dim
    must beat independent per-pixel categorical distributions fitted to the same training images
    (:func:`rawflow.data.images.independent_pixel_baseline`, exact under the same dequantisation).
(c) The same Glow made class-conditional as openai/glow's ``--ycond --weight_y 0.01`` (the label in
    the top prior's mean and log-std, a classifier head on the top latent), trained with the same
    settings and seed on the same split. Reported beside (b), on the same held-out digits: bits/dim
    given the labels, bits/dim with the labels unknown (``p(x) = (1/10)·Σ_y p(x | y)``), and two
    accuracies: the flow as a Bayes classifier (``argmax_y p(x | y)``) and the classifier head. No
    claim is attached to them: with ten balanced classes the labels can save at most
    ``log₂ 10 / 64 ≈ 0.052`` bits/dim, about the spread of (b) across seeds.

All are ordinary runs (:mod:`rawflow.app.runs`) in ``OUT/eight_gaussians``, ``OUT/digits`` and
``OUT/digits_ycond``, so ``rawflow sample|interpolate|translate|eval --run OUT/...`` works on them
afterwards. Plots: ``eight_gaussians_density.png`` (data | learned density | true density |
samples), ``digits_samples.png`` (held-out digits next to samples at two temperatures),
``digits_interpolation.png`` (latent interpolation between held-out digits),
``digits_ycond_samples.png`` (one row per class), ``digits_translation.png`` (held-out 3s moved
towards the 8s, 1s towards 7s, …: ``f⁻¹(f(x) + t·(m_b − m_a))``), and each run's ``loss.png``.
Everything is summarised in ``OUT/metrics.json``.
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
#   float32, early stopping), K=8, L=2, width 16: 2.0676 (seed 0, best validation at step 2750);
#   2.0711 (best at step 2000) after issue 16's convolutions, which round float32 differently.
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
DIGITS_YCOND = {**DIGITS, "ycond": True, "weight_y": 0.01}
#: translation pairs drawn by the demo (from, to)
TRANSLATIONS = ((3, 8), (1, 7), (0, 6), (4, 9))
QUICK = {
    "eight_gaussians": {"n_samples": 2000, "val_fraction": 0.1, "test_fraction": 0.2,
                        "arch": {"n_couplings": 2, "hidden": [16]}, "steps": 30, "eval_every": 15, "warmup": 0},
    "digits": {"arch": {"K": 1, "L": 2, "width": 8}, "steps": 12, "eval_every": 6, "warmup": 0},
}
QUICK["digits_ycond"] = QUICK["digits"]


def _options(base: dict, quick: dict | None, seed: int) -> dict:
    options = {**base, "seed": seed}
    if quick:
        options.update({k: v for k, v in quick.items() if k != "arch"})
        options["arch"] = {**base["arch"], **quick.get("arch", {})}
    return options


def run(out: str, *, quick: bool = False, seed: int = 0, quiet: bool = False, threads: int = 1) -> int:
    """Train and report (a)–(c) into ``out``; 0 when every claim holds (always with ``quick``).
    ``threads``: BLAS threads of the background process (the caller sets its own)."""
    from .runs import make_config

    start = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    # (c) starts first, in a second process where there is a second core: it trains while (a) and
    # (b) do (each run is single-threaded and seeded on its own, so the results are the same).
    ycond_cfg = make_config(_options(DIGITS_YCOND, QUICK["digits_ycond"] if quick else None, seed))
    ycond_dir = os.path.join(out, "digits_ycond")
    background = _start_in_background(ycond_cfg, ycond_dir, threads)
    try:
        return _run(out, quick, seed, quiet, start, ycond_cfg, ycond_dir, background)
    finally:
        if background is not None and background[0].is_alive():
            background[0].terminate()
            background[0].join()


def _run(out: str, quick: bool, seed: int, quiet: bool, start: float, ycond_cfg: dict, ycond_dir: str,
         background) -> int:
    from . import plots
    from .._array import to_numpy
    from ..data.datasets import eight_gaussians_log_prob
    from .files import run_lock
    from .runs import RunDiverged, eval_inputs, load_data, load_params, make_config, quantize, run_training

    say = (lambda *a: None) if quiet else print
    rng = np.random.default_rng([seed, 99])
    written = []
    results: dict = {}

    # (a) 8 Gaussians ----------------------------------------------------------------------------
    cfg = make_config(_options(EIGHT_GAUSSIANS, QUICK["eight_gaussians"] if quick else None, seed))
    run_dir = os.path.join(out, "eight_gaussians")
    realnvp = (f"RealNVP ({cfg['arch']['n_couplings']} affine couplings, {cfg['arch']['scale']} scale, "
               f"{'-'.join(map(str, cfg['arch']['hidden']))} ReLU MLPs)")
    say(f"[1/3] {realnvp} on 8 Gaussians: {cfg['steps']} steps")
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
    say(f"[2/3] {glow} on 8×8 digits ({cfg['n_bins']} levels, dequantised, {cfg['preprocess']} preprocessing, "
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
    pixels = quantize(cfg, frames) / (n_bins - 1)
    written.append(plots.interpolation_strip(os.path.join(out, "digits_interpolation.png"), pixels,
                                             title="Glow on 8×8 digits: latent interpolation (decoded)"))
    figures.update({written[-2]: f"{glow} on digits: held-out digits, samples at T = 1.0 and 0.7",
                    written[-1]: f"{glow} on digits: decoded latent interpolation between held-out digits",
                    os.path.join(run_dir, "loss.png"): "Glow on digits: training curve"})

    # (c) class-conditional digits ---------------------------------------------------------------
    cfg, run_dir = ycond_cfg, ycond_dir
    say(f"[3/3] the same Glow, class-conditional (openai's --ycond, --weight_y {cfg['weight_y']}): {cfg['steps']} steps"
        + (" (trained in a second process alongside [1/3] and [2/3])" if background is not None else ""))
    try:
        m = _finish(background, cfg, run_dir, quiet)
    except RunDiverged as exc:
        print(f"rawflow demo: {exc}", file=sys.stderr)
        return 1
    unconditional = results["digits"]["test_bits_per_dim"]
    results["digits_ycond"] = {
        **m, "run": run_dir, "unconditional_bits_per_dim": unconditional,
        "unconditional_minus_conditional_bits_per_dim": unconditional - m["test_bits_per_dim"],
        "unconditional_minus_marginal_bits_per_dim": unconditional - m["test_marginal_bits_per_dim"],
        "label_information_bound_bits_per_dim": float(np.log2(cfg["n_classes"]) / np.prod(cfg["event_shape"])),
    }
    say(f"      held-out {m['test_bits_per_dim']:.4f} bits/dim given the labels, "
        f"{m['test_marginal_bits_per_dim']:.4f} with the labels unknown; unconditional Glow {unconditional:.4f}; "
        f"accuracy {m['test_bayes_accuracy']:.3f} (argmax_y p(x | y)), {m['test_classifier_accuracy']:.3f} (head)")
    written.extend(_ycond_pictures(out, run_dir, rng, m))
    ycond_glow = f"class-conditional {glow}"
    figures.update({written[-2]: f"{ycond_glow} on digits: samples, one row per class, at T = 1.0 and 0.7",
                    written[-1]: f"{ycond_glow} on digits: held-out digits translated along m_to − m_from "
                                 f"({', '.join(f'{a}→{b}' for a, b in TRANSLATIONS)})",
                    os.path.join(run_dir, "loss.png"): "class-conditional Glow on digits: training curve"})

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
    y = results["digits_ycond"]
    print(f"held-out bits/dim (same digits): class-conditional Glow {y['test_bits_per_dim']:.4f} given the labels, "
          f"{y['test_marginal_bits_per_dim']:.4f} labels unknown; unconditional Glow {y['unconditional_bits_per_dim']:.4f}")
    print(f"held-out accuracy (digits, class-conditional Glow): argmax_y p(x | y) {y['test_bayes_accuracy']:.3f}, "
          f"classifier head {y['test_classifier_accuracy']:.3f}")
    print("figures (and the system each comes from):")
    width = max(len(path) for path in figures)
    for path, what in figures.items():
        print(f"  {path.ljust(width)}  {what}")
    print(f"demo took {summary['wall_time_s']:.0f} s; wrote {os.path.join(out, 'metrics.json')} and the runs "
          f"{out}/eight_gaussians (RealNVP), {out}/digits (Glow), {out}/digits_ycond (class-conditional Glow)")
    if not quick and not all(c["holds"] for c in claims.values()):
        print("rawflow demo: a claimed result did not hold (see metrics.json)", file=sys.stderr)
        return 1
    return 0


def _start_in_background(cfg: dict, run_dir: str, threads: int):
    """``(process, connection)`` training ``cfg`` in a spawned process, or ``None`` on one core."""
    if (os.cpu_count() or 1) < 2:
        return None
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no fork of a process holding BLAS or tqdm threads
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_train_child, args=(cfg, run_dir, threads, send), daemon=True)
    process.start()
    send.close()
    return process, receive


def _train_child(cfg: dict, run_dir: str, threads: int, conn) -> None:
    """The background run: its metrics, or why it failed, go back through ``conn``."""
    from .files import run_lock
    from .runs import RunDiverged, run_training

    try:
        try:
            from threadpoolctl import threadpool_limits
            limits = threadpool_limits(limits=threads, user_api="blas")
        except ImportError:  # scikit-learn's dependency; without it OpenBLAS keeps its own default
            limits = None
        with run_lock(run_dir):
            metrics = run_training(_fresh(cfg, run_dir), run_dir, quiet=True)
        conn.send(("ok", metrics))
        del limits
    except RunDiverged as exc:
        conn.send(("diverged", str(exc)))
    except BaseException as exc:  # reported by the parent, which owns the exit code
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _finish(background, cfg: dict, run_dir: str, quiet: bool) -> dict:
    """The metrics of run (c): trained here, or collected from the background process."""
    from .files import run_lock
    from .runs import RunDiverged, run_training

    if background is None:
        with run_lock(run_dir):
            return run_training(_fresh(cfg, run_dir), run_dir, quiet=quiet, desc="digits Glow | y")
    process, conn = background
    try:
        status, value = conn.recv()
    except EOFError:
        process.join()
        raise RuntimeError(f"the background training of {run_dir} ended without a result "
                           f"(exit code {process.exitcode})") from None
    process.join()
    if status == "diverged":
        raise RunDiverged(value)
    if status == "error":
        raise RuntimeError(f"the background training of {run_dir} failed: {value}")
    return value


def _ycond_pictures(out: str, run_dir: str, rng: np.random.Generator, m: dict) -> list[str]:
    """``digits_ycond_samples.png`` (one row per class, T = 1 and 0.7) and ``digits_translation.png``."""
    from . import plots
    from .._array import to_numpy
    from .runs import eval_inputs, load_data, load_params, quantize
    from .translate import class_means, translate

    params, model, cfg, _ = load_params(run_dir)
    data = load_data(cfg)
    k, n_bins, per = cfg["n_classes"], cfg["n_bins"], 8
    labels = np.repeat(np.arange(k), per)
    grids = {}
    for t in (1.0, 0.7):
        x = to_numpy(model.sample(params, rng, len(labels), temperature=t, y=labels))
        grids[f"one row per class 0…{k - 1}, T = {t}"] = quantize(cfg, x) / (n_bins - 1)
    paths = [plots.sample_grids(os.path.join(out, "digits_ycond_samples.png"), grids, ncol=per,
                                title=f"class-conditional Glow on 8×8 digits: {m['test_bits_per_dim']:.3f} bits/dim "
                                f"given the label")]
    means = class_means(model, params, eval_inputs(cfg, data, "train"), data.train_y, k)
    x_test = eval_inputs(cfg, data, "test")
    rows = []
    for a, b in TRANSLATIONS:
        index = np.flatnonzero(data.test_y == a)[:2]
        if len(index):
            rows.append(to_numpy(translate(model, params, x_test[index], a, b, means, 8)))
    frames = np.concatenate(rows, axis=1)  # (S, M, C, H, W)
    pixels = quantize(cfg, frames) / (n_bins - 1)
    pairs = ", ".join(f"{a}→{b}" for a, b in TRANSLATIONS)
    paths.append(plots.interpolation_strip(os.path.join(out, "digits_translation.png"), pixels,
                                           title=f"class-conditional Glow: {pairs}"))
    return paths


def _fresh(cfg: dict, run_dir: str) -> dict:
    """The demo retrains from scratch: an old checkpoint in its run folder (the CLI asked for
    ``--force`` before an existing demo folder is reused) is replaced."""
    from .runs import CHECKPOINT, LEGACY_CHECKPOINT

    for name in (CHECKPOINT, LEGACY_CHECKPOINT):
        path = os.path.join(run_dir, name)
        if os.path.isfile(path):
            os.remove(path)
    return cfg
