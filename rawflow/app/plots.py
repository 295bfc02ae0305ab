"""PNG figures for runs and the demo, drawn with ``matplotlib.figure.Figure`` (no pyplot, no GUI).

Every function takes host (NumPy) arrays and a path, writes one PNG and returns the path.
Images are ``(N, C, H, W)`` floats in ``[0, 1]`` (one channel: grey; three: RGB; otherwise the
first channel). Importing this module needs matplotlib (the ``demo`` extra).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from matplotlib.figure import Figure

from .._files import atomic_write

DPI = 100


def _save(fig: Figure, path: str) -> str:
    """Write the PNG atomically (a temporary file renamed over ``path``), so a failure never leaves half a file."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI))
    return path


def _tile(images: np.ndarray, ncol: int, pad: int = 1) -> np.ndarray:
    """``(N, C, H, W)`` in [0, 1] → one ``(rows·(H+pad)−pad, ncol·(W+pad)−pad[, 3])`` mosaic (pad = 1.0)."""
    n, c, h, w = images.shape
    if c == 3:
        pix = images.transpose(0, 2, 3, 1)
    else:
        pix = images[:, 0]
    nrow = math.ceil(n / ncol)
    shape = (nrow * (h + pad) - pad, ncol * (w + pad) - pad) + pix.shape[3:]
    out = np.ones(shape)
    for i in range(n):
        r, q = divmod(i, ncol)
        out[r * (h + pad):r * (h + pad) + h, q * (w + pad):q * (w + pad) + w] = pix[i]
    return out


def _show(ax, mosaic: np.ndarray, title: str | None = None) -> None:
    ax.imshow(np.clip(mosaic, 0, 1), cmap="gray" if mosaic.ndim == 2 else None, vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)


def sample_grids(path: str, grids: dict[str, np.ndarray], ncol: int = 8, title: str | None = None) -> str:
    """Side-by-side sample grids, e.g. ``{"T = 1.0": images, "T = 0.7": images}``."""
    fig = Figure(figsize=(3.2 * len(grids) + 0.4, 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(grids)))
    for ax, (label, images) in zip(axes, grids.items()):
        _show(ax, _tile(images, ncol), label)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def interpolation_strip(path: str, frames: np.ndarray, title: str | None = None) -> str:
    """``frames: (S, M, C, H, W)``: one row per pair, ``S`` steps from ``x0`` (left) to ``x1`` (right)."""
    s, m = frames.shape[:2]
    rows = frames.transpose(1, 0, 2, 3, 4).reshape(s * m, *frames.shape[2:])
    mosaic = _tile(rows, s)
    width = 0.55 * s + 0.4
    fig = Figure(figsize=(width, (width - 0.4) * mosaic.shape[0] / mosaic.shape[1] + 0.6), layout="constrained")
    _show(fig.subplots(), mosaic, title or "latent interpolation: z = (1 − t)·f(x₀) + t·f(x₁)")
    return _save(fig, path)


def density_panels(
    path: str,
    data: np.ndarray,
    log_prob: Callable[[np.ndarray], np.ndarray],
    *,
    true_log_prob: Callable[[np.ndarray], np.ndarray] | None = None,
    samples: np.ndarray | None = None,
    resolution: int = 200,
    title: str | None = None,
) -> str:
    """2-D: the data (histogram), the learned density ``exp(log_prob)`` on a grid, optionally the
    true density and model samples, on shared axes."""
    lo, hi = np.percentile(data, [0.5, 99.5], axis=0)
    pad = 0.15 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    xs, ys = np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    extent = (lo[0], hi[0], lo[1], hi[1])
    panels = [("held-out data", None), ("learned density", np.exp(_chunked(log_prob, grid)))]
    if true_log_prob is not None:
        panels.append(("true density", np.exp(_chunked(true_log_prob, grid))))
    if samples is not None:
        panels.append(("model samples", None))
    fig = Figure(figsize=(3.3 * len(panels), 3.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharex=True, sharey=True))
    vmax = max(float(p.max()) for _, p in panels if p is not None)
    for i, (ax, (label, dens)) in enumerate(zip(axes, panels)):
        if dens is not None:
            ax.imshow(dens.reshape(resolution, resolution), origin="lower", extent=extent, cmap="viridis",
                      vmin=0, vmax=vmax, aspect="auto")
        else:
            pts = data if i == 0 else samples
            ax.hist2d(pts[:, 0], pts[:, 1], bins=resolution // 2, range=[[lo[0], hi[0]], [lo[1], hi[1]]],
                      cmap="viridis")
        ax.set_title(label, fontsize=10)
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _chunked(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, size: int = 4096) -> np.ndarray:
    """``fn`` over row blocks: a deep flow's forward on a 200×200 grid at once holds ~1 GB of caches."""
    return np.concatenate([np.asarray(fn(x[i:i + size])) for i in range(0, len(x), size)])


def scatter(path: str, panels: dict[str, np.ndarray], title: str | None = None) -> str:
    """Scatter plots of the first two coordinates, one panel per entry, shared axes."""
    fig = Figure(figsize=(3.4 * len(panels), 3.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharex=True, sharey=True))
    for ax, (label, pts) in zip(axes, panels.items()):
        ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4)
        ax.set_title(label, fontsize=10)
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def paths_2d(path: str, data: np.ndarray, paths: np.ndarray, title: str | None = None) -> str:
    """Latent-space interpolation paths ``(S, M, D)`` drawn over the data (first two coordinates)."""
    fig = Figure(figsize=(4.2, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.scatter(data[:, 0], data[:, 1], s=1, alpha=0.2, color="0.5")
    for m in range(paths.shape[1]):
        ax.plot(paths[:, m, 0], paths[:, m, 1], "-o", ms=3)
    ax.set_aspect("equal")
    ax.set_title(title or "latent interpolation (decoded)", fontsize=10)
    return _save(fig, path)


def loss_curve(path: str, losses: Sequence[float], val_steps: Sequence[int] = (), val_nll: Sequence[float] = (),
               ylabel: str = "NLL (nats)", title: str | None = None) -> str:
    """Mini-batch loss per step (and a running mean), validation NLL at its evaluation steps."""
    losses = np.asarray(losses, dtype=float)
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.subplots()
    steps = np.arange(1, len(losses) + 1)
    if len(losses):
        ax.plot(steps, losses, lw=0.5, alpha=0.35, label="mini-batch")
        k = max(1, len(losses) // 50)
        if k > 1:
            smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1:], smooth, lw=1.2, label=f"running mean of {k}")
        # Keep the early transient from flattening the rest of the curve.
        lo, hi = np.percentile(losses, [0.5, 99]) if len(losses) > 20 else (losses.min(), losses.max())
        span = max(hi - lo, 1e-6)
        ax.set_ylim(lo - 0.1 * span, hi + 0.1 * span)
    if len(val_steps):
        ax.plot(val_steps, val_nll, "o-", ms=3, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)
