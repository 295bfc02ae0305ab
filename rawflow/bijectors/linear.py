"""Invertible linear maps along axis 1: dense and LU-factorised (Glow's invertible 1×1 convolution).

At every position, ``z = W x`` with ``W: (C, C)``; for images that is a 1×1 convolution. Both
layers work on the *column matrix* ``X: (C, M)`` holding every position of every sample
(``M = N·HW`` for ``HW = H·W`` positions, ``HW = 1`` for vectors), so one GEMM / solve serves
the whole batch::

    Z = W X                          logdet = HW · log|det W|           (the same for every sample)
    X = W⁻¹ Z                        logdet_inv = −logdet

VJPs, with ``gZ, gX`` the cotangents in column form and ``γ = HW · Σ_n glogdet_n``
(``∂ log|det W| / ∂W = W⁻ᵀ``)::

    forward:  gX = Wᵀ gZ             gW =  gZ Xᵀ + γ · W⁻ᵀ
    inverse:  gZ = W⁻ᵀ gX            gW = −gZ Xᵀ − γ · W⁻ᵀ

The inverse's follows from ``dX = −W⁻¹ dW W⁻¹ Z = −W⁻¹ dW X``, so
``⟨gX, dX⟩ = −⟨W⁻ᵀ gX Xᵀ, dW⟩``, and from ``logdet_inv = −HW·log|det W|``.

* :class:`DenseLinear`: ``params = {"weight": W}``. O(C³) log-det (``slogdet``) and solves.
* :class:`LULinear`: ``W = P·L·Ũ``, ``Ũ = U + diag(sign ⊙ exp(log_s))``; O(C) log-det
  ``HW·Σ log_s`` and two triangular solves (see its docstring).

Both start from the same random orthogonal matrix for the same ``seed`` (Glow's init).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg

from .._array import Array, logabsdet, namespace, solve_triangular
from .._checks import check_array
from ._channel import ChannelBijector, _readonly, constant_logdet, positions


def random_orthogonal(features: int, seed) -> np.ndarray:
    """Haar-random orthogonal ``(C, C)`` float64 matrix from ``np.random.default_rng(seed)``.

    QR of a Gaussian matrix with the columns of Q flipped by ``sign(diag R)``: without the flip
    the distribution depends on the QR routine's sign convention (Mezzadri 2007).
    """
    g = np.random.default_rng(seed).standard_normal((features, features))
    q, r = np.linalg.qr(g)
    return q * np.sign(np.diag(r))


def to_columns(x: Array) -> Array:
    """``(N, C, *spatial) → (C, N·P)``: column ``n·P + p`` is position ``p`` of sample ``n``."""
    n, c = x.shape[:2]
    p = positions(x)  # explicit sizes: a -1 cannot be inferred from an empty batch (N = 0)
    return namespace(x).moveaxis(x.reshape(n, c, p), 1, 0).reshape(c, n * p)


def from_columns(m: Array, shape: tuple) -> Array:
    """Inverse of :func:`to_columns` for an array of ``shape``."""
    n, c = shape[:2]
    return namespace(m).moveaxis(m.reshape(c, n, math.prod(shape[2:])), 0, 1).reshape(shape)


class DenseLinear(ChannelBijector):
    """``z = W x`` at every position with an unconstrained ``W``; ``logdet = HW·log|det W|``.

    ``params = {"weight": (C, C)}``, initialised to :func:`random_orthogonal` ``(C, seed)``
    (``init``'s ``rng`` is not used, so the same seed gives the same start as :class:`LULinear`).
    The inverse solves ``W X = Z`` (LU with partial pivoting) without forming ``W⁻¹``; only the
    log-det gradient needs ``W⁻ᵀ``, obtained by solving ``Wᵀ Y = I``. A singular ``W``
    (``log|det W| = −inf``) raises ``ValueError``.
    """

    def __init__(self, features: int, spatial: int = 0, seed: int = 0):
        super().__init__(features, spatial)
        self.seed = seed

    def param_spec(self) -> dict:
        return {"weight": (self.features, self.features)}

    def _init(self, rng: np.random.Generator, x: Array) -> dict:
        w = random_orthogonal(self.features, self.seed)
        return {"weight": namespace(x).asarray(w, dtype=x.dtype)}

    def _logabsdet(self, w: Array) -> Array:
        lad = logabsdet(w)
        if not bool(namespace(w).isfinite(lad.real)):
            what = "contains NaN or Inf" if bool(namespace(w).isnan(lad.real)) else "is singular"
            raise self._error(f"weight {what} (log|det W| = {float(lad.real)}); the layer is not invertible")
        return lad

    def _inv_t(self, w: Array) -> Array:
        xp = namespace(w)
        return xp.linalg.solve(w.T, xp.eye(w.shape[0], dtype=w.dtype))

    def _forward(self, params, x):
        w = params["weight"]
        lad = self._logabsdet(w)
        cols = to_columns(x)
        z = from_columns(w @ cols, x.shape)
        return z, constant_logdet(positions(x) * lad, z), cols

    def _inverse(self, params, z):
        w = params["weight"]
        lad = self._logabsdet(w)
        cols = namespace(z).linalg.solve(w, to_columns(z))
        x = from_columns(cols, z.shape)
        return x, constant_logdet(-(positions(z) * lad), x), cols

    def _backward(self, params, cache, gz, glogdet):
        w, cols = params["weight"], cache
        gzc = to_columns(gz)
        gamma = positions(gz) * glogdet.sum()
        gw = gzc @ cols.T + gamma * self._inv_t(w)
        return from_columns(w.T @ gzc, gz.shape), {"weight": gw}

    def _inverse_backward(self, params, cache, gx, glogdet):
        w, cols = params["weight"], cache
        gzc = namespace(w).linalg.solve(w.T, to_columns(gx))
        gamma = positions(gx) * glogdet.sum()
        gw = -(gzc @ cols.T + gamma * self._inv_t(w))
        return from_columns(gzc, gx.shape), {"weight": gw}


class LULinear(ChannelBijector):
    """``z = W x`` at every position with ``W = P·L·Ũ`` kept in LU form (Glow's LU 1×1 conv).

    ``P`` is a fixed permutation stored as row indices (``(P M) = M[perm]``), ``L = I + tril₋₁(lower)``
    is unit lower triangular, ``Ũ = triu₊₁(upper) + diag(s)`` with ``s = sign ⊙ exp(log_s)``::

        params = {"lower": (C, C), "upper": (C, C), "log_scale": (C,)}     # log_scale is log_s
        logdet = HW · Σ log_s                                           O(C)
        inverse: Y = Pᵀ Z (rows Z[inverse_perm]),  L V = Y,  Ũ X = V        two triangular solves

    ``lower`` and ``upper`` are stored as full matrices, but only their strictly lower / strictly
    upper parts are read (masked on every use); their gradients are exactly zero outside those
    masks, so an optimiser never moves the unused entries away from where they start.

    At construction a random orthogonal ``Q`` (:func:`random_orthogonal`, ``seed``) is factorised
    ``Q = P·L·U`` (``scipy.linalg.lu``); ``perm`` and ``sign = sign(diag U)`` are fixed buffers of the
    layer, and ``init`` returns the matching ``lower``, ``upper``, ``log_scale = log|diag U|`` in
    ``x``'s dtype and namespace. ``init`` ignores its ``rng``: the learned factors must belong to the
    rotation that fixed ``P`` and ``sign``, so the seed at construction decides both. A zero or
    non-finite ``s`` (``log_s = ±inf``, or ``exp`` under/overflow) makes ``W`` singular and raises
    ``ValueError``.

    Gradients: the forward VJP gives ``gW = gZ Xᵀ``, mapped to the factors by :meth:`weight_backward`'s
    rules (``dW = P (dL Ũ + L dŨ)``); the inverse goes back through its two solves directly
    (``a = Ũ⁻ᵀ gX``, ``gŨ = −a Xᵀ``, ``b = L⁻ᵀ a``, ``gL = tril₋₁(−b Vᵀ)``), with ``V = L⁻¹ Pᵀ Z``
    the first solve's own result, kept in the inverse's cache. Accuracy at a near-singular ``W``:
    every quantity is a product of solves with the factors and is accurate to a few ulps of its
    term size (``Σ|terms|``, Skeel's componentwise condition) — no ``eps·cond(W)`` loss; measured
    against a 60-digit oracle at ``log_scale = −18`` (``cond(W) ≈ 3e8``) the factor gradients are
    within 1e-15 relative. Recomputing ``V = Ũ X`` instead loses ``eps·cond(W)`` (1e-10 … 2e-8
    there): ``X`` carries the solve's rounding magnified by ``1/s``, which ``Ũ X`` cancels only to
    ``eps·|Ũ||X|``. The forward cache has no ``V`` (the forward never solves); given one, the
    inverse VJP forms ``V = Ũ X`` from the forward's exact input, where it is accurate::

        gL = tril₋₁(Pᵀ gW Ũᵀ)      gŨ = Lᵀ Pᵀ gW      g upper = triu₊₁(gŨ)
        g log_s = diag(gŨ) ⊙ s + γ                  (γ = ±HW·Σ_n glogdet_n, sign of the direction)

    The log-det term enters ``log_s`` directly: mapping the dense ``γ W⁻ᵀ`` through the same rules
    gives exactly ``γ`` on ``log_s`` and zero on ``L`` and ``U``.
    """

    def __init__(self, features: int, spatial: int = 0, seed: int = 0):
        super().__init__(features, spatial)
        self.seed = seed
        q = random_orthogonal(self.features, seed)
        p, lower, upper = scipy.linalg.lu(q)  # q = p @ lower @ upper
        d = np.diag(upper)
        self.perm = _readonly(np.argmax(p, axis=1))  # row i of P·M is M[perm[i]]
        self.inverse_perm = _readonly(np.argsort(self.perm))
        self.sign = _readonly(np.sign(d))
        self._start = (np.tril(lower, -1), np.triu(upper, 1), np.log(np.abs(d)))

    def param_spec(self) -> dict:
        c = self.features
        return {"lower": (c, c), "upper": (c, c), "log_scale": (c,)}

    def _init(self, rng: np.random.Generator, x: Array) -> dict:
        xp = namespace(x)
        lower, upper, log_s = (xp.asarray(a, dtype=x.dtype) for a in self._start)
        return {"lower": lower, "upper": upper, "log_scale": log_s}

    # ------------------------------------------------------------------ the factors
    def _factors(self, params):
        """``(L, Ũ, s)`` from the parameters, masked; raises if ``W`` is singular."""
        log_s = params["log_scale"]
        xp = namespace(log_s)
        s = xp.asarray(self.sign, dtype=log_s.dtype) * xp.exp(log_s)
        bad = ~(xp.isfinite(s.real) & (s.real != 0))
        if bool(bad.any()):
            idx = [int(i) for i in xp.flatnonzero(bad)]
            raise self._error(
                f"weight is singular: s = sign·exp(log_scale) is zero or not finite at {idx} "
                f"(log_scale = {[float(log_s[i].real) for i in idx]})"
            )
        eye = xp.eye(self.features, dtype=log_s.dtype)
        lower = xp.tril(params["lower"], -1) + eye
        upper = xp.triu(params["upper"], 1) + xp.diag(s)
        return lower, upper, s

    def _assemble(self, lower, upper):
        xp = namespace(lower)
        return xp.take(lower @ upper, xp.asarray(self.perm), axis=0)

    def weight(self, params: dict) -> Array:
        """The assembled ``W = P·L·Ũ: (C, C)``."""
        self._check_params(params, None)
        lower, upper, _ = self._factors(params)
        return self._assemble(lower, upper)

    def weight_backward(self, params: dict, gweight: Array) -> dict:
        """VJP of :meth:`weight`: ``gparams`` (structure of ``params``) from ``gW = ∂L/∂W``."""
        self._check_params(params, None)
        c, dtype = self.features, params["lower"].dtype
        check_array(self.name, gweight, "weight cotangent", (c,))
        if gweight.shape[0] != c or gweight.dtype != dtype:
            raise self._error(f"weight cotangent must be a ({c}, {c}) array of dtype {dtype}, "
                              f"got {tuple(gweight.shape)} {gweight.dtype}")
        return self._weight_grads(self._factors(params), gweight, 0)

    def _weight_grads(self, factors, gw, gamma):
        lower, upper, s = factors
        xp = namespace(gw)
        pt_gw = xp.take(gw, xp.asarray(self.inverse_perm), axis=0)  # Pᵀ gW
        gupper_full = lower.T @ pt_gw  # gŨ
        return {
            "lower": xp.tril(pt_gw @ upper.T, -1),
            "upper": xp.triu(gupper_full, 1),
            "log_scale": xp.diagonal(gupper_full) * s + gamma,
        }

    # ------------------------------------------------------------------ the bijector
    def _logdet(self, params, x):
        return positions(x) * params["log_scale"].sum()

    def _forward(self, params, x):
        factors = self._factors(params)
        cols = to_columns(x)
        w = self._assemble(*factors[:2])
        z = from_columns(w @ cols, x.shape)
        # W is kept for the backward pass: assembled once per step (its VJP reads Wᵀ)
        return z, constant_logdet(self._logdet(params, x), z), (cols, None, factors, w)

    def _inverse(self, params, z):
        lower, upper, s = factors = self._factors(params)
        xp = namespace(z)
        y = xp.take(to_columns(z), xp.asarray(self.inverse_perm), axis=0)  # Pᵀ Z
        v = solve_triangular(lower, y, lower=True, unit_diagonal=True)
        cols = solve_triangular(upper, v, lower=False)
        x = from_columns(cols, z.shape)
        # V is kept: recomputing it as Ũ X at a near-singular Ũ loses eps·cond(W) (class docstring)
        return x, constant_logdet(-self._logdet(params, z), x), (cols, v, factors, None)

    def _forward_no_cache(self, params, x):
        factors = self._factors(params)
        z = from_columns(self._assemble(*factors[:2]) @ to_columns(x), x.shape)
        return z, constant_logdet(self._logdet(params, x), z)

    def _backward(self, params, cache, gz, glogdet):
        cols, _, factors, w = cache
        gzc = to_columns(gz)
        if w is None:  # an inverse's cache: assemble W here
            w = self._assemble(*factors[:2])
        gx = w.T @ gzc
        gamma = positions(gz) * glogdet.sum()
        return from_columns(gx, gz.shape), self._weight_grads(factors, gzc @ cols.T, gamma)

    def _inverse_backward(self, params, cache, gx, glogdet):
        cols, v, factors, _ = cache
        lower, upper, s = factors
        xp = namespace(gx)
        # X = Ũ⁻¹ V, V = L⁻¹ Y, Y = Pᵀ Z. Back through each solve in turn:
        #   a = Ũ⁻ᵀ gX,  gŨ = −a Xᵀ;   b = L⁻ᵀ a,  gL = −b Vᵀ;   gZ = P b.
        # Forming the dense gW = −(W⁻ᵀ gX) Xᵀ and mapping it through weight_backward is the same
        # in exact arithmetic, but for a near-singular Ũ its huge entries cancel in Lᵀ Pᵀ gW and
        # the factor gradients lose ~cond(W)·eps (measured: 4.7e-9 relative at log_s = −18).
        a = solve_triangular(upper, to_columns(gx), lower=False, trans=1)
        b = solve_triangular(lower, a, lower=True, unit_diagonal=True, trans=1)
        gzc = xp.take(b, xp.asarray(self.perm), axis=0)
        gupper_full = -(a @ cols.T)
        if v is None:  # a forward cache: X is the forward's input, exact, and Ũ X accurate
            v = upper @ cols
        gamma = -(positions(gx) * glogdet.sum())
        gparams = {
            "lower": xp.tril(-(b @ v.T), -1),
            "upper": xp.triu(gupper_full, 1),
            "log_scale": xp.diagonal(gupper_full) * s + gamma,
        }
        return from_columns(gzc, gx.shape), gparams
