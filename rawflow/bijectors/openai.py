"""Glow as its reference code defines it (openai/glow ``model.py``, ``tfops.py``), NCHW.

The layers :func:`rawflow.models.architectures.glow` builds for ``variant="openai"``. Each keeps the
bijector contract (forward = data → latent, exact log-det cancellation, hand-written VJPs) and
differs from rawflow's default Glow layers in a definition of the reference code:

* :class:`OpenAIActNorm` (``actnorm``): ``z = (x + b) ⊙ exp(3·logs)``, ``logdet = P·Σ_c 3·logs_c``
  (``P`` positions). The stored parameter is ``logs``; the applied log-scale is ``3·logs``.
  Data-dependent init ``b = −mean(x)``, ``logs = log(1/(√mean((x + b)²) + 1e-6))/3`` per channel
  over (N, H, W) — an absolute 1e-6 on the standard deviation (rawflow's :class:`~.actnorm.ActNorm`
  uses ``eps·rms(x) + tiny``, relative). VJP: as ActNorm's with ``g logs = 3·g log_scale``.
* :class:`OpenAICoupling` (``revnet2d_step``, ``flow_coupling=1``): ``h = f(x_a)`` with
  :class:`~rawflow.nets.openai.OpenAIGlowCNN` (edge padding, norm with factor 3), then
  ``shift = h[:, 0::2]``, ``s = sigmoid(h[:, 1::2] + 2)`` (interleaved) and
  ``y_b = (x_b + shift) ⊙ s``, ``logdet = Σ log s`` — shift *before* scale, unlike rawflow's
  ``x_b ⊙ s + t`` with ``h = [h_s | t]``. ``flow_coupling=0`` (additive, the reference's default)
  is ``y_b = x_b + f(x_a)``. ``x_a`` = the first ``C/2`` channels, as in the reference.
* :class:`OpenAIInvConv` (``invertible_1x1_conv``, the dense version the reference uses):
  ``log|det W|`` is computed in float64 and rounded to the data's dtype (the reference's
  ``tf.cast(tf.log(abs(tf.matrix_determinant(tf.cast(w, 'float64')))), 'float32')``), and so is its
  gradient ``W⁻ᵀ``. In float64 it is :class:`~.linear.DenseLinear`; in float32 the log-det is the
  correctly rounded value of the exact ``log|det W|`` of the float32 matrix (to float64's
  ``eps·cond``), where a float32 LU (torch's and CuPy's float32 ``slogdet``) errs by up to
  hundreds of ulps on some matrices (measured: 2e-4 absolute at C = 48, 2e-3 at C = 512, each
  times H·W). NumPy's ``linalg`` already computes float32 input in float64, so on NumPy arrays
  :class:`~.linear.DenseLinear` gives the same float32 log-det; this layer guarantees it on every
  namespace. The reference convolves NHWC with ``w[in, out]``, i.e. ``z = Wᵀ x``; here
  ``z = W x`` (``W_rawflow = W_tfᵀ``).
* :class:`OpenAISplit` (``split2d``): rawflow's :class:`~.split.Split` (kept half first, interleaved
  ``μ = h[:, 0::2]``, ``ℓ = h[:, 1::2]``) with the prior's ``Conv2dZeros`` edge-padded.
* :class:`OpenAILearnTop` (``prior`` with ``--learntop``): ``h = Conv2dZeros(0)`` over the top
  latent's shape with edge padding, ``μ = h[:, :C]``, ``ℓ = h[:, C:]``. With edge padding the
  convolution of zeros is ``b + E`` (the edge channel's taps): μ and ℓ are per channel *and* differ
  on the border pixels. As a bijector, the standardisation ``ε = (z − μ)/σ`` (``logdet = −Σ ℓ``),
  so a standard normal on ``ε`` is ``N(z; μ, σ²)``. ``params`` are the reference's
  ``{"w": (2C, 2C + 1, 3, 3), "b", "logs"}``; the weights on the 2C zero channels receive exactly
  zero gradient there as here.

None of these layers has a fused kernel (``backend`` is the reference code).
"""

from __future__ import annotations

import numpy as np

from .._array import Array, logabsdet, namespace
from ..nets.openai import LOGSCALE_FACTOR, ACTNORM_EPS, EdgeZeroConv2d, OpenAIGlowCNN
from ._channel import ChannelBijector, channel_view, constant_logdet, positions, sum_but_channel
from .bijector import Bijector
from .coupling import AdditiveTransform, Coupling, _per_row, _row_sum, _scaled
from .linear import DenseLinear
from .partition import Partition
from .scales import SigmoidScale
from .split import Split


