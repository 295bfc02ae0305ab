"""Conditioner networks: the functions ``h = NN(x_a)`` a coupling evaluates (never inverted).

* :mod:`.mlp`: :class:`MLP` for vectors (and the shared :class:`~.mlp.Activation`).
* :mod:`.cnn`: :class:`GlowCNN`, :class:`ResNetCNN` and their building blocks for images.
* :mod:`.conv`: ``conv2d`` and its VJP (im2col + GEMM), which the CNNs are built on.
* :mod:`.context`: networks that also take a context ``c`` (conditional couplings, Glow's class
  terms): :class:`ConcatContext`, :class:`ContextGlowCNN`, :class:`LinearZeros`.
"""

from .cnn import GlowCNN, ResNetCNN
from .context import ConcatContext, ContextGlowCNN, LinearZeros
from .conv import conv2d, conv2d_backward
from .mlp import MLP

__all__ = ["ConcatContext", "ContextGlowCNN", "GlowCNN", "LinearZeros", "MLP", "ResNetCNN", "conv2d",
           "conv2d_backward"]
