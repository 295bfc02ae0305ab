"""Derivative oracles: complex step, Richardson-extrapolated and plain central differences.

All three take a function ``f`` from a real float64 array ``w`` to an array (any shapes) and a
direction ``v`` (shape of ``w``) and estimate the directional derivative ``Df(w)·v``:

* **complex step** ``Im f(w + i·h·v) / h`` with ``h = 1e-30``. There is no subtraction, so no
  cancellation: for ``f`` real-analytic (written complex-safe) the estimate is exact to round-off,
  ``O(h²)`` truncation being ~1e-60. A piecewise-analytic ``f`` whose branches are chosen by
  comparisons on the *real* part (``where(a.real > 0, a, 0)``) is also exact at any point off a kink,
  because the real part of the perturbed input equals the unperturbed one and selects the same branch.
  It needs ``f`` to accept complex input and to be analytic in it (no ``abs``, no ``conj``, no cast to
  real); a function that drops the imaginary part gives a wrong (often zero) estimate, which the
  cross-checks against the difference oracles catch.
* **central differences** ``(f(w + h·v) − f(w − h·v)) / 2h`` with ``h = eps^(1/3)·max(1, |w_r|)``
  (per element ``r``): truncation ``h²/6·f'''`` plus round-off ``~eps·T/h`` where ``T`` is the size of
  the terms ``f`` sums; both ~1e-11 relative for tame ``f``.
* **Richardson** ``(4·D(h/2) − D(h)) / 3`` with ``D`` the central difference and
  ``h = eps^(1/5)·max(1, |w_r|)``: the ``h²`` error term cancels, leaving ``O(h⁴)`` truncation and
  ``~3·eps·T/h`` round-off, ~1e-12 relative.

The difference oracles are exact only where ``f`` is smooth over the step. A third level
``D(h/4)`` tests that: for smooth ``f`` the differences ``D(h) − D(h/2)`` and ``D(h/2) − D(h/4)``
shrink by 4 (the ``h²`` term), so ``D(h) − 5·D(h/2) + 4·D(h/4) ≈ 0``; a kink inside the step breaks
that ratio. :func:`richardson` returns the mask of elements that fail the test (*non-smooth within
the step*): difference oracles are not to be trusted there, the complex step still is.
"""

from __future__ import annotations

from typing import Callable, Iterable, NamedTuple

import numpy as np

EPS64 = float(np.finfo(np.float64).eps)
COMPLEX_STEP = 1e-30
CENTRAL_STEP = EPS64 ** (1 / 3)
RICHARDSON_STEP = EPS64 ** (1 / 5)

METHODS = ("complex-step", "richardson", "central")


def complex_step(f: Callable, w: np.ndarray, v: np.ndarray, h: float = COMPLEX_STEP) -> np.ndarray:
    """``Im f(w + i·h·v) / h``: the exact directional derivative of a complex-safe real-analytic ``f``."""
    w = np.asarray(w, dtype=np.float64)
    out = np.asarray(f(w + (1j * h) * np.asarray(v, dtype=np.float64)))
    if not np.iscomplexobj(out):
        raise TypeError(
            "complex step: f returned a real array for a complex input; it drops the imaginary part "
            "(is it complex-safe?)"
        )
    return out.imag / h