# ---------------------------------------------------------------------------------- ActNorm
class OpenAIActNorm(ChannelBijector):
    """``z = (x + b) ⊙ exp(3·logs)`` along axis 1 with the reference's init (see the module doc).

    ``params = {"b": (C,), "logs": (C,)}``. Forward/inverse, ``e = exp(3·logs)``::

        u = x + b,  z = u ⊙ e,   logdet = P·Σ 3·logs          u = z / e,  x = u − b
        gx = gz ⊙ e,  g b = Σ gx,  g logs = 3·(Σ gz ⊙ z + P·Σ_n glogdet_n)
        gz = gx / e,  g b = −Σ gx, g logs = −3·(Σ gx ⊙ u + P·Σ_n glogdet_n)

    The reference's inverse multiplies by ``exp(−3·logs)``; dividing by ``e`` is the same map, one
    rounding apart, and makes the round trip exact to a few ulps for any scale.
    """

    def __init__(self, features: int, spatial: int = 0, *, logscale_factor: float = LOGSCALE_FACTOR,
                 eps: float = ACTNORM_EPS):
        super().__init__(features, spatial)
        self.logscale_factor, self.eps = float(logscale_factor), float(eps)

    def param_spec(self) -> dict:
        return {"b": (self.features,), "logs": (self.features,)}

    @property
    def data_dependent(self) -> bool:
        return True

    def _init(self, rng, x):
        xp = namespace(x)
        axes = (0,) + tuple(range(2, x.ndim))
        b = -x.mean(axis=axes)
        centred = x + channel_view(b, x)
        var = (centred * centred).mean(axis=axes)
        return {"b": b, "logs": xp.log(1.0 / (xp.sqrt(var) + self.eps)) / self.logscale_factor}

    def _scales(self, params):
        """``(3·logs, exp(3·logs))``, refusing a scale that under- or overflows (not invertible)."""
        xp = namespace(params["logs"])
        log_e = self.logscale_factor * params["logs"]
        with np.errstate(over="ignore", under="ignore"):
            e = xp.exp(log_e)
        bad = ~(xp.isfinite(e) & (e.real != 0))
        if bool(bad.any()):
            idx = [int(i) for i in xp.flatnonzero(bad)]
            raise self._error(f"scale exp({self.logscale_factor:g}·logs) underflows to 0 or overflows at channels "
                              f"{idx[:8]} (logs = {[float(params['logs'][i].real) for i in idx[:8]]}); "
                              "the layer is not invertible")
        return log_e, e

    def _forward(self, params, x):
        log_e, e = self._scales(params)
        u = x + channel_view(params["b"], x)
        z = u * channel_view(e, x)
        return z, constant_logdet(positions(x) * log_e.sum(), z), (u, z, e)

    def _inverse(self, params, z):
        log_e, e = self._scales(params)
        u = z / channel_view(e, z)
        x = u - channel_view(params["b"], z)
        return x, constant_logdet(-(positions(z) * log_e.sum()), x), (u, z, e)

    def _backward(self, params, cache, gz, glogdet):
        u, z, e = cache
        gx = gz * channel_view(e, gz)
        glog_e = sum_but_channel(gz * z) + positions(gz) * glogdet.sum()
        return gx, {"b": sum_but_channel(gx), "logs": self.logscale_factor * glog_e}

    def _inverse_backward(self, params, cache, gx, glogdet):
        u, z, e = cache
        gz = gx / channel_view(e, gx)
        glog_e = sum_but_channel(gx * u) + positions(gx) * glogdet.sum()
        return gz, {"b": -sum_but_channel(gx), "logs": -self.logscale_factor * glog_e}


