"""Coupling layers for images ``x: (N, C, H, W)`` with convolutional conditioners.

The elementwise maps are :class:`~rawflow.bijectors.coupling.AffineTransform` (every scale map: ``exp``,
``bounded``, ``sigmoid``) and :class:`~rawflow.bijectors.coupling.AdditiveTransform`; see
:mod:`rawflow.bijectors.coupling` for their maths and VJPs. Three ways to choose the copied part ``a``:

* :class:`ChannelCoupling` — a channel :class:`~rawflow.bijectors.partition.Partition` (default: first ``⌊C/2⌋``
  channels copied; ``flip=True`` copies the others, so alternate ``flip`` from layer to layer).
  ``h = NN(x_a)`` with ``NN: |a| → m·|b|`` channels (``m = 2`` affine, ``1`` additive); this is the
  vector :class:`~rawflow.bijectors.coupling.Coupling` with an image event shape.
* :class:`ChannelRotationCoupling` — the lecture note's rotation: channel ``step mod C`` copied, the
  other ``C − 1`` transformed; layer ``k`` of a stack uses ``step=k``, so each channel is copied in turn.
* :class:`CheckerboardCoupling` — RealNVP's spatial mask ``m[i, j] = 1`` where ``(i + j) mod 2 = p``
  (``p = 0``, or ``1`` with ``flip=True``), the same for every channel. Forward::

      h   = NN(x ⊙ m)                         (C → m·C channels, every pixel)
      y   = m ⊙ x + (1 − m) ⊙ T(x, h)         T: the elementwise transform, y_b = x_b ⊙ s + t
      log|det ∂y/∂x| = Σ_{c, (i,j): m=0} log s

  ``∂y/∂x`` is triangular (copied entries are the identity; transformed entries depend on themselves
  only through ``s`` and on copied entries through ``h``), hence the log-det sums over the
  ``(1 − m)`` positions only. Inverse: ``h = NN(y ⊙ m)`` (the same input, since ``y ⊙ m = x ⊙ m``
  bit for bit), ``x_b = (y_b − t) / s``. Implementation: the transformed positions are gathered into
  ``(N, C, P)`` arrays (P = #pixels with m = 0), handed to the shared transform, and scattered back
  into a copy of the input, so copied positions are bit-identical in both directions and no
  arithmetic touches them; the conditioner input is ``where(m, x, 0)`` (= ``x ⊙ m``, with no
  ``−0``/``inf·0`` surprises). VJP (forward; cotangents ``gy``, ``gλ``)::

      (gx_b, gh_b) = Tᵀ(gy_b, gλ)            at the (1 − m) positions; gh is zero at copied pixels
      g_in         = NNᵀ(gh)
      gx           = m ⊙ (gy + g_in) + (1 − m) ⊙ gx_b

  and the inverse VJP is the same with ``T⁻¹ᵀ``. The conditioner's gradient at the masked (zeroed)
  positions is discarded: those inputs are constants.

The conditioner is any object with the CNN protocol of :mod:`rawflow.nets.cnn`
(``in_features``/``out_features`` channels, ``init``, ``apply``, ``backward``), or ``"glow"``
(:class:`~rawflow.nets.cnn.GlowCNN`, default) / ``"resnet"`` (:class:`~rawflow.nets.cnn.ResNetCNN`) built
with ``width`` hidden channels. Its last layer is zero-initialised, so a fresh ``exp``/``bounded``
affine or additive coupling is the identity map. ``params = {"net": conditioner params}``.
``backend=`` picks who computes the elementwise transform (``"reference"``, the default and the
oracle; ``"numba"``, ``"cuda"``, ``"auto"``: see :mod:`rawflow.kernels.dispatch`); a transform
object passed as ``transform`` keeps its own backend.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .._array import namespace
from .bijector import Bijector
from ..nets.cnn import GlowCNN, ResNetCNN
from ..nets.mlp import apply_no_cache, conditioner_spec
from .coupling import AdditiveTransform, AffineTransform, Coupling
from .partition import Partition
from .scales import ScaleMap


def _make_transform(name: str, transform, scale, backend):
    if transform == "affine":
        return AffineTransform(scale, backend=backend)
    if transform == "additive":
        return AdditiveTransform(backend=backend)
    if isinstance(transform, (AffineTransform, AdditiveTransform)):
        return transform
    raise ValueError(
        f"{name}: transform must be 'affine', 'additive' or an AffineTransform/AdditiveTransform, got {transform!r}"
    )


def _make_conditioner(name: str, conditioner, c_in: int, c_out: int, width: int):
    if conditioner == "glow":
        return GlowCNN(c_in, c_out, width)
    if conditioner == "resnet":
        return ResNetCNN(c_in, c_out, width)
    if isinstance(conditioner, str):
        raise ValueError(f"{name}: unknown conditioner {conditioner!r}; use 'glow', 'resnet' or a network")
    have = (getattr(conditioner, "in_features", None), getattr(conditioner, "out_features", None))
    if have != (c_in, c_out):
        raise ValueError(f"{name}: conditioner maps {have[0]} → {have[1]} channels, the layer needs {c_in} → {c_out}")
    return conditioner


def _check_channels(name: str, channels, least: int) -> int:
    if not (isinstance(channels, (int, np.integer)) and channels >= least):
        raise ValueError(f"{name}: channels must be an integer ≥ {least}, got {channels!r}")
    return int(channels)


class ChannelCoupling(Coupling):
    """Coupling over a channel partition of ``(N, C, H, W)`` images (see the module doc)."""

    def __init__(
        self,
        channels: int,
        transform: str | AffineTransform | AdditiveTransform = "affine",
        *,
        scale: str | ScaleMap = "exp",
        partition: Partition | None = None,
        flip: bool = False,
        width: int = 32,
        conditioner="glow",
        backend: str = "reference",
    ):
        name = type(self).__name__
        channels = _check_channels(name, channels, 2)
        if partition is None:
            partition = Partition.half(channels)
        if flip:
            partition = partition.flipped()
        t = _make_transform(name, transform, scale, backend)
        net = _make_conditioner(name, conditioner, partition.size_a, t.multiplier * partition.size_b, width)
        super().__init__(channels, t, partition=partition, conditioner=net)
        self.event_shape = (channels, None, None)


class ChannelRotationCoupling(ChannelCoupling):
    """The lecture note's channel rotation: channel ``step mod C`` copied, the others transformed."""

    def __init__(
        self,
        channels: int,
        step: int = 0,
        transform: str | AffineTransform | AdditiveTransform = "affine",
        *,
        scale: str | ScaleMap = "exp",
        width: int = 32,
        conditioner="glow",
        backend: str = "reference",
    ):
        channels = _check_channels(type(self).__name__, channels, 2)
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise ValueError(f"{type(self).__name__}: step must be an integer, got {step!r}")
        self.step = int(step)
        mask = np.arange(channels) == self.step % channels
        super().__init__(channels, transform, scale=scale, partition=Partition(mask), width=width,
                         conditioner=conditioner, backend=backend)


