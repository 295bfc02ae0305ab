"""Ready-made flows for ``(N, D)`` data, each a :class:`~rawflow.chain.Chain` of couplings.

Consecutive couplings alternate which half of the features is copied (``flip`` on odd layers), so
no feature is only ever copied. Every coupling starts as the identity (zero last conditioner layer).

* :func:`realnvp`: affine couplings ``y_b = x_b ⊙ s(x_a) + t(x_a)`` (Dinh et al., 2017).
* :func:`nice`: additive couplings ``y_b = x_b + t(x_a)`` followed by NICE's diagonal scaling
  ``z = y ⊙ exp(log_scale)`` (Dinh et al., 2015), the only layer that changes volume.
"""

from __future__ import annotations

from typing import Sequence

from .chain import Chain
from .coupling import AdditiveCoupling, AffineCoupling
from .scaling import DiagonalScaling


def _check(name: str, features: int, n_couplings: int) -> None:
    if isinstance(features, bool) or int(features) != features or features < 2:
        raise ValueError(f"{name}: features must be an integer ≥ 2, got {features!r}")
    if isinstance(n_couplings, bool) or int(n_couplings) != n_couplings or n_couplings < 1:
        raise ValueError(f"{name}: n_couplings must be a positive integer, got {n_couplings!r}")


def realnvp(
    features: int,
    n_couplings: int = 8,
    hidden: Sequence[int] = (64, 64),
    scale: str = "exp",
    activation: str = "relu",
    *,
    reconstruct: bool = False,
) -> Chain:
    """``n_couplings`` affine couplings on ``(N, features)`` data, alternating the copied half."""
    _check("realnvp", features, n_couplings)
    layers = [
        AffineCoupling(int(features), scale=scale, flip=bool(i % 2), hidden=tuple(hidden), activation=activation)
        for i in range(int(n_couplings))
    ]
    return Chain(layers, reconstruct=reconstruct)


def nice(
    features: int,
    n_couplings: int = 4,
    hidden: Sequence[int] = (64, 64),
    activation: str = "relu",
    *,
    reconstruct: bool = False,
) -> Chain:
    """``n_couplings`` additive couplings, alternating the copied half, then a diagonal scaling."""
    _check("nice", features, n_couplings)
    layers = [
        AdditiveCoupling(int(features), flip=bool(i % 2), hidden=tuple(hidden), activation=activation)
        for i in range(int(n_couplings))
    ]
    return Chain([*layers, DiagonalScaling(int(features))], reconstruct=reconstruct)