# ---------------------------------------------------------------------------------- coupling
class OpenAIAffineTransform:
    """``y_b = (x_b + shift) ⊙ s``, ``shift = h[:, 0::2]``, ``s = sigmoid(h[:, 1::2] + 2)``.

    ``log s = −softplus(−(h_s + 2))`` (the reference computes ``log(sigmoid(·))``: the same function,
    which in float32 becomes ``−inf`` once ``sigmoid`` underflows, near ``h_s < −90``). With
    ``u = x_b + shift`` (the cache holds ``u``, ``s``, ``d log s/dh_s``; the inverse's ``u = y_b/s``)::

        forward:  gu = gy ⊙ s,  gx_b = gu,   g shift = gu,   g h_s = (gu ⊙ u + gℓ) ⊙ d log s/dh_s
        inverse:  x_b = y_b/s − shift,  gy_b = gx/s,  g shift = −gx,  g h_s = −(gx ⊙ u + gℓ) ⊙ d log s/dh_s

    and ``gh`` interleaves ``[g shift₀, g h_s₀, g shift₁, ...]`` back into the network's channels.
    """

    multiplier = 2

    def __init__(self):
        self.scale = SigmoidScale()

    def __repr__(self) -> str:
        return "OpenAIAffineTransform()"

    def _params(self, h):
        log_s, dlog_s = self.scale(h[:, 1::2])
        return h[:, 0::2], log_s, dlog_s, namespace(h).exp(log_s)

    def forward(self, xb, h):
        shift, log_s, dlog_s, s = self._params(h)
        u = xb + shift
        return _scaled(u, log_s, s), _row_sum(log_s), (u, s, dlog_s)

    def inverse(self, yb, h):
        shift, log_s, dlog_s, s = self._params(h)
        u = _scaled(yb, log_s, s, inverse=True)
        return u - shift, -_row_sum(log_s), (u, s, dlog_s)

    @staticmethod
    def _interleave(gshift, gh_s):
        xp = namespace(gshift)
        n, c = gshift.shape[:2]
        return xp.stack([gshift, gh_s], axis=2).reshape((n, 2 * c) + tuple(gshift.shape[2:]))

    def backward(self, tcache, gyb, glogdet):
        u, s, dlog_s = tcache
        gu = gyb * s
        gh_s = (gu * u + _per_row(glogdet, u)) * dlog_s
        return gu, self._interleave(gu, gh_s)

    def inverse_backward(self, tcache, gxb, glogdet):
        u, s, dlog_s = tcache
        gh_s = -(gxb * u + _per_row(glogdet, u)) * dlog_s
        return gxb / s, self._interleave(-gxb, gh_s)


class OpenAICoupling(Coupling):
    """The reference's coupling on ``(N, C, H, W)``: first ``C/2`` channels copied, network
    :class:`~rawflow.nets.openai.OpenAIGlowCNN` of ``width`` channels; ``transform`` ``"affine"``
    (:class:`OpenAIAffineTransform`) or ``"additive"`` (``y_b = x_b + f(x_a)``). ``params = {"net": ...}``.
    A fresh layer is the affine map ``y_b = x_b ⊙ sigmoid(2)`` (the reference's too) or, additive,
    the identity.
    """

    def __init__(self, channels: int, transform: str = "affine", *, width: int = 512):
        if not (isinstance(channels, (int, np.integer)) and not isinstance(channels, bool) and channels >= 2):
            raise ValueError(f"OpenAICoupling: channels must be an integer ≥ 2, got {channels!r}")
        if transform == "affine":
            t = OpenAIAffineTransform()
        elif transform == "additive":
            t = AdditiveTransform()
        else:
            raise ValueError(f"OpenAICoupling: transform must be 'affine' or 'additive', got {transform!r}")
        partition = Partition.half(int(channels))
        net = OpenAIGlowCNN(partition.size_a, t.multiplier * partition.size_b, width)
        super().__init__(int(channels), t, partition=partition, conditioner=net)
        self.event_shape = (int(channels), None, None)
        self.kind = transform

    def __repr__(self) -> str:
        return f"OpenAICoupling({self.event_shape[0]}, {self.kind!r}, width={self.net.width})"


# ---------------------------------------------------------------------------------- 1×1 conv
def _wide(w: Array) -> Array:
    """``w`` in float64 (complex128): the precision the reference computes ``log|det W|`` in.
    Float64, complex128 and object (mpmath) arrays are returned as they are."""
    if w.dtype == np.float32:
        return w.astype(np.float64)
    if w.dtype == np.complex64:
        return w.astype(np.complex128)
    return w


class OpenAIInvConv(DenseLinear):
    """:class:`~.linear.DenseLinear` with ``log|det W|`` and its gradient ``W⁻ᵀ`` computed in float64
    and rounded once to ``W``'s dtype (the reference's float64 ``matrix_determinant``).

    ``logdet = (H·W) · round(log|det W|₆₄)`` in the data's dtype, as the reference multiplies after
    its cast. The map itself and its inverse (a solve) run in the data's dtype.
    """

    def _logabsdet(self, w: Array) -> Array:
        return super()._logabsdet(_wide(w)).astype(w.dtype) if w.dtype in (np.float32, np.complex64) \
            else super()._logabsdet(w)

    def _inv_t(self, w: Array) -> Array:
        return super()._inv_t(_wide(w)).astype(w.dtype) if w.dtype in (np.float32, np.complex64) \
            else super()._inv_t(w)