def central_difference(f: Callable, w: np.ndarray, v: np.ndarray, h: float = CENTRAL_STEP) -> np.ndarray:
    """``(f(w + h·v) − f(w − h·v)) / 2h``."""
    w = np.asarray(w, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    return (np.asarray(f(w + h * v), dtype=np.float64) - np.asarray(f(w - h * v), dtype=np.float64)) / (2 * h)


class Richardson(NamedTuple):
    """A Richardson estimate with its own error bars (arrays shaped like ``f``'s output)."""

    estimate: np.ndarray  # (4·D(h/2) − D(h)) / 3
    nonsmooth: np.ndarray  # bool: not smooth over [w − h·v, w + h·v] (see module docstring)
    error: np.ndarray  # truncation estimate of ``estimate``: 2·|R(h) − R(h/2)|
    curvature: np.ndarray  # D(h) − D(h/2) ≈ h²·f'''/8, for the truncation of other central steps
    h: np.ndarray | float


def richardson(
    f: Callable,
    w: np.ndarray,
    v: np.ndarray,
    h: float = RICHARDSON_STEP,
    noise=None,
) -> Richardson:
    """Richardson-extrapolated central difference, its error estimate and the non-smooth mask.

    ``noise`` is the round-off size of ``f``'s outputs (the ``T`` above, broadcastable to them);
    without it ``|f(w)|`` is used. An element is non-smooth when ``|D(h) − 5·D(h/2) + 4·D(h/4)|``
    exceeds a quarter of ``|D(h) − D(h/2)|`` plus the round-off that combination can carry
    (``27·eps·T/h``, doubled). The error estimate compares the extrapolations from ``(h, h/2)``
    and ``(h/2, h/4)``: their difference is 15/16 of the first one's ``h⁴`` error; doubled.
    """
    d1 = central_difference(f, w, v, h)
    d2 = central_difference(f, w, v, h / 2)
    d4 = central_difference(f, w, v, h / 4)
    if noise is None:
        noise = np.abs(np.asarray(f(np.asarray(w, dtype=np.float64)), dtype=np.float64))
    floor = 64 * EPS64 * np.asarray(noise, dtype=np.float64) / h
    nonsmooth = np.abs(d1 - 5 * d2 + 4 * d4) > 0.25 * np.abs(d1 - d2) + floor
    r1 = (4 * d2 - d1) / 3
    r2 = (4 * d4 - d2) / 3
    return Richardson(r1, nonsmooth, 2 * np.abs(r1 - r2), d1 - d2, h)


def central_truncation(curvature, h_richardson, h_central) -> np.ndarray:
    """Truncation ``h_c²·|f'''|/6`` of a central difference with step ``h_c``, doubled, from the
    Richardson curvature ``D(h) − D(h/2) = h²·f'''/8`` measured with step ``h``."""
    return 2 * (4 / 3) * (np.asarray(h_central) / np.asarray(h_richardson)) ** 2 * np.abs(curvature)


def complex_step_kinks(f: Callable, w: np.ndarray, v: np.ndarray, h: float, floor=0.0) -> np.ndarray:
    """Elements whose derivative along ``v`` is not smooth over ``[w − h·v, w + h·v]``, by complex step.

    The complex step is exact at every point off a kink, so the second differences of the
    *derivative* ``S(t) = D'(w + t·v) + D'(w − t·v) − 2·D'(w)`` obey ``S(h) ≈ 4·S(h/2)`` when ``f`` is
    smooth (both ``t²·f'''``; the difference is ``h⁴·f⁽⁵⁾/16``). A kink at distance ``δ < h`` puts its
    jump ``J`` in ``S(h)`` (and in ``S(h/2)`` if ``δ < h/2``), breaking the ratio by ``~|J|``. This
    sees a kink that the difference oracles straddle symmetrically (``δ ≪ h``: all their levels
    return the mean slope, so :func:`richardson`'s own test is blind to it), however close it lies.
    ``floor`` is the round-off of the derivatives (broadcastable to ``f``'s output).
    """
    w = np.asarray(w, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    d0 = complex_step(f, w, v)
    s1 = complex_step(f, w + h * v, v) + complex_step(f, w - h * v, v) - 2 * d0
    s2 = complex_step(f, w + (h / 2) * v, v) + complex_step(f, w - (h / 2) * v, v) - 2 * d0
    return np.abs(s1 - 4 * s2) > 0.25 * np.abs(s1) + np.asarray(floor)


def steps(w: np.ndarray, method: str) -> np.ndarray:
    """The per-element step a method uses along the coordinate direction of each element of ``w``."""
    w = np.asarray(w, dtype=np.float64).reshape(-1)
    if method == "complex-step":
        return np.full(w.shape, COMPLEX_STEP)
    base = {"central": CENTRAL_STEP, "richardson": RICHARDSON_STEP}[method]
    return base * np.maximum(1.0, np.abs(w))


def columns(f: Callable, w: np.ndarray, cols: Iterable[int], method: str, noise=None, floor=0.0):
    """Columns ``∂f/∂w_r`` for ``r`` in ``cols`` (flat indices of ``w``), as ``(f.size, len(cols))``.

    ``"complex-step"`` and ``"central"`` return the array; ``"richardson"`` a :class:`Richardson`
    whose fields are ``(f.size, len(cols))`` arrays (``h`` per column). ``noise`` is as in
    :func:`richardson`, shaped like ``f``'s flattened output. ``"kinks"`` gives the boolean mask of
    :func:`complex_step_kinks` with each column's Richardson step (``floor`` as there).
    """
    w = np.asarray(w, dtype=np.float64)
    hs = steps(w, "richardson" if method == "kinks" else method)
    cols = [int(r) for r in cols]

    def flat_f(u):
        return np.asarray(f(u)).reshape(-1)

    if method not in METHODS + ("kinks",):
        raise ValueError(f"unknown oracle {method!r}; use one of {METHODS}")
    out = []
    for r in cols:
        v = np.zeros(w.size)
        v[r] = 1.0
        v = v.reshape(w.shape)
        if method == "complex-step":
            out.append(complex_step(flat_f, w, v))
        elif method == "central":
            out.append(central_difference(flat_f, w, v, hs[r]))
        elif method == "kinks":
            out.append(complex_step_kinks(flat_f, w, v, hs[r], floor=floor))
        else:
            out.append(richardson(flat_f, w, v, hs[r], noise=noise))
    if not out:
        empty = np.zeros((flat_f(w).size, 0), dtype=bool if method == "kinks" else np.float64)
        return Richardson(empty, empty.astype(bool), empty, empty, hs[:0]) if method == "richardson" else empty
    if method != "richardson":
        return np.stack(out, axis=1)
    fields = ("estimate", "nonsmooth", "error", "curvature")
    return Richardson(*(np.stack([getattr(o, k) for o in out], axis=1) for k in fields), hs[cols])


def jacobian(f: Callable, w: np.ndarray, method: str = "complex-step") -> np.ndarray:
    """Full Jacobian ``(f(w).size, w.size)`` of ``f`` at ``w`` by one oracle."""
    w = np.asarray(w, dtype=np.float64)
    out = columns(f, w, range(w.size), method)
    return out.estimate if method == "richardson" else out


def cross_check(estimates: dict, *, rtol: dict, scale, noise, mask=None) -> list[tuple[str, str, float, bool]]:
    """Compare every pair of oracle estimates of the same derivatives.

    ``estimates``: ``{method: array}`` of equal shapes. The bar for a pair is
    ``max(rtol[a], rtol[b])·scale + noise_a + noise_b`` element-wise (``noise`` maps method to its
    round-off floor, ``0`` for the complex step). Returns ``(a, b, worst err/bar, passed)`` per pair,
    so a single broken oracle shows as the one that disagrees with all the others.
    """
    names = list(estimates)
    results = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            bar = max(rtol[a], rtol[b]) * np.asarray(scale) + np.asarray(noise.get(a, 0.0)) + np.asarray(noise.get(b, 0.0))
            err = np.abs(estimates[a] - estimates[b])
            if mask is not None:
                err = np.where(mask, err, 0.0)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(err == 0, 0.0, err / bar)
            worst = float(np.nan_to_num(ratio, nan=np.inf).max(initial=0.0))
            results.append((a, b, worst, worst <= 1.0))
    return results


def blame(results: list[tuple[str, str, float, bool]]) -> list[str]:
    """Oracles that disagree with every other oracle while those others agree among themselves."""
    names = sorted({n for a, b, _, _ in results for n in (a, b)})
    ok = {(a, b): passed for a, b, _, passed in results}
    ok.update({(b, a): passed for a, b, _, passed in results})
    blamed = []
    for n in names:
        others = [m for m in names if m != n]
        if len(others) < 2:
            continue
        if all(not ok[(n, m)] for m in others) and all(ok[(p, q)] for p in others for q in others if p < q):
            blamed.append(n)
    return blamed
