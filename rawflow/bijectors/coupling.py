"""Coupling layers (NICE, RealNVP, Glow): ``x = [x_a, x_b]``, ``x_a`` copied, ``x_b`` transformed.

Forward (data → latent), with ``h = NN(x_a)`` from a conditioner network:

* additive (NICE):   ``y_b = x_b + t``,            ``t = h``,               ``log|det| = 0``
* affine (RealNVP):  ``y_b = x_b ⊙ s + t``,        ``h = [h_s, t]``,        ``log|det| = Σ log s``
  with ``log s = scale_map(h_s)`` (``exp``, ``bounded``, ``sigmoid``; see :mod:`rawflow.bijectors.scales`).

The inverse, ``x_b = (y_b − t) / s``, evaluates the same network on ``y_a = x_a`` and never
inverts it. ``h_s`` is the first half of the network's output channels and ``t`` the second.

Gradients (forward VJP, cotangents ``gy`` and ``gℓ`` for the log-det, ``ℓ = Σ log s``)::

    gx_b = gy_b ⊙ s
    gt   = gy_b
    gh_s = (gy_b ⊙ x_b ⊙ s + gℓ) ⊙ d(log s)/dh_s
    gx_a = gy_a + NNᵀ[gh_s, gt]

and for the inverse (``x_b = (y_b − t)/s``, ``ℓ_inv = −Σ log s``)::

    gy_b = gx_b / s
    gt   = −gy_b
    gh_s = (−gx_b ⊙ x_b − gℓ) ⊙ d(log s)/dh_s
    gy_a = gx_a + NNᵀ[gh_s, gt]

The elementwise part lives in :class:`AffineTransform` / :class:`AdditiveTransform`, shared by
vector and image couplings; :class:`Coupling` adds the partition and the conditioner. The axis that
carries features/channels is axis 1; the log-det sums over every non-batch axis.

``backend=`` on the transforms (and the coupling classes) selects who computes this elementwise
part: ``"reference"`` (default; the code below, the oracle), ``"numba"`` (CPU), ``"cuda"``
(numba-cuda) / ``"cuda-c"`` (CUDA C through CuPy's RawModule) fused kernels (:mod:`rawflow.kernels`)
or ``"auto"``; see :mod:`rawflow.kernels.dispatch`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .._array import Array, namespace
from .bijector import Bijector
from ..nets.mlp import MLP, add_inplace, apply_no_cache, conditioner_spec
from .partition import Partition
from .scales import ScaleMap, scale_map

#: Who computes the elementwise part (see :mod:`rawflow.kernels.dispatch`).
BACKENDS = ("reference", "numba", "cuda", "cuda-c", "auto")


def _row_sum(a: Array) -> Array:
    return a.sum(axis=tuple(range(1, a.ndim)))


def _per_row(g: Array, like: Array) -> Array:
    return g.reshape((g.shape[0],) + (1,) * (like.ndim - 1))


def _scaled(a: Array, log_s: Array, s: Array, inverse: bool = False) -> Array:
    """``a ⊙ s`` (``a / s`` if ``inverse``) for ``s = exp(log_s)``, finite wherever the exact value is.

    Where ``s`` overflows to ``inf`` or underflows to ``0`` (``|log s| ≳ 709`` in float64: an
    exp-scale coupling far from its data), the product is taken in log space,
    ``sign(a)·exp(log|a| ± log s)``, so ``0·s`` is ``0`` (not ``NaN``) and a small ``a`` times a
    huge ``s`` stays the float it is. Elsewhere it is the plain product, bit for bit (and
    complex-safe: the log-space branch is only taken for a non-finite or zero ``s``).
    """
    xp = namespace(a)
    if _all_regular(s):
        return a / s if inverse else a * s
    regular = xp.isfinite(s) & (s != 0)
    s_ok = xp.where(regular, s, 1)
    out = a / s_ok if inverse else a * s_ok
    nonzero = a != 0
    log_a = xp.log(xp.abs(xp.where(nonzero, a, 1)))
    far = xp.sign(a) * xp.exp(xp.where(nonzero, log_a - log_s if inverse else log_a + log_s, 0))
    return xp.where(regular, out, far)


def _all_regular(s: Array) -> bool:
    """Whether every ``s`` is finite and non-zero. For a real float ``s = exp(·) ≥ 0`` that is
    ``0 < min(s)`` and ``max(s) < inf`` (two reductions, no temporaries; a NaN fails both);
    other dtypes take the elementwise test."""
    if s.dtype.kind == "f":
        return s.size == 0 or bool((s.min() > 0) & (s.max() < float("inf")))
    xp = namespace(s)
    return bool((xp.isfinite(s) & (s != 0)).all())


def transform_forward_no_cache(transform, xb: Array, h: Array):
    """``(yb, logdet)``: ``transform.forward_no_cache`` where the transform has it (optional in the
    transform protocol; the same values bit for bit), else the values of its cached ``forward``."""
    fast = getattr(transform, "forward_no_cache", None)
    return fast(xb, h) if fast is not None else transform.forward(xb, h)[:2]


def transform_inverse_no_cache(transform, yb: Array, h: Array):
    """``(xb, logdet_inv)``, as :func:`transform_forward_no_cache` for the inverse."""
    fast = getattr(transform, "inverse_no_cache", None)
    return fast(yb, h) if fast is not None else transform.inverse(yb, h)[:2]


def _kernels(owner, x, scale=None, additive=False):
    """The kernel module serving ``x`` under ``owner.backend``, or ``None`` for the code below.

    :mod:`rawflow.kernels` (and Numba) is imported only when a kernel backend is asked for.
    """
    if owner.backend == "reference":
        return None
    from ..kernels.dispatch import select

    return select(type(owner).__name__, owner.backend, scale, x, additive=additive)


def _check_backend(owner, backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"{type(owner).__name__}: backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    return backend


class AdditiveTransform:
    """``y_b = x_b + t`` with ``t = h``; the log-det is identically zero."""

    multiplier = 1

    def __init__(self, *, backend: str = "reference"):
        self.backend = _check_backend(self, backend)

    def forward(self, xb, h):
        k = _kernels(self, xb, additive=True)
        if k is not None:
            return (*k.additive_forward(xb, h), None)
        return xb + h, namespace(xb).zeros(xb.shape[0], dtype=xb.dtype), None

    def inverse(self, yb, h):
        k = _kernels(self, yb, additive=True)
        if k is not None:
            return (*k.additive_inverse(yb, h), None)
        return yb - h, namespace(yb).zeros(yb.shape[0], dtype=yb.dtype), None

    def forward_no_cache(self, xb, h):
        return self.forward(xb, h)[:2]

    def inverse_no_cache(self, yb, h):
        return self.inverse(yb, h)[:2]

    def backward(self, tcache, gyb, glogdet):
        return gyb, gyb

    def inverse_backward(self, tcache, gxb, glogdet):
        return gxb, -gxb


class AffineTransform:
    """``y_b = x_b ⊙ exp(log s) + t`` with ``[h_s, t] = h`` split along axis 1."""

    multiplier = 2

    def __init__(self, scale: str | ScaleMap = "exp", *, backend: str = "reference"):
        self.scale = scale_map(scale)
        self.backend = _check_backend(self, backend)

    def _params(self, h):
        c = h.shape[1] // 2
        log_s, dlog_s = self.scale(h[:, :c])
        return log_s, dlog_s, namespace(h).exp(log_s), h[:, c:]

    def forward(self, xb, h):
        k = _kernels(self, xb, self.scale)
        if k is not None:
            yb, logdet = k.affine_forward(xb, h, self.scale)
            return yb, logdet, k.KernelCache(xb, h, k)
        log_s, dlog_s, s, t = self._params(h)
        yb = _scaled(xb, log_s, s) + t
        return yb, _row_sum(log_s), (xb, s, dlog_s)

    def inverse(self, yb, h):
        k = _kernels(self, yb, self.scale)
        if k is not None:
            xb, logdet = k.affine_inverse(yb, h, self.scale)
            return xb, logdet, k.KernelCache(xb, h, k)
        log_s, dlog_s, s, t = self._params(h)
        xb = _scaled(yb - t, log_s, s, inverse=True)
        # -(Σ log s) is the exact negation of the forward's sum: the two log-dets cancel exactly.
        return xb, -_row_sum(log_s), (xb, s, dlog_s)

    def forward_no_cache(self, xb, h):
        """``(yb, logdet)`` of :meth:`forward`, bit for bit, without ``d log s / dh`` or a cache.
        A subclass that redefines :meth:`forward` / :meth:`inverse` must redefine these two too
        (``tests/bijectors/test_no_cache.py`` holds every registered layer to it)."""
        k = _kernels(self, xb, self.scale)
        if k is not None:
            return k.affine_forward(xb, h, self.scale)
        c = h.shape[1] // 2
        log_s = self.scale.log_only(h[:, :c])
        # _scaled's output is fresh: the same addition as the cached path's ``_scaled(...) + t``
        return add_inplace(_scaled(xb, log_s, namespace(h).exp(log_s)), h[:, c:]), _row_sum(log_s)

    def inverse_no_cache(self, yb, h):
        """``(xb, logdet_inv)`` of :meth:`inverse`, bit for bit, without ``d log s / dh`` or a cache."""
        k = _kernels(self, yb, self.scale)
        if k is not None:
            return k.affine_inverse(yb, h, self.scale)
        c = h.shape[1] // 2
        log_s = self.scale.log_only(h[:, :c])
        xb = _scaled(yb - h[:, c:], log_s, namespace(h).exp(log_s), inverse=True)
        return xb, -_row_sum(log_s)

    def backward(self, tcache, gyb, glogdet):
        if hasattr(tcache, "kernels"):  # a kernel backend's cache (xb, h, kernels)
            return tcache.kernels.affine_backward(tcache.xb, tcache.h, gyb, glogdet, self.scale)
        xb, s, dlog_s = tcache
        gys = gyb * s
        gh_s = (gys * xb + _per_row(glogdet, xb)) * dlog_s
        return gys, namespace(xb).concatenate([gh_s, gyb], axis=1)

    def inverse_backward(self, tcache, gxb, glogdet):
        if hasattr(tcache, "kernels"):
            return tcache.kernels.affine_inverse_backward(tcache.xb, tcache.h, gxb, glogdet, self.scale)
        xb, s, dlog_s = tcache
        gyb = gxb / s
        gh_s = (-(gxb * xb) - _per_row(glogdet, xb)) * dlog_s
        return gyb, namespace(xb).concatenate([gh_s, -gyb], axis=1)


class Coupling(Bijector):
    """A coupling layer on ``(N, D)`` data: partition + conditioner + elementwise transform.

    ``params = {"net": conditioner params}``. The default conditioner is an :class:`~rawflow.nets.mlp.MLP`
    from ``|a|`` to ``multiplier·|b|`` features with a zero-initialised last layer, so the layer
    starts as the identity.
    """

    def __init__(
        self,
        features: int,
        transform,
        *,
        partition: Partition | None = None,
        flip: bool = False,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
        conditioner=None,
    ):
        if partition is None:
            partition = Partition.half(features, flip=flip)
        elif flip:
            partition = partition.flipped()
        if partition.features != features:
            raise ValueError(
                f"{type(self).__name__}: partition covers {partition.features} features, layer has {features}"
            )
        self.event_shape = (int(features),)
        self.partition = partition
        self.transform = transform
        out = transform.multiplier * partition.size_b
        if conditioner is None:
            conditioner = MLP(partition.size_a, out, hidden=hidden, activation=activation)
        elif (conditioner.in_features, conditioner.out_features) != (partition.size_a, out):
            raise ValueError(
                f"{type(self).__name__}: conditioner maps {conditioner.in_features} → "
                f"{conditioner.out_features} features, the partition needs {partition.size_a} → {out}"
            )
        self.net = conditioner

    def param_spec(self) -> dict:
        return {"net": conditioner_spec(self.net)}

    @property
    def data_dependent(self) -> bool:
        return bool(getattr(self.net, "data_dependent", False))

    def _init(self, rng: np.random.Generator, x: Array) -> dict:
        xa, _ = self.partition.split(x)
        return {"net": self.net.init(rng, xa)}

    def _forward(self, params, x):
        xa, xb = self.partition.split(x)
        h, net_cache = self.net.apply(params["net"], xa)
        yb, logdet, tcache = self.transform.forward(xb, h)
        return self.partition.merge(xa, yb), logdet, (net_cache, tcache)

    def _inverse(self, params, z):
        ya, yb = self.partition.split(z)
        h, net_cache = self.net.apply(params["net"], ya)
        xb, logdet, tcache = self.transform.inverse(yb, h)
        return self.partition.merge(ya, xb), logdet, (net_cache, tcache)

    def _forward_no_cache(self, params, x):
        xa, xb = self.partition.split(x)
        yb, logdet = transform_forward_no_cache(self.transform, xb, apply_no_cache(self.net, params["net"], xa))
        return self.partition.merge(xa, yb), logdet

    def _inverse_no_cache(self, params, z):
        ya, yb = self.partition.split(z)
        xb, logdet = transform_inverse_no_cache(self.transform, yb, apply_no_cache(self.net, params["net"], ya))
        return self.partition.merge(ya, xb), logdet

    def _backward(self, params, cache, gz, glogdet):
        net_cache, tcache = cache
        gya, gyb = self.partition.split(gz)
        gxb, gh = self.transform.backward(tcache, gyb, glogdet)
        gxa, gnet = self.net.backward(params["net"], net_cache, gh)
        return self.partition.merge(gya + gxa, gxb), {"net": gnet}

    def _inverse_backward(self, params, cache, gx, glogdet):
        net_cache, tcache = cache
        gxa, gxb = self.partition.split(gx)
        gyb, gh = self.transform.inverse_backward(tcache, gxb, glogdet)
        gya, gnet = self.net.backward(params["net"], net_cache, gh)
        return self.partition.merge(gxa + gya, gyb), {"net": gnet}


class AdditiveCoupling(Coupling):
    """NICE's additive coupling ``y_b = x_b + NN(x_a)``, volume preserving."""

    def __init__(self, features: int, *, backend: str = "reference", **kwargs):
        super().__init__(features, AdditiveTransform(backend=backend), **kwargs)


class AffineCoupling(Coupling):
    """RealNVP / Glow affine coupling ``y_b = x_b ⊙ s(x_a) + t(x_a)``, ``log|det| = Σ log s``."""

    def __init__(self, features: int, *, scale: str | ScaleMap = "exp", backend: str = "reference", **kwargs):
        super().__init__(features, AffineTransform(scale, backend=backend), **kwargs)
