"""Base distributions (priors) ``π(z)`` with hand-written log-density gradients and samplers.

They sit below :mod:`rawflow.bijectors` because Glow's split layer scores the factored-out half
with a prior (:class:`~rawflow.bijectors.split.GlowTopPrior` is one).
"""

from .priors import DiagonalGaussian, Prior, StandardLogistic, StandardNormal, Uniform

__all__ = ["DiagonalGaussian", "Prior", "StandardLogistic", "StandardNormal", "Uniform"]
