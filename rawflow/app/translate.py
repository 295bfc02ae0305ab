"""``rawflow translate``: move held-out images of one class towards another along the latent
direction between the two classes' means (the lecture note's translation between two sets of images;
Glow's attribute manipulation, openai/glow ``demo/get_manipulators.py``).

With ``f`` the run's flow (``f(x; y)`` where the flow itself takes the class) and ``m_k`` the mean
latent of the *training* images of class ``k`` (each encoded with its own label)::

    d     = m_b − m_a                               (the class direction, from the training split)
    z     = f(x; a)                                 (x: held-out test images of class a)
    x_t   = f⁻¹(z + t·d; (1 − t)·e_a + t·e_b),      t = 0, 1/(S − 1), …, 1

``e_k`` is the one-hot label; a flow that takes no class ignores the blended context (openai's
``--ycond``: only the prior sees it). ``x_0`` is ``x`` itself (to round-off); ``x_1`` is ``x``'s latent
moved by the whole class difference. The held-out images never enter ``d``.
"""

from __future__ import annotations

import numpy as np

from .._array import to_numpy


def class_means(model, params, x, y, classes, batch_size: int = 512) -> np.ndarray:
    """``(K, D)``: the mean latent ``f(x; y)`` of each class's rows (NaN for a class with none)."""
    sums = None
    counts = np.zeros(classes, dtype=np.int64)
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        z = to_numpy(model.encode(params, xb, yb)).astype(np.float64)
        if sums is None:
            sums = np.zeros((classes, z.shape[1]))
        np.add.at(sums, yb, z)
        counts += np.bincount(yb, minlength=classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None]


def translate(model, params, x, source: int, target: int, means: np.ndarray, steps: int):
    """Frames ``(steps, M, *event)`` moving ``x`` (images of class ``source``) towards ``target``."""
    from .._array import namespace

    xp = namespace(x)
    n, k = x.shape[0], model.classes
    z = model.encode(params, x, np.full(n, source, dtype=np.int64))
    d = xp.asarray((means[target] - means[source]).astype(z.dtype))
    e_a, e_b = np.eye(k)[source], np.eye(k)[target]
    frames = []
    for i in range(steps):
        t = i / (steps - 1)
        c = xp.asarray(np.tile((1 - t) * e_a + t * e_b, (n, 1)).astype(z.dtype))
        frames.append(model.decode(params, z + t * d, c))
    return xp.stack(frames)
