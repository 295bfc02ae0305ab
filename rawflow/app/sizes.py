"""Sizes checked before work starts: a clear error instead of a MemoryError, an hour of swapping, or a
550,040-pixel-wide PNG.

Two kinds of check:

* fixed caps where a size is absurd whatever the machine (:data:`MAX_STEPS`: the loss of every step is
  kept in memory and in the checkpoint; :data:`MAX_PNG_FRAMES`: a strip wider than a screen);
* memory estimates against the machine's physical memory (:func:`physical_memory`) for data, the
  model's parameters with their gradients and optimiser state, and sample batches; a request that
  needs more than :data:`MEMORY_FRACTION` of it is refused, with both figures in the message.
"""

from __future__ import annotations

import math
import os

MAX_STEPS = 10**8               # 0.8 GB of loss history (float64) in memory and in every checkpoint
MAX_PNG_FRAMES = 64             # interpolate: frames per pair / pairs drawn in one PNG
MAX_PNG_SAMPLES = 4096          # sample: images in one PNG grid (64 × 64)
MEMORY_FRACTION = 0.5
# Copies of the parameters a training run holds: params, gradients, two optimiser slots, the best
# parameters, and the checkpoint being written.
PARAM_COPIES = 6


def physical_memory() -> int:
    """Bytes of physical memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 16 * 2**30


def _gb(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def check_memory(what: str, need_bytes: float) -> None:
    """Raise :class:`ValueError` if ``need_bytes`` exceeds the share of memory a command may use."""
    have = physical_memory()
    if need_bytes > MEMORY_FRACTION * have:
        raise ValueError(f"{what} needs about {_gb(need_bytes)}, more than {MEMORY_FRACTION:.0%} of this machine's "
                         f"{_gb(have)} of memory; choose a smaller size")


def checkpoint_limit() -> int:
    """The most bytes of arrays a command loads from a checkpoint: refused before allocation beyond it."""
    return int(MEMORY_FRACTION * physical_memory())


def _mlp(widths: list[int]) -> int:
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


def parameter_count(cfg: dict) -> int:
    """An estimate (within a small factor) of the model's parameter count from its config alone."""
    a, shape = cfg["arch"], cfg["event_shape"]
    d = math.prod(shape)
    if cfg["kind"] == "vector" or cfg["model"] == "nice":
        hidden = list(a.get("hidden", [64]))
        out = 2 * d if cfg["model"] == "realnvp" else d
        return a.get("n_couplings", 4) * _mlp([d, *hidden, out])
    c, h, w = shape if len(shape) == 3 else (1, *shape[-2:])
    width, levels = a.get("width", 32), a.get("L", 1)
    per_level = a.get("K", 1) if cfg["model"] == "glow" else 3 * a.get("blocks", 1)
    total = 0
    for level in range(levels):
        c = 4 * c  # squeeze
        total += per_level * (9 * c * width + width * width + 9 * width * 2 * c + c * c)
        c = c // 2  # split
    return total


def check_request(cfg: dict) -> None:
    """Before any data is made: the step count and the points drawn from a named 2-D density."""
    from ..data.datasets import DATASETS

    if cfg["steps"] > MAX_STEPS:
        raise ValueError(f"--steps {cfg['steps']}: at most {MAX_STEPS:.0e} (every step's loss is kept in memory and "
                         "in the checkpoint)")
    if cfg["data"] in DATASETS:  # float64 points, the split copy and the training copy
        check_memory(f"--n-samples {cfg['n_samples']}", 3 * 8 * 2 * cfg["n_samples"])


def check_model(cfg: dict) -> None:
    """Once the data's shape is known: parameters (with gradients and optimiser state) and one batch."""
    item = 4 if cfg["dtype"] == "float32" else 8
    n = parameter_count(cfg)
    copies = PARAM_COPIES + (1 if cfg.get("ema") is not None else 0)  # the moving average
    check_memory(f"the model (about {n:.3g} parameters, with gradients and optimiser state)", copies * item * n)
    d = math.prod(cfg["event_shape"])
    a = cfg["arch"]
    widest = max([d, *a.get("hidden", []), a.get("width", 0) * d // max(1, cfg["event_shape"][0])])
    check_memory(f"a batch of {cfg['batch_size']} through the model", 8 * item * cfg["batch_size"] * widest)


def check_sample_sizes(n: int, cfg: dict, png: bool) -> None:
    if png and n > MAX_PNG_SAMPLES:
        raise ValueError(f"--n {n}: at most {MAX_PNG_SAMPLES} samples in one PNG; write FILE.npz for more")
    check_memory(f"--n {n} samples", 8 * 8 * n * math.prod(cfg["event_shape"]))


def check_interpolation_sizes(steps: int, pairs: int, cfg: dict, png: bool) -> None:
    if png and (steps > MAX_PNG_FRAMES or pairs > MAX_PNG_FRAMES):
        raise ValueError(f"--steps {steps} × --pairs {pairs}: at most {MAX_PNG_FRAMES} of each in one PNG; "
                         "write FILE.npz for more")
    check_memory(f"--steps {steps} × --pairs {pairs} frames", 8 * 8 * steps * pairs * math.prod(cfg["event_shape"]))
