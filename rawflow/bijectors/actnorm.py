"""Activation normalisation (Glow): a per-channel affine map initialised from the first batch.

Forward (data → latent), ``x: (N, C, *spatial)``, ``bias, log_scale: (C,)``, ``e = exp(log_scale)``,
``P`` = number of spatial positions (1 for vectors)::

    u = x + bias,    z = u ⊙ e       logdet = P · Σ_c log_scale_c      (Glow: y = s ⊙ (x + b))
    u = z / e,       x = u − bias    logdet_inv = −logdet

Data-dependent init (:meth:`ActNorm.init` on a batch ``x``), per channel over the batch and all
spatial positions (``M = N·P`` values)::

    bias = −mean(x_c),    log_scale = −log(std(x_c) + guard_c),    guard_c = eps·rms(x_c) + tiny

with the population ``std`` (ddof 0), so the first batch comes out with zero mean and unit variance
per channel. The guard only matters for a channel that is (numerically) constant: below
``eps·rms(x_c)`` the measured spread is round-off in the values, not signal, and ``tiny`` (the
dtype's smallest normal) keeps an all-zero channel's ``log_scale`` finite (``−log tiny``, ≈ 708 in
float64, 87 in float32). For any channel with real spread it changes the scale by ≤ eps relative.

Round trip: the inverse divides by the forward's own rounded ``e``. With unit round-off ``u`` and
``κ = max(e, 1/e)``, first-order error analysis gives
``|x' − x| ≤ u·(3|x + bias| + |x'|) ≤ 2·eps·κ·max(‖x‖∞, ‖z‖∞)`` (``|x + bias| = |z|/e``) and the same
bound for ``z → x → z``.

Gradients (sums ``Σ`` over the batch and spatial axes)::

    forward:  gx = gz ⊙ e    g bias = Σ gz ⊙ e      g log_scale = Σ gz ⊙ z + P·Σ_n glogdet_n
    inverse:  gz = gx / e    g bias = −Σ gx         g log_scale = −Σ gx ⊙ u − P·Σ_n glogdet_n

(``∂x/∂log_scale = −z/e = −u``.) The cache ``(u, z, e)`` is the same from either direction.

``backend=`` selects who computes all four passes: ``"reference"`` (default; the code below, the
oracle), ``"numba"`` / ``"cuda"`` (fused kernels :mod:`rawflow.kernels.cpu_actnorm` /
:mod:`rawflow.kernels.cuda_actnorm`: one pass over the data per direction, the parameter
gradients' batch/spatial sums fused into the VJP pass, computed in float64 and rounded once) or
``"auto"`` (the kernel matching the arrays, else this code: complex inputs such as complex-step
checks run the reference); see :func:`rawflow.kernels.dispatch.select_actnorm`. A kernel
backend's cache is ``(x, z, kernels)``; it is interchangeable between directions as well.

A ``log_scale`` whose ``exp`` underflows to 0 or overflows is refused in both directions, on
every backend (:func:`~rawflow.bijectors._channel.channel_scales`): the map would collapse every
sample to 0 (or ∞) with a finite log-det.
"""

from __future__ import annotations

import numpy as np

from .._array import Array, namespace
from ._channel import ChannelBijector, channel_scales, channel_view, constant_logdet, positions, sum_but_channel


_BACKENDS = ("reference", "numba", "cuda", "auto")


