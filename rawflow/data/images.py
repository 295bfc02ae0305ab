"""Image data: shipped digits, the user's own arrays, uniform dequantisation and bits per dimension.

* :func:`digits`: scikit-learn's 8×8 handwritten digits (1,797 images, 17 grey levels 0…16), which
  ship inside scikit-learn, as ``(N, 1, 8, 8)`` integers.
* :func:`load_images`: ``.npy`` / ``.npz`` integer images ``(N, C, H, W)`` or ``(N, H, W)``
  (a channel axis is added), read with ``allow_pickle=False``.
* :func:`dequantize`: ``x = (v + u)/n_bins`` with ``u ~ U[0, 1)``, so a model of the density of
  ``x ∈ [0, 1)^D`` bounds the discrete log-likelihood of ``v`` (Theis et al., 2016).
* :func:`bits_per_dim`: ``bpd = (NLL + D·log n_bins) / (D·ln 2)`` for an NLL in nats of ``x``;
  the ``D·log n_bins`` term is the Jacobian of ``v + u ↦ (v + u)/n_bins``.
* :func:`reduce_bits`: ``n``-bit data from images of ``B`` levels (openai/glow's ``--n_bits_x``),
  ``v_n = ⌊2ⁿ·(v + ½)/B⌋``, then modelled with ``n_bins = 2ⁿ``. Bits/dim of ``n``-bit data measure
  a coarser, easier problem: they are not comparable with the full data's (:func:`n_bits_note`).
"""

from __future__ import annotations

import math
import os

import numpy as np

from .arrayfile import read_array


def digits() -> tuple[np.ndarray, int]:
    """``(images, n_bins)``: the 8×8 digits as ``(1797, 1, 8, 8)`` int64 in ``[0, 16]``, 17 levels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is in the demo/test extras
        raise ImportError("the digits data ship with scikit-learn: pip install 'rawflow[demo]'") from exc
    images = load_digits().images.astype(np.int64)
    return images[:, None, :, :], 17


def load_images(path: str | os.PathLike, key: str | None = None) -> tuple[np.ndarray, int]:
    """``(images, n_bins)`` from an ``.npy`` or ``.npz`` file of non-negative integer images.

    ``n_bins`` is ``2**ceil(log2(max + 1))`` (e.g. 256 for 8-bit data). ``.npz`` files take the
    array named ``key``, or their only array.
    """
    path = os.fspath(path)
    data = read_array(path, key, owner="load_images")
    if data.ndim == 3:
        data = data[:, None]
    if data.ndim != 4:
        raise ValueError(f"load_images: expected (N, C, H, W) or (N, H, W) images, got shape {data.shape}")
    if data.dtype.kind not in "iu":
        raise ValueError(f"load_images: expected integer pixel values, got dtype {data.dtype}")
    if data.size == 0 or data.min() < 0:
        raise ValueError("load_images: pixel values must be non-negative (and the array non-empty)")
    n_bins = 2 ** max(1, math.ceil(math.log2(int(data.max()) + 1)))
    return data.astype(np.int64), n_bins


def dequantize(images: np.ndarray, n_bins: int, rng: np.random.Generator, dtype=np.float64) -> np.ndarray:
    """``(v + u)/n_bins`` with ``u ~ U[0, 1)`` elementwise: values in ``[0, 1)``."""
    if images.min() < 0 or images.max() >= n_bins:
        raise ValueError(f"dequantize: pixel values must lie in [0, {n_bins - 1}]")
    return ((images + rng.uniform(size=images.shape)) / n_bins).astype(dtype)


def reduce_bits(images: np.ndarray, n_bits: int, n_bins: int) -> tuple[np.ndarray, int]:
    """``(v_n, 2**n_bits)``: integer images of ``n_bins`` levels reduced to ``n_bits`` bits.

    ``v_n = ⌊2ⁿ·(v + ½)/B⌋`` (``B = n_bins``), in exact integer arithmetic: source level ``v``
    goes to the one of ``2ⁿ`` equal-width bins of ``[0, B)`` that holds the centre of its own
    interval ``[v, v + 1)``. For ``B = 2ᵇ`` (8-bit data: ``B = 256``) this is exactly openai/glow's
    ``⌊v / 2^(b − n)⌋`` (``(2v + 1)/2^(b−n+1)`` has the same integer part, ``b > n``; the identity
    at ``n = b``). For the 17-level digits (``B = 17``, ``n ≤ 4``) the bins are 17/2ⁿ levels wide;
    at ``n = 4`` levels 8 and 9 share a bin and every other level keeps its own.
    ``2ⁿ > B`` is refused: it would invent levels the data do not have.
    """
    if isinstance(n_bits, bool) or not isinstance(n_bits, (int, np.integer)) or n_bits < 1:
        raise ValueError(f"reduce_bits: n_bits must be a positive integer, got {n_bits!r}")
    if 2 ** int(n_bits) > n_bins:
        raise ValueError(f"reduce_bits: {n_bits}-bit data need at least 2^{n_bits} = {2 ** int(n_bits)} levels, "
                         f"the data have {n_bins} (use n_bits ≤ {int(math.floor(math.log2(n_bins)))})")
    images = np.asarray(images)
    if images.dtype.kind not in "iu":
        raise ValueError(f"reduce_bits: expected integer pixel values, got dtype {images.dtype}")
    if images.size and (images.min() < 0 or images.max() >= n_bins):
        raise ValueError(f"reduce_bits: pixel values must lie in [0, {n_bins - 1}]")
    levels = 2 ** int(n_bits)
    return (levels * (2 * images.astype(np.int64) + 1)) // (2 * n_bins), levels


def n_bits_note(n_bits: int | None, data_bins: int | None) -> str | None:
    """The sentence every output that reports bits/dim of ``n``-bit data carries (``None`` when the
    data are modelled at their own resolution)."""
    if n_bits is None:
        return None
    full = f"{data_bins}-level" if data_bins is not None and data_bins != 256 else "8-bit"
    return (f"{n_bits}-bit data (n_bins = 2^{n_bits} = {2 ** int(n_bits)}): bits/dim are not comparable "
            f"with figures for the {full} data")


def bits_per_dim(nll_nats: float, dims: int, n_bins: int) -> float:
    """``(NLL + D·log n_bins)/(D·ln 2)``: bits per dimension of the discrete data."""
    return (nll_nats + dims * math.log(n_bins)) / (dims * math.log(2))


def independent_pixel_baseline(train: np.ndarray, test: np.ndarray, n_bins: int) -> float:
    """Held-out bits/dim of independent per-pixel categorical distributions (add-one smoothing).

    The dequantised density of such a model is piecewise constant, ``p(x) = Π_d n_bins·P_d(v_d)``,
    so its bits/dim under the same dequantisation is exactly ``−mean log₂ P_d(v_d)``.
    """
    flat_train = train.reshape(train.shape[0], -1)
    flat_test = test.reshape(test.shape[0], -1)
    dims = flat_train.shape[1]
    counts = np.ones((dims, n_bins))
    for d in range(dims):
        counts[d] += np.bincount(flat_train[:, d], minlength=n_bins)
    probs = counts / counts.sum(axis=1, keepdims=True)
    logp = np.log2(probs[np.arange(dims), flat_test])
    return float(-logp.mean())


def digit_labels() -> np.ndarray:
    """The class (0…9) of each image of :func:`digits`, in the same order, as int64."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is in the demo/test extras
        raise ImportError("the digits data ship with scikit-learn: pip install 'rawflow[demo]'") from exc
    return load_digits().target.astype(np.int64)
