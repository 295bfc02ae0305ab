"""Conditioner networks: the functions ``h = NN(x_a)`` a coupling evaluates (never inverted).

* :mod:`.mlp`: :class:`MLP` for vectors (and the shared :class:`~.mlp.Activation`).
* :mod:`.cnn`: :class:`GlowCNN`, :class:`ResNetCNN` and their building blocks for images.
* :mod:`.conv`: ``conv2d`` and its VJP (im2col + GEMM), which the CNNs are built on.
* :mod:`.openai`: openai/glow's blocks (edge-padded convolutions, the factor-3 norm, its ``f``).
* :mod:`.context`: networks that also take a context ``c`` (conditional couplings, Glow's class
  terms): :class:`ConcatContext`, :class:`ContextGlowCNN`, :class:`LinearZeros`.
"""

from .cnn import GlowCNN, ResNetCNN
from .context import ConcatContext, ContextGlowCNN, LinearZeros
from .conv import conv2d, conv2d_backward
from .mlp import MLP
from .openai import EdgeConv2d, EdgeZeroConv2d, OpenAIGlowCNN, OpenAINorm

__all__ = ["ConcatContext", "ContextGlowCNN", "EdgeConv2d", "EdgeZeroConv2d", "GlowCNN", "LinearZeros", "MLP",
           "OpenAIGlowCNN", "OpenAINorm", "ResNetCNN", "conv2d", "conv2d_backward"]