class ActNorm(ChannelBijector):
    """``z = (x + bias) ⊙ exp(log_scale)`` along axis 1, initialised to whiten the first batch.

    ``data_init=False`` starts from the identity (zeros) instead: as the last layer of a flow under a
    standard normal prior that is a learned diagonal Gaussian prior, ``N(−bias, exp(−2·log_scale))``
    (Glow's ``learn_top``, reparametrised).
    """

    def __init__(self, features: int, spatial: int = 0, *, data_init: bool = True, backend: str = "reference"):
        super().__init__(features, spatial)
        self.data_init = bool(data_init)
        if backend not in _BACKENDS:
            raise ValueError(f"{type(self).__name__}: backend must be one of {', '.join(_BACKENDS)}; got {backend!r}")
        self.backend = backend

    def param_spec(self) -> dict:
        return {"bias": (self.features,), "log_scale": (self.features,)}

    @property
    def data_dependent(self) -> bool:
        return self.data_init

    def _kernels(self, x):
        """The kernel module serving ``x`` under ``self.backend``, or ``None`` for the reference code.

        :mod:`rawflow.kernels` (and Numba) is imported only when a kernel backend is asked for.
        """
        if self.backend == "reference":
            return None
        from ..kernels.dispatch import select_actnorm

        return select_actnorm(self.name, self.backend, x)

    def _init(self, rng: np.random.Generator, x: Array) -> dict:
        """``{"bias": −mean, "log_scale": −log(std + guard)}`` per channel of ``x``; ``rng`` is unused."""
        xp = namespace(x)
        if not self.data_init:
            zeros = xp.zeros(self.features, dtype=x.dtype)
            return {"bias": zeros, "log_scale": zeros.copy()}
        count = x.shape[0] * positions(x)
        if count < 2:
            raise self._error(
                f"data-dependent init needs at least 2 values per channel to measure a spread, "
                f"got a batch of shape {tuple(x.shape)}"
            )
        axes = (0,) + tuple(range(2, x.ndim))
        mean = x.mean(axis=axes)
        # Two passes (mean, then spread about it): one pass E[x²] − E[x]² cancels catastrophically.
        var = ((x - channel_view(mean, x)) ** 2).mean(axis=axes)
        finfo = np.finfo(x.dtype)
        guard = finfo.eps * xp.sqrt(mean * mean + var) + finfo.tiny
        return {"bias": -mean, "log_scale": -xp.log(xp.sqrt(var) + guard)}

    def _logdet(self, params, x):
        return positions(x) * params["log_scale"].sum()

    def _forward(self, params, x):
        e = channel_scales(self, params["log_scale"])
        k = self._kernels(x)
        if k is not None:
            z, logdet = k.actnorm_forward(x, params["bias"], params["log_scale"])
            return z, logdet, k.ActNormCache(x, z, k)
        u = x + channel_view(params["bias"], x)
        z = u * channel_view(e, x)
        return z, constant_logdet(self._logdet(params, x), z), (u, z, e)

    def _inverse(self, params, z):
        e = channel_scales(self, params["log_scale"])
        k = self._kernels(z)
        if k is not None:
            x, logdet = k.actnorm_inverse(z, params["bias"], params["log_scale"])
            return x, logdet, k.ActNormCache(x, z, k)
        u = z / channel_view(e, z)
        x = u - channel_view(params["bias"], z)
        return x, constant_logdet(-self._logdet(params, z), x), (u, z, e)

    def _backward(self, params, cache, gz, glogdet):
        if hasattr(cache, "kernels"):
            gx, gb, gls = cache.kernels.actnorm_backward(cache.z, params["bias"], params["log_scale"], gz, glogdet)
            return gx, {"bias": gb, "log_scale": gls}
        u, z, e = cache
        gx = gz * channel_view(e, gz)
        gls = sum_but_channel(gz * z) + positions(gz) * glogdet.sum()
        return gx, {"bias": sum_but_channel(gx), "log_scale": gls}

    def _inverse_backward(self, params, cache, gx, glogdet):
        if hasattr(cache, "kernels"):
            gz, gb, gls = cache.kernels.actnorm_inverse_backward(
                cache.x, params["bias"], params["log_scale"], gx, glogdet
            )
            return gz, {"bias": gb, "log_scale": gls}
        u, z, e = cache
        gz = gx / channel_view(e, gx)
        gls = -(sum_but_channel(gx * u) + positions(gx) * glogdet.sum())
        return gz, {"bias": -sum_but_channel(gx), "log_scale": gls}
