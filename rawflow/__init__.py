"""rawflow: exact, from-scratch NICE / RealNVP / Glow with hand-written forward, inverse and backward.

Direction convention everywhere: forward = data → latent, ``logdet = log|det ∂z/∂x|`` per sample.
The public API is re-exported here from the subpackages, which follow the layers (imports go down):

* :mod:`rawflow.app`: command line, demo, run folders, plots;
* :mod:`rawflow.training`, :mod:`rawflow.check`, :mod:`rawflow.interop`: optimisers, loop and
  checkpoints; the verification toolkit; maps to PyTorch flow libraries;
* :mod:`rawflow.distributed`: communicators (MPI, NCCL) and data-parallel training steps;
* :mod:`rawflow.models`: ``FlowModel`` and the architecture builders;
* :mod:`rawflow.bijectors`: the contract and every invertible layer (fused kernels in
  :mod:`rawflow.kernels`);
* :mod:`rawflow.nets`, :mod:`rawflow.distributions`: conditioner networks; priors;
* :mod:`rawflow.data`, :mod:`rawflow.tree`: loaders and metrics; parameter trees.
"""

from . import tree
from ._version import __version__  # noqa: F401  (rawflow.__version__)
from .bijectors import (
    ActNorm,
    AdditiveCoupling,
    AdditiveTransform,
    AffineCoupling,
    AffineTransform,
    Bijector,
    BoundedScale,
    Chain,
    ChannelCoupling,
    ChannelRotationCoupling,
    CheckerboardCoupling,
    Coupling,
    DenseLinear,
    DiagonalScaling,
    ExpScale,
    Flatten,
    GlowTopPrior,
    Logit,
    LULinear,
    MultiScale,
    Partition,
    Permutation,
    Reverse,
    ScaleMap,
    SigmoidScale,
    Split,
    Squeeze,
    scale_map,
)
from .check import check_bijector, export_vectors, run_suite, verify_vectors
from .data import (
    bits_per_dim,
    checkerboard,
    circles,
    dequantize,
    digits,
    eight_gaussians,
    eight_gaussians_log_prob,
    independent_pixel_baseline,
    load_images,
    make_2d,
    pinwheel,
    reduce_bits,
    spirals,
    two_moons,
)
from .distributions import DiagonalGaussian, Prior, StandardLogistic, StandardNormal, Uniform
from .models import FlowModel, glow, nice, nice_images, realnvp, realnvp_multiscale
from .nets import MLP, GlowCNN, ResNetCNN, conv2d, conv2d_backward
from .training import (
    SGD,
    Adam,
    Adamax,
    CheckpointError,
    EMA,
    TrainingDiverged,
    clip_grad_norm,
    evaluate_nll,
    gaussian_baseline_nll,
    global_norm,
    load_checkpoint,
    save_checkpoint,
    train,
)


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
    "EMA",
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
    "reduce_bits",
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
