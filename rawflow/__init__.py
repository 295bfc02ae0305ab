"""rawflow: exact, from-scratch NICE / RealNVP / Glow with hand-written forward, inverse and backward.

Direction convention everywhere: forward = data → latent, ``logdet = log|det ∂z/∂x|`` per sample.
"""

from . import tree
from .bijector import Bijector
from .chain import Chain
from .coupling import AdditiveCoupling, AdditiveTransform, AffineCoupling, AffineTransform, Coupling
from .nets import MLP
from .partition import Partition
from .scales import BoundedScale, ExpScale, ScaleMap, SigmoidScale, scale_map

__version__ = "0.1.0"

__all__ = [
    "AdditiveCoupling",
    "AdditiveTransform",
    "AffineCoupling",
    "AffineTransform",
    "Bijector",
    "BoundedScale",
    "Chain",
    "Coupling",
    "ExpScale",
    "MLP",
    "Partition",
    "ScaleMap",
    "SigmoidScale",
    "scale_map",
    "tree",
]
