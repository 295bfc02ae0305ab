"""rawflow: exact, from-scratch NICE / RealNVP / Glow with hand-written forward, inverse and backward.

Direction convention everywhere: forward = data → latent, ``logdet = log|det ∂z/∂x|`` per sample.
The public API is re-exported here; internals live in one module per layer family.
"""

from . import tree
from .actnorm import ActNorm
from .architectures import nice, realnvp
from .bijector import Bijector
from .chain import Chain
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .coupling import AdditiveCoupling, AdditiveTransform, AffineCoupling, AffineTransform, Coupling
from .datasets import (
    checkerboard,
    circles,
    eight_gaussians,
    eight_gaussians_log_prob,
    make_2d,
    pinwheel,
    spirals,
    two_moons,
)
from .linear import DenseLinear, LULinear
from .model import FlowModel
from .nets import MLP
from .optim import SGD, Adam, Adamax, clip_grad_norm, global_norm
from .partition import Partition
from .permutation import Permutation, Reverse
from .priors import DiagonalGaussian, Prior, StandardLogistic, StandardNormal, Uniform
from .scales import BoundedScale, ExpScale, ScaleMap, SigmoidScale, scale_map
from .scaling import DiagonalScaling
from .training import TrainingDiverged, evaluate_nll, gaussian_baseline_nll, train

__version__ = "0.1.0"

__all__ = [
    "ActNorm",
    "Adam",
    "Adamax",
    "AdditiveCoupling",
    "AdditiveTransform",
    "AffineCoupling",
    "AffineTransform",
    "Bijector",
    "BoundedScale",
    "Chain",
    "CheckpointError",
    "Coupling",
    "DenseLinear",
    "DiagonalGaussian",
    "DiagonalScaling",
    "ExpScale",
    "FlowModel",
    "LULinear",
    "MLP",
    "Partition",
    "Permutation",
    "Prior",
    "Reverse",
    "SGD",
    "ScaleMap",
    "SigmoidScale",
    "StandardLogistic",
    "StandardNormal",
    "TrainingDiverged",
    "Uniform",
    "checkerboard",
    "circles",
    "clip_grad_norm",
    "eight_gaussians",
    "eight_gaussians_log_prob",
    "evaluate_nll",
    "gaussian_baseline_nll",
    "global_norm",
    "load_checkpoint",
    "make_2d",
    "nice",
    "pinwheel",
    "realnvp",
    "save_checkpoint",
    "scale_map",
    "spirals",
    "train",
    "tree",
    "two_moons",
]
