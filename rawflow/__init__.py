"""rawflow: exact, from-scratch NICE / RealNVP / Glow with hand-written forward, inverse and backward.

Direction convention everywhere: forward = data → latent, ``logdet = log|det ∂z/∂x|`` per sample.
The public API is re-exported here; internals live in one module per layer family.
"""

from . import tree
from .actnorm import ActNorm
from .architectures import glow, nice, nice_images, realnvp, realnvp_multiscale
from .bijector import Bijector
from .chain import Chain
from .check import check_bijector, export_vectors, run_suite, verify_vectors
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .cnn import GlowCNN, ResNetCNN
from .conv import conv2d, conv2d_backward
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
from .image_coupling import ChannelCoupling, ChannelRotationCoupling, CheckerboardCoupling
from .images import bits_per_dim, dequantize, digits, independent_pixel_baseline, load_images
from .linear import DenseLinear, LULinear
from .logit import Logit
from .model import FlowModel
from .multiscale import MultiScale
from .nets import MLP
from .optim import SGD, Adam, Adamax, clip_grad_norm, global_norm
from .partition import Partition
from .permutation import Permutation, Reverse
from .priors import DiagonalGaussian, Prior, StandardLogistic, StandardNormal, Uniform
from .scales import BoundedScale, ExpScale, ScaleMap, SigmoidScale, scale_map
from .scaling import DiagonalScaling
from .split import GlowTopPrior, Split
from .squeeze import Flatten, Squeeze
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
    "bits_per_dim",
    "BoundedScale",
    "Chain",
    "ChannelCoupling",
    "ChannelRotationCoupling",
    "check_bijector",
    "checkerboard",
    "CheckerboardCoupling",
    "CheckpointError",
    "circles",
    "clip_grad_norm",
    "conv2d",
    "conv2d_backward",
    "Coupling",
    "DenseLinear",
    "dequantize",
    "DiagonalGaussian",
    "DiagonalScaling",
    "digits",
    "eight_gaussians",
    "eight_gaussians_log_prob",
    "evaluate_nll",
    "export_vectors",
    "ExpScale",
    "Flatten",
    "FlowModel",
    "gaussian_baseline_nll",
    "global_norm",
    "glow",
    "GlowCNN",
    "GlowTopPrior",
    "independent_pixel_baseline",
    "load_checkpoint",
    "load_images",
    "Logit",
    "LULinear",
    "make_2d",
    "MLP",
    "MultiScale",
    "nice",
    "nice_images",
    "Partition",
    "Permutation",
    "pinwheel",
    "Prior",
    "realnvp",
    "realnvp_multiscale",
    "ResNetCNN",
    "Reverse",
    "run_suite",
    "save_checkpoint",
    "scale_map",
    "ScaleMap",
    "SGD",
    "SigmoidScale",
    "spirals",
    "Split",
    "Squeeze",
    "StandardLogistic",
    "StandardNormal",
    "train",
    "TrainingDiverged",
    "tree",
    "two_moons",
    "Uniform",
    "verify_vectors",
]