# ---------------------------------------------------------------------------------- priors
class OpenAISplit(Split):
    """:class:`~.split.Split` whose prior convolution is the reference's edge-padded
    ``Conv2dZeros``: ``params = {"prior": {"w": (2C₂, C₁ + 1, 3, 3), "b": (2C₂,), "logs": (2C₂,)}}``."""

    def __init__(self, channels: int):
        super().__init__(channels)
        self.prior = EdgeZeroConv2d(self.kept, 2 * self.factored, 3)

    def __repr__(self) -> str:
        return f"OpenAISplit({self.channels})"


class OpenAILearnTop(Bijector):
    """The reference's learned top prior (``--learntop``) as the standardisation of the top latent.

    ``h = EdgeZeroConv2d(2C → 2C)(0): (1, 2C, H, W)``, ``μ = h[:, :C]``, ``ℓ = h[:, C:]``, ``σ = exp(ℓ)``::

        forward:  ε = (z − μ)/σ,      logdet = −Σ_{c,i,j} ℓ          (the same for every sample)
        inverse:  z = μ + σ ⊙ ε,      logdet_inv = +Σ ℓ
        VJPs:     gz = g_ε/σ,   gμ = −Σ_n g_ε/σ,   gℓ = −Σ_n (g_ε ⊙ ε + gλ_n)
                  gε = g_z ⊙ σ, gμ = Σ_n g_z,      gℓ = Σ_n (g_z ⊙ σ ⊙ ε + gλ_n)

    and ``[gμ | gℓ]`` goes through the convolution's VJP. ``params``: the convolution's
    ``{"w": (2C, 2C + 1, 3, 3), "b": (2C,), "logs": (2C,)}``, zero at init (a standard normal).
    """

    def __init__(self, channels: int):
        if not (isinstance(channels, (int, np.integer)) and not isinstance(channels, bool) and channels >= 1):
            raise ValueError(f"OpenAILearnTop: channels must be a positive integer, got {channels!r}")
        self.channels = int(channels)
        self.event_shape = (self.channels, None, None)
        self.net = EdgeZeroConv2d(2 * self.channels, 2 * self.channels, 3)

    def __repr__(self) -> str:
        return f"OpenAILearnTop({self.channels})"

    def param_spec(self) -> dict:
        return self.net.param_spec()

    def _zeros(self, like):
        return namespace(like).zeros((1, 2 * self.channels) + tuple(like.shape[2:]), dtype=like.dtype)

    def _init(self, rng, x):
        return self.net.init(rng, self._zeros(x))

    def _stats(self, params, like):
        h, net_cache = self.net.apply(params, self._zeros(like))
        c = self.channels
        return h[:, :c], h[:, c:], net_cache

    def _forward(self, params, z):
        mu, logs, net_cache = self._stats(params, z)
        sigma = namespace(z).exp(logs)
        eps = (z - mu) / sigma
        return eps, constant_logdet(-logs.sum(), eps), (net_cache, eps, sigma)

    def _inverse(self, params, eps):
        mu, logs, net_cache = self._stats(params, eps)
        sigma = namespace(eps).exp(logs)
        return mu + sigma * eps, constant_logdet(logs.sum(), eps), (net_cache, eps, sigma)

    def _net_backward(self, params, net_cache, gmu, glogs):
        gh = namespace(gmu).concatenate([gmu, glogs], axis=1)
        return self.net.backward(params, net_cache, gh)[1]

    def _backward(self, params, cache, g, glogdet):
        net_cache, eps, sigma = cache
        gz = g / sigma
        glogs = -((g * eps).sum(axis=0, keepdims=True) + glogdet.sum())
        return gz, self._net_backward(params, net_cache, -gz.sum(axis=0, keepdims=True), glogs)

    def _inverse_backward(self, params, cache, gx, glogdet):
        net_cache, eps, sigma = cache
        geps = gx * sigma
        glogs = (geps * eps).sum(axis=0, keepdims=True) + glogdet.sum()
        return geps, self._net_backward(params, net_cache, gx.sum(axis=0, keepdims=True), glogs)
