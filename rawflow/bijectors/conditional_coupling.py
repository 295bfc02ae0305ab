"""Conditional couplings: the conditioner also sees a context ``c: (N, K)``.

The maths is the coupling's (:mod:`rawflow.bijectors.coupling`) with ``h = NN(x_a, c)``::

    y_b = x_b ⊙ s(h) + t(h)    (affine)      y_b = x_b + h    (additive)
    log|det ∂y/∂x| = Σ log s   at fixed c

The context enters the conditioner only, so the Jacobian in ``x`` stays triangular and the
inverse ``x_b = (y_b − t)/s`` evaluates the same network on ``(y_a, c) = (x_a, c)``. The VJPs are the
coupling's, with the conditioner's extra cotangent ``gc`` returned as the context's (forward;
``gh`` from the elementwise transform's VJP)::

    gx_a, gnet, gc = NNᵀ(gh)          → (gx, gparams, gc)

Where the context enters (see :mod:`rawflow.nets.context`):

* vectors (:class:`ConditionalAffineCoupling`, :class:`ConditionalAdditiveCoupling`): appended to
  the MLP's input, ``NN([x_a, c])`` (zuko, nflows);
* images (:class:`ConditionalChannelCoupling`): ``context_mode="add"`` (default) adds ``c·Vᵀ`` after
  the first convolution of Glow's conditioner (:class:`~rawflow.nets.context.ContextGlowCNN`);
  ``"concat"`` appends ``c`` as ``K`` constant channels to any conditioner's input.

These layers keep the bijector contract with a context (:mod:`rawflow.bijectors.bijector`):
``forward(params, x, context=c)``, ``backward(...) -> (gx, gparams, gcontext)``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .._array import Array
from ..nets.cnn import GlowCNN, ResNetCNN
from ..nets.context import ConcatContext, ContextGlowCNN
from ..nets.mlp import MLP
from .coupling import (AdditiveTransform, AffineTransform, Coupling, transform_forward_no_cache,
                       transform_inverse_no_cache)
from .image_coupling import _check_channels, _make_transform
from .partition import Partition
from .scales import ScaleMap


def _context_features(name: str, context) -> int:
    if isinstance(context, bool) or not isinstance(context, (int, np.integer)) or context < 1:
        raise ValueError(f"{name}: context must be a positive integer (the context's features K), got {context!r}")
    return int(context)


class ConditionalCoupling(Coupling):
    """A coupling whose conditioner takes ``(x_a, c)``: ``params = {"net": conditioner params}``.

    ``conditioner`` follows the protocol of :mod:`rawflow.nets.context` (``apply(params, x_a, c)``,
    ``backward -> (gx_a, gparams, gc)``) and maps ``|a|`` features (or channels) to
    ``multiplier·|b|``. The default is ``ConcatContext(MLP(|a| + K → multiplier·|b|))`` with a
    zero last layer, so a fresh layer is the identity for every context.
    """

    def __init__(self, features: int, transform, context: int, *, partition: Partition | None = None,
                 flip: bool = False, hidden: Sequence[int] = (64, 64), activation: str = "relu", conditioner=None):
        k = _context_features(type(self).__name__, context)
        if partition is None:
            partition = Partition.half(features, flip=flip)
        elif flip:
            partition = partition.flipped()
        if conditioner is None:
            conditioner = ConcatContext(MLP(partition.size_a + k, transform.multiplier * partition.size_b,
                                            hidden=hidden, activation=activation), k)
        elif getattr(conditioner, "context_features", None) != k:
            raise ValueError(f"{type(self).__name__}: conditioner takes a context of "
                             f"{getattr(conditioner, 'context_features', None)} features, the layer {k}")
        super().__init__(features, transform, partition=partition, conditioner=conditioner)
        self.context_shape = (k,)

    def _init(self, rng: np.random.Generator, x: Array, context: Array) -> dict:
        xa, _ = self.partition.split(x)
        return {"net": self.net.init(rng, xa, context)}

    def _forward(self, params, x, context):
        xa, xb = self.partition.split(x)
        h, net_cache = self.net.apply(params["net"], xa, context)
        yb, logdet, tcache = self.transform.forward(xb, h)
        return self.partition.merge(xa, yb), logdet, (net_cache, tcache)

    def _inverse(self, params, z, context):
        ya, yb = self.partition.split(z)
        h, net_cache = self.net.apply(params["net"], ya, context)
        xb, logdet, tcache = self.transform.inverse(yb, h)
        return self.partition.merge(ya, xb), logdet, (net_cache, tcache)

    def _forward_no_cache(self, params, x, context):
        xa, xb = self.partition.split(x)
        yb, logdet = transform_forward_no_cache(self.transform, xb, self.net.apply(params["net"], xa, context)[0])
        return self.partition.merge(xa, yb), logdet

    def _inverse_no_cache(self, params, z, context):
        ya, yb = self.partition.split(z)
        xb, logdet = transform_inverse_no_cache(self.transform, yb, self.net.apply(params["net"], ya, context)[0])
        return self.partition.merge(ya, xb), logdet

    def _backward(self, params, cache, gz, glogdet):
        net_cache, tcache = cache
        gya, gyb = self.partition.split(gz)
        gxb, gh = self.transform.backward(tcache, gyb, glogdet)
        gxa, gnet, gc = self.net.backward(params["net"], net_cache, gh)
        return self.partition.merge(gya + gxa, gxb), {"net": gnet}, gc

    def _inverse_backward(self, params, cache, gx, glogdet):
        net_cache, tcache = cache
        gxa, gxb = self.partition.split(gx)
        gyb, gh = self.transform.inverse_backward(tcache, gxb, glogdet)
        gya, gnet, gc = self.net.backward(params["net"], net_cache, gh)
        return self.partition.merge(gxa + gya, gyb), {"net": gnet}, gc


class ConditionalAffineCoupling(ConditionalCoupling):
    """``y_b = x_b ⊙ s(x_a, c) + t(x_a, c)``, ``log|det| = Σ log s`` (RealNVP with a context)."""

    def __init__(self, features: int, context: int, *, scale: str | ScaleMap = "exp", backend: str = "reference",
                 **kwargs):
        super().__init__(features, AffineTransform(scale, backend=backend), context, **kwargs)


class ConditionalAdditiveCoupling(ConditionalCoupling):
    """``y_b = x_b + t(x_a, c)`` (NICE with a context), volume preserving."""

    def __init__(self, features: int, context: int, *, backend: str = "reference", **kwargs):
        super().__init__(features, AdditiveTransform(backend=backend), context, **kwargs)


class ConditionalChannelCoupling(ConditionalCoupling):
    """A channel coupling of ``(N, C, H, W)`` images whose conditioner also sees ``c: (N, K)``.

    ``context_mode``: ``"add"`` (Glow's conditioner with ``c·Vᵀ`` added after its first
    convolution; ``conditioner="glow"`` only) or ``"concat"`` (``c`` as ``K`` constant input channels of
    the ``"glow"`` or ``"resnet"`` conditioner). Other arguments as
    :class:`~rawflow.bijectors.image_coupling.ChannelCoupling`.
    """

    def __init__(self, channels: int, context: int, transform: str | AffineTransform | AdditiveTransform = "affine",
                 *, scale: str | ScaleMap = "exp", partition: Partition | None = None, flip: bool = False,
                 width: int = 32, conditioner: str = "glow", context_mode: str = "add", backend: str = "reference"):
        name = type(self).__name__
        channels = _check_channels(name, channels, 2)
        k = _context_features(name, context)
        if partition is None:
            partition = Partition.half(channels)
        if flip:
            partition = partition.flipped()
        t = _make_transform(name, transform, scale, backend)
        c_in, c_out = partition.size_a, t.multiplier * partition.size_b
        if context_mode == "add":
            if conditioner != "glow":
                raise ValueError(f"{name}: context_mode 'add' adds the context after the first convolution of "
                                 f"Glow's conditioner; use conditioner='glow' or context_mode='concat'")
            net = ContextGlowCNN(c_in, c_out, width, k)
        elif context_mode == "concat":
            if conditioner == "glow":
                net = ConcatContext(GlowCNN(c_in + k, c_out, width), k)
            elif conditioner == "resnet":
                net = ConcatContext(ResNetCNN(c_in + k, c_out, width), k)
            else:
                raise ValueError(f"{name}: unknown conditioner {conditioner!r}; use 'glow' or 'resnet'")
        else:
            raise ValueError(f"{name}: context_mode must be 'add' or 'concat', got {context_mode!r}")
        self.context_mode = context_mode
        super().__init__(channels, t, k, partition=partition, conditioner=net)
        self.event_shape = (channels, None, None)
