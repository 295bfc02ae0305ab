"""Two-dimensional toy densities, generated in code from a NumPy ``Generator``.

Every function returns ``(n, 2)`` float64 NumPy samples in shuffled order (any slice is an i.i.d.
sample) and depends only on ``rng``, so a seed reproduces the data bit for bit. The shapes follow
the usual benchmarks (scikit-learn's moons/circles; FFJORD's 8 Gaussians, checkerboard, pinwheel and
two spirals). :func:`eight_gaussians` and :func:`checkerboard` have closed-form densities
(:func:`eight_gaussians_log_prob`, :func:`checkerboard_log_prob`; both in :data:`TRUE_LOG_PROB`),
exact references for a trained model's log-likelihood.

>>> x = make_2d("two_moons", 1000, np.random.default_rng(0))
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

EIGHT_GAUSSIANS_RADIUS = 2 * math.sqrt(2)  # FFJORD's centres (±4 on the axes) divided by √2
EIGHT_GAUSSIANS_STD = 0.5 / math.sqrt(2)


def _check(name: str, n, rng) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name}: n must be a positive integer, got {n!r}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"{name}: rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return int(n)


def _shuffled(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    return x[rng.permutation(x.shape[0])]


def _halves(n: int) -> tuple[int, int]:
    return n - n // 2, n // 2


def two_moons(n: int, rng: np.random.Generator, noise: float = 0.1) -> np.ndarray:
    """Two interleaved half circles (scikit-learn's ``make_moons`` with random angles)."""
    n = _check("two_moons", n, rng)
    n_out, n_in = _halves(n)
    t_out = rng.uniform(0, math.pi, n_out)
    t_in = rng.uniform(0, math.pi, n_in)
    outer = np.stack([np.cos(t_out), np.sin(t_out)], axis=1)
    inner = np.stack([1 - np.cos(t_in), 0.5 - np.sin(t_in)], axis=1)
    x = np.concatenate([outer, inner]) + noise * rng.standard_normal((n, 2))
    return _shuffled(rng, x)


def circles(n: int, rng: np.random.Generator, noise: float = 0.05, factor: float = 0.5) -> np.ndarray:
    """Two concentric circles of radii 1 and ``factor`` (scikit-learn's ``make_circles``)."""
    n = _check("circles", n, rng)
    if not 0 < factor < 1:
        raise ValueError(f"circles: factor must lie in (0, 1), got {factor!r}")
    n_out, n_in = _halves(n)
    t = rng.uniform(0, 2 * math.pi, n)
    radius = np.concatenate([np.ones(n_out), np.full(n_in, factor)])
    x = radius[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1)
    return _shuffled(rng, x + noise * rng.standard_normal((n, 2)))


def _eight_centres(radius: float) -> np.ndarray:
    angles = np.arange(8) * (math.pi / 4)
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (8, 2)


def eight_gaussians(
    n: int, rng: np.random.Generator, radius: float = EIGHT_GAUSSIANS_RADIUS, std: float = EIGHT_GAUSSIANS_STD
) -> np.ndarray:
    """Equal-weight mixture of 8 isotropic Gaussians ``N(μ_k, std²I)``, ``μ_k`` at angles ``kπ/4``."""
    n = _check("eight_gaussians", n, rng)
    k = rng.integers(0, 8, n)
    return _eight_centres(radius)[k] + std * rng.standard_normal((n, 2))


def eight_gaussians_log_prob(
    x, radius: float = EIGHT_GAUSSIANS_RADIUS, std: float = EIGHT_GAUSSIANS_STD
) -> np.ndarray:
    """Exact ``log p(x): (N,)`` of :func:`eight_gaussians`::

        log p(x) = logsumexp_k(−‖x − μ_k‖²/(2σ²)) − log 8 − log(2πσ²)
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"eight_gaussians_log_prob: x must have shape (N, 2), got {x.shape}")
    d2 = ((x[:, None, :] - _eight_centres(radius)[None]) ** 2).sum(axis=2)  # (N, 8)
    e = -d2 / (2 * std**2)
    top = e.max(axis=1)
    lse = top + np.log(np.exp(e - top[:, None]).sum(axis=1))
    return lse - math.log(8) - math.log(2 * math.pi * std**2)


def checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform on the 8 dark squares of a 4×4 board over ``[−4, 4]²`` (FFJORD)."""
    n = _check("checkerboard", n, rng)
    x1 = rng.uniform(-2, 2, n)
    x2 = rng.uniform(0, 1, n) - 2 * rng.integers(0, 2, n) + np.mod(np.floor(x1), 2)
    return 2 * np.stack([x1, x2], axis=1)


CHECKERBOARD_LOG_AREA = math.log(32.0)  # 8 squares of side 2


def checkerboard_log_prob(x) -> np.ndarray:
    """Exact ``log p(x): (N,)`` of :func:`checkerboard`: ``−log 32`` on the 8 dark squares (side 2,
    ``⌊x₁/2⌋ + ⌊x₂/2⌋`` even, inside ``[−4, 4)²``), ``−∞`` elsewhere."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"checkerboard_log_prob: x must have shape (N, 2), got {x.shape}")
    cells = np.floor(x / 2)
    inside = np.all((x >= -4) & (x < 4), axis=1) & (np.mod(cells.sum(axis=1), 2) == 0)
    return np.where(inside, -CHECKERBOARD_LOG_AREA, -np.inf)


def pinwheel(
    n: int,
    rng: np.random.Generator,
    arms: int = 5,
    radial_std: float = 0.3,
    tangential_std: float = 0.1,
    rate: float = 0.25,
) -> np.ndarray:
    """``arms`` Gaussian blobs bent into a pinwheel (FFJORD / Johnson et al. 2016)."""
    n = _check("pinwheel", n, rng)
    if int(arms) != arms or arms < 1:
        raise ValueError(f"pinwheel: arms must be a positive integer, got {arms!r}")
    labels = np.arange(n) % arms
    feats = rng.standard_normal((n, 2)) * np.array([radial_std, tangential_std])
    feats[:, 0] += 1
    angles = 2 * math.pi * labels / arms + rate * np.exp(feats[:, 0])
    c, s = np.cos(angles), np.sin(angles)
    # row-vector times rotation [[c, −s], [s, c]]
    x = np.stack([feats[:, 0] * c + feats[:, 1] * s, -feats[:, 0] * s + feats[:, 1] * c], axis=1)
    return _shuffled(rng, 2 * x)


def spirals(n: int, rng: np.random.Generator, noise: float = 0.1) -> np.ndarray:
    """Two interleaved spiral arms (FFJORD's ``2spirals``)."""
    n = _check("spirals", n, rng)
    n_a, n_b = _halves(n)

    def arm(m):
        t = np.sqrt(rng.uniform(0, 1, m)) * (3 * math.pi)  # up to 540° of arc
        return np.stack([-np.cos(t) * t, np.sin(t) * t], axis=1) + 0.5 * rng.uniform(0, 1, (m, 2))

    # The second arm is the first rotated by 180°, drawn independently (FFJORD reuses the points).
    x = np.concatenate([arm(n_a), -arm(n_b)]) / 3
    return _shuffled(rng, x + noise * rng.standard_normal((n, 2)))


DATASETS: dict[str, Callable[..., np.ndarray]] = {
    "two_moons": two_moons,
    "circles": circles,
    "eight_gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "pinwheel": pinwheel,
    "spirals": spirals,
}


# The densities whose log p is known in closed form (the reference for a model's held-out NLL).
TRUE_LOG_PROB: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "eight_gaussians": eight_gaussians_log_prob,
    "checkerboard": checkerboard_log_prob,
}


def make_2d(name: str, n: int, rng: np.random.Generator, **kwargs) -> np.ndarray:
    """``(n, 2)`` samples of the named density; ``kwargs`` go to its generator."""
    if name not in DATASETS:
        raise ValueError(f"make_2d: unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    return DATASETS[name](n, rng, **kwargs)
