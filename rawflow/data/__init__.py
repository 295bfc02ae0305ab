"""Data: 2-D densities (:mod:`.datasets`), images and their metrics (:mod:`.images`), and the one
pickle-free ``.npy`` / ``.npz`` reader (:mod:`.arrayfile`)."""

from .arrayfile import read_array
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
from .images import (bits_per_dim, dequantize, digit_labels, digits, independent_pixel_baseline, load_images,
                     n_bits_note, reduce_bits)

__all__ = [
    "bits_per_dim",
    "checkerboard",
    "circles",
    "dequantize",
    "digit_labels",
    "digits",
    "eight_gaussians",
    "eight_gaussians_log_prob",
    "independent_pixel_baseline",
    "load_images",
    "make_2d",
    "n_bits_note",
    "pinwheel",
    "read_array",
    "reduce_bits",
    "spirals",
    "two_moons",
]