@lru_cache(maxsize=64)
def _checkerboard(h: int, w: int, parity: int):
    """``(copied mask (1, 1, H, W), flat indices of the transformed pixels)`` as NumPy arrays."""
    i, j = np.indices((h, w))
    copied = (i + j) % 2 == parity
    return copied.reshape(1, 1, h, w), np.flatnonzero(~copied)


class CheckerboardCoupling(Bijector):
    """RealNVP's checkerboard coupling: pixels with ``(i + j) mod 2 = parity`` copied (see module doc)."""

    def __init__(
        self,
        channels: int,
        transform: str | AffineTransform | AdditiveTransform = "affine",
        *,
        scale: str | ScaleMap = "exp",
        flip: bool = False,
        width: int = 32,
        conditioner="glow",
        backend: str = "reference",
    ):
        channels = _check_channels(self.name, channels, 1)
        self.event_shape = (channels, None, None)
        self.parity = 1 if flip else 0
        self.transform = _make_transform(self.name, transform, scale, backend)
        self.net = _make_conditioner(self.name, conditioner, channels, self.transform.multiplier * channels, width)

    def __repr__(self) -> str:
        return f"CheckerboardCoupling({self.event_shape[0]}, parity={self.parity})"

    def param_spec(self) -> dict:
        return {"net": conditioner_spec(self.net)}

    @property
    def data_dependent(self) -> bool:
        return bool(getattr(self.net, "data_dependent", False))

    def _pattern(self, x):
        xp = namespace(x)
        copied, idx_b = _checkerboard(x.shape[2], x.shape[3], self.parity)
        return xp.asarray(copied), xp.asarray(idx_b)

    def _run(self, params, x, step):
        """Shared by both directions: ``step`` is the transform's forward or inverse."""
        xp = namespace(x)
        copied, idx_b = self._pattern(x)
        n, c, hh, ww = x.shape
        h, net_cache = self.net.apply(params["net"], xp.where(copied, x, xp.zeros((), dtype=x.dtype)))
        xb = xp.take(x.reshape(n, c, hh * ww), idx_b, axis=2)  # (N, C, P)
        hb = xp.take(h.reshape(n, h.shape[1], hh * ww), idx_b, axis=2)  # (N, m·C, P)
        yb, logdet, tcache = step(xb, hb)
        y = x.reshape(n, c, hh * ww).copy()
        y[:, :, idx_b] = yb
        return y.reshape(x.shape), logdet, (net_cache, tcache, h.shape[1])

    def _run_no_cache(self, params, x, step):
        """:meth:`_run` without caches (``step`` is a transform's ``forward_no_cache`` or
        ``inverse_no_cache``): the same values, bit for bit."""
        xp = namespace(x)
        copied, idx_b = self._pattern(x)
        n, c, hh, ww = x.shape
        h = apply_no_cache(self.net, params["net"], xp.where(copied, x, xp.zeros((), dtype=x.dtype)))
        xb = xp.take(x.reshape(n, c, hh * ww), idx_b, axis=2)
        yb, logdet = step(xb, xp.take(h.reshape(n, h.shape[1], hh * ww), idx_b, axis=2))
        y = x.reshape(n, c, hh * ww).copy()
        y[:, :, idx_b] = yb
        return y.reshape(x.shape), logdet

    def _run_backward(self, params, cache, g, glogdet, step_backward):
        xp = namespace(g)
        net_cache, tcache, c_h = cache
        copied, idx_b = self._pattern(g)
        n, c, hh, ww = g.shape
        gb, ghb = step_backward(tcache, xp.take(g.reshape(n, c, hh * ww), idx_b, axis=2), glogdet)
        gh = xp.zeros((n, c_h, hh * ww), dtype=ghb.dtype)
        gh[:, :, idx_b] = ghb
        g_in, gnet = self.net.backward(params["net"], net_cache, gh.reshape(n, c_h, hh, ww))
        # m ⊙ (g + g_in) + (1 − m) ⊙ g_b: the scatter below overwrites every (1 − m) position.
        gx = (g + g_in).reshape(n, c, hh * ww)
        gx[:, :, idx_b] = gb
        return gx.reshape(g.shape), {"net": gnet}

    def _init(self, rng, x):
        xp = namespace(x)
        copied, _ = self._pattern(x)
        return {"net": self.net.init(rng, xp.where(copied, x, xp.zeros((), dtype=x.dtype)))}

    def _forward(self, params, x):
        return self._run(params, x, self.transform.forward)

    def _inverse(self, params, z):
        return self._run(params, z, self.transform.inverse)

    def _forward_no_cache(self, params, x):
        return self._run_no_cache(params, x, self.transform.forward_no_cache)

    def _inverse_no_cache(self, params, z):
        return self._run_no_cache(params, z, self.transform.inverse_no_cache)

    def _backward(self, params, cache, gz, glogdet):
        return self._run_backward(params, cache, gz, glogdet, self.transform.backward)

    def _inverse_backward(self, params, cache, gx, glogdet):
        return self._run_backward(params, cache, gx, glogdet, self.transform.inverse_backward)
