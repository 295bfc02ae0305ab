"""Invertible layers: the :class:`Bijector` contract and every layer family, one per module.

Forward = data → latent; ``logdet = log|det ∂z/∂x|`` per sample, shape ``(N,)``.

* :mod:`.bijector`: the contract; :mod:`.chain`: composition (with the reconstructing backward).
* Couplings: :mod:`.coupling` (vectors), :mod:`.image_coupling` (channel, checkerboard, rotation),
  :mod:`.partition` (which features are copied), :mod:`.scales` (``h ↦ log s`` maps).
* Per-channel maps: :mod:`.actnorm`, :mod:`.scaling`, :mod:`.permutation`, :mod:`.linear`
  (dense and LU 1×1 convolutions); :mod:`._channel` holds what they share.
* Reshaping and multi-scale: :mod:`.squeeze`, :mod:`.split`, :mod:`.multiscale`;
  preprocessing: :mod:`.logit`.
* :mod:`.openai`: Glow's layers as openai/glow's reference code defines them (``glow(variant="openai")``).
* Conditional layers (a context ``c`` reaches the conditioner or the prior): :mod:`.conditional_coupling`
  (vectors and images), :mod:`.conditional_prior` (openai/glow's ``--ycond`` top and split priors,
  the multi-scale latent's prior), :mod:`.conditional` (``ContextAsInput``: how they are checked).
"""

from .actnorm import ActNorm
from .bijector import Bijector
from .chain import Chain
from .conditional import ContextAsInput
from .conditional_coupling import (ConditionalAdditiveCoupling, ConditionalAffineCoupling, ConditionalChannelCoupling,
                                   ConditionalCoupling)
from .conditional_prior import ConditionalSplit, GlowTop, MultiScalePrior
from .coupling import AdditiveCoupling, AdditiveTransform, AffineCoupling, AffineTransform, Coupling
from .image_coupling import ChannelCoupling, ChannelRotationCoupling, CheckerboardCoupling
from .linear import DenseLinear, LULinear
from .logit import Logit
from .multiscale import MultiScale
from .openai import OpenAIActNorm, OpenAIAffineTransform, OpenAICoupling, OpenAIInvConv, OpenAILearnTop, OpenAISplit
from .partition import Partition
from .permutation import Permutation, Reverse
from .scales import BoundedScale, ExpScale, ScaleMap, SigmoidScale, scale_map
from .scaling import DiagonalScaling
from .split import GlowTopPrior, Split
from .squeeze import Flatten, Squeeze

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AdditiveTransform",
    "AffineCoupling",
    "AffineTransform",
    "Bijector",
    "BoundedScale",
    "Chain",
    "ChannelCoupling",
    "ChannelRotationCoupling",
    "CheckerboardCoupling",
    "ConditionalAdditiveCoupling",
    "ConditionalAffineCoupling",
    "ConditionalChannelCoupling",
    "ConditionalCoupling",
    "ConditionalSplit",
    "ContextAsInput",
    "Coupling",
    "DenseLinear",
    "DiagonalScaling",
    "ExpScale",
    "Flatten",
    "GlowTop",
    "GlowTopPrior",
    "Logit",
    "LULinear",
    "MultiScale",
    "MultiScalePrior",
    "OpenAIActNorm",
    "OpenAIAffineTransform",
    "OpenAICoupling",
    "OpenAIInvConv",
    "OpenAILearnTop",
    "OpenAISplit",
    "Partition",
    "Permutation",
    "Reverse",
    "ScaleMap",
    "SigmoidScale",
    "Split",
    "Squeeze",
    "scale_map",
]
