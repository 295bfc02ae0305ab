"""Derivatives of one direction of a layer at one point, by every oracle, plus term sizes.

:class:`Analysis` evaluates the :class:`~rawflow.check.probe.Probe` function ``f`` at ``w0`` and
builds, column by column (one column per element of the input and of every parameter):

* ``J``: the primary oracle's ``∂f/∂w`` (complex step unless the layer is not complex-safe, then
  Richardson) — Jacobian rows (``out``, ``logdet``) and Hessian rows (``grad:*``, ``gradld:*``);
* ``fd``: Richardson and central-difference columns on a subset of columns, with the mask of
  elements where ``f`` is not smooth over the difference step (a ReLU kink inside it);
* ``T``: the **term size** of every entry of ``f``,

  ``T_m = |f_m| + Σ_r |∂f_m/∂w_r|·|w_r| + Σ_k |∂f_m/∂c_k|·|c_k|``,

  the first-order change of ``f_m`` when every input, parameter and cotangent ``c = (g, gℓ)`` moves
  by its own relative amount (a parameter by at least an absolute one, see
  :meth:`Analysis.perturbation_scale`). It is Skeel's componentwise condition number times ``|f_m|``; for a
  sum of products ``Σ a_i b_i`` it is exactly ``Σ |a_i b_i|`` (times 2), i.e. the size of the terms,
  and since rounding an intermediate is a relative perturbation of the inputs it came from, a
  backward-stable evaluation has error ``≤ γ·eps·T_m`` with ``γ`` a small multiple of the depth of
  the computation. Every round-off budget in the suite is ``c·eps·T``. The cotangent term is the
  VJP's own sum ``Σ |c_k|·|J_kr|`` (a gradient is linear in ``c``), zero for ``out``/``logdet``.
  The log-det adds the size of its summands (:meth:`Analysis._logdet_summands`).
"""

from __future__ import annotations

import warnings

import numpy as np

from . import oracles
from .probe import Probe

EPS64 = oracles.EPS64


class Analysis:
    """``differences=False`` builds only ``J`` and ``T`` by the complex step (no difference oracles,
    no noise measurement): what :mod:`rawflow.check.precise` needs for its conditioning bounds."""

    def __init__(self, probe: Probe, *, oracle: str = "auto", fd_columns: int | None = 64, rng=None,
                 differences: bool = True):
        self.probe = probe
        self.lin = probe.in_layout
        self.lout = probe.out_layout
        self.w0 = probe.w0
        self.f0 = probe(self.w0)
        self.R = self.w0.size
        self.M = self.f0.size
        self.notes: list[str] = []
        rng = rng if rng is not None else np.random.default_rng(0)

        self.oracle = self._choose_oracle(oracle)
        self.cotangent = np.concatenate([probe.g.reshape(-1), probe.glogdet.reshape(-1)])
        self.cotangent_ld = np.concatenate([np.zeros(probe.g.size), probe.glogdet.reshape(-1)])

        all_cols = np.arange(self.R)
        if self.oracle == "complex-step":
            self.J = oracles.columns(probe, self.w0, all_cols, "complex-step")
            self.T = self._term_sizes(self.J)
            if not differences:
                self.fd_cols = all_cols[:0]
                return
            # Every input column (the Jacobians for slogdet), and up to fd_columns parameter columns.
            n_in = self.cols("input").stop
            if fd_columns is None or self.R <= n_in + fd_columns:
                self.fd_cols = all_cols
            else:
                chosen = rng.choice(np.arange(n_in, self.R), size=fd_columns, replace=False)
                self.fd_cols = np.concatenate([np.arange(n_in), np.sort(chosen)])
                self.notes.append(
                    f"difference oracles on all {n_in} input and {fd_columns} of {self.R - n_in} parameter columns"
                )
            self.noise = self._measure_noise(rng)
            rich = oracles.columns(probe, self.w0, self.fd_cols, "richardson", noise=self.T + self.noise / EPS64)
        else:
            # No complex step: Richardson is the primary oracle on every column; term sizes from it.
            self.fd_cols = all_cols
            rich = oracles.columns(probe, self.w0, all_cols, "richardson", noise=np.abs(self.f0))
            self.J = rich.estimate
            self.T = self._term_sizes(self.J)
            self.noise = self._measure_noise(rng)
        cen = oracles.columns(probe, self.w0, self.fd_cols, "central")
        h_c = oracles.steps(self.w0, "central")[self.fd_cols]
        self.fd = {"richardson": rich.estimate, "central": cen}
        #: truncation estimates of the difference oracles, from Richardson's own levels
        self.fd_truncation = {
            "richardson": rich.error,
            "central": oracles.central_truncation(rich.curvature, rich.h[None, :], h_c[None, :]),
        }
        self.nonsmooth = rich.nonsmooth
        if self.oracle == "complex-step":
            floor = 64 * EPS64 * self.block_scale(self.J, self.fd_cols).max(axis=1)
            self.nonsmooth = self.nonsmooth | oracles.columns(probe, self.w0, self.fd_cols, "kinks", floor=floor)

    # ------------------------------------------------------------------ setup
    def _choose_oracle(self, oracle: str) -> str:
        if oracle in ("complex-step", "richardson"):
            return oracle
        if oracle != "auto":
            raise ValueError(f"oracle must be 'auto', 'complex-step' or 'richardson', got {oracle!r}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", np.exceptions.ComplexWarning)
                parts = self.probe.evaluate(self.w0 + 0j)
        except Exception as exc:  # noqa: BLE001 - any failure means the layer cannot run in complex
            self.notes.append(f"layer does not run in complex128 ({type(exc).__name__}: {exc}); Richardson is the oracle")
            return "richardson"
        real = [k for k, v in parts.items() if not np.iscomplexobj(v)]
        if real:
            self.notes.append(f"layer returns real arrays for complex input ({', '.join(real[:3])}); Richardson is the oracle")
            return "richardson"
        return "complex-step"

    def _measure_noise(self, rng, samples: int = 3) -> np.ndarray:
        """Measured round-off noise of each entry of ``f``: ``max |f(w0 + d) − f(w0) − J·d|``.

        ``d`` is a random relative perturbation of size 1e-9, so the second-order term (~1e-18·|H|)
        is negligible and what is left is the non-smooth part of the computed ``f``: its rounding.
        That is ``~eps·T`` for a backward-stable evaluation, larger where the evaluation amplifies
        round-off (a reconstructing chain rebuilds inputs through inverses: ``~eps·κ·T``). The
        difference oracles divide this by their step, so their floors use it.
        """
        worst = np.zeros(self.M)
        for _ in range(samples):
            d = rng.uniform(-1.0, 1.0, self.R) * 1e-9 * np.maximum(1.0, np.abs(self.w0))
            resid = np.abs(self.probe(self.w0 + d) - self.f0 - self.J @ d)
            worst = np.maximum(worst, resid)
        return worst

    def _term_sizes(self, J: np.ndarray) -> np.ndarray:
        T = np.abs(self.f0) + np.abs(J) @ self.perturbation_scale()
        T[self.rows("logdet")] += self._logdet_summands(J)
        first = self.first_order_rows()
        pairs = [("grad:", self.cotangent), ("gradld:", self.cotangent_ld)]
        if self.probe.output_only:
            pairs.append(("gradout:", self.cotangent - self.cotangent_ld))
        for prefix, c in pairs:
            tau = np.abs(c) @ np.abs(J[first])  # (R,)
            T[self.grad_rows(prefix)] += tau
        return T

    def perturbation_scale(self) -> np.ndarray:
        """How far each element of ``w`` moves under one rounding: ``|x|`` for the input, ``max(|θ|, 1)``
        for a parameter — parameters are often log-scales entering through ``exp``, whose rounding
        (``eps·|s|``) is an *absolute* ``eps`` on ``θ = log|s|`` however small ``|θ|`` is."""
        scale = np.abs(self.w0).copy()
        inp = self.cols("input")
        scale[inp.stop:] = np.maximum(scale[inp.stop:], 1.0)
        return scale

    def _logdet_summands(self, J: np.ndarray) -> np.ndarray:
        """Size of the per-direction log-scales a log-det sums: ``max(Σ|log σ_i|, Σ|log|J_ii||)``.

        A log-det is a sum of ``D`` log-scales (``Σ log s`` of a coupling, ``H·W·Σ log|s|`` of an LU
        conv). Each is rounded relative to its own size, which the sensitivity part of ``T`` misses
        when the log-scales saturate (``±c·tanh`` near ``±c`` sums to almost nothing, yet each carries
        ``eps·c``). The singular values of the sample's Jacobian give those sizes for any layer; its
        diagonal gives them exactly for a triangular one.
        """
        n = self.probe.n_samples
        jx = J[self.rows("out"), self.cols("input")]
        d_out, d_in = jx.shape[0] // n, jx.shape[1] // n
        if d_out != d_in or d_in == 0:
            return np.zeros(n)
        jac = np.stack([jx[i * d_out:(i + 1) * d_out, i * d_in:(i + 1) * d_in] for i in range(n)])
        with np.errstate(divide="ignore"):
            sv = np.abs(np.log(np.linalg.svd(jac, compute_uv=False))).sum(axis=1)
            diag = np.abs(np.log(np.abs(np.diagonal(jac, axis1=1, axis2=2)))).sum(axis=1)
        out = np.maximum(sv, np.where(np.isfinite(diag), diag, 0.0))
        return np.where(np.isfinite(out), out, 0.0)

    # ------------------------------------------------------------------ index helpers
    def rows(self, name: str) -> slice:
        return self.lout.slices[name]

    def cols(self, name: str) -> slice:
        return self.lin.slices[name]

    def first_order_rows(self) -> np.ndarray:
        return np.r_[self.rows("out"), self.rows("logdet")]

    def grad_rows(self, prefix: str) -> np.ndarray:
        return np.r_[tuple(self.rows(prefix + name) for name in self.lin.names)]

    def hessian(self, prefix: str = "grad:") -> np.ndarray:
        """``(R, R)``: rows ``∂(grad)_q``, columns ``w_r`` (the Hessian of ``L`` or of ``Lℓ``)."""
        return self.J[self.grad_rows(prefix)]

    def expected_gradient(self, ld_only: bool = False) -> np.ndarray:
        c = self.cotangent_ld if ld_only else self.cotangent
        return c @ self.J[self.first_order_rows()]

    def per_sample_jacobians(self, columns: np.ndarray | None = None) -> np.ndarray:
        """``(N, D_out, D_in)`` blocks of each sample's output w.r.t. its own input.

        ``columns``: an ``(M, ·)`` array whose first columns are the input columns (``J`` by
        default; the difference oracles' arrays, whose ``fd_cols`` start with every input column).
        """
        a = self.J if columns is None else columns
        n = self.probe.n_samples
        jx = a[self.rows("out"), : self.cols("input").stop]
        d_out, d_in = jx.shape[0] // n, jx.shape[1] // n
        return np.stack([jx[i * d_out : (i + 1) * d_out, i * d_in : (i + 1) * d_in] for i in range(n)])

    def directional(self, v: np.ndarray, method: str, h: float | None = None):
        """``Df(w0)·v`` by one oracle (for Richardson the full :class:`~rawflow.check.oracles.Richardson`)."""
        if method == "complex-step":
            return oracles.complex_step(self.probe, self.w0, v)
        if method == "central":
            return oracles.central_difference(self.probe, self.w0, v, h or oracles.CENTRAL_STEP)
        return oracles.richardson(self.probe, self.w0, v, h or oracles.RICHARDSON_STEP, noise=self.T)

    def fd_noise(self, method: str) -> np.ndarray:
        """Error floor ``(M, |fd_cols|)`` of a difference oracle's columns: round-off + truncation.

        Round-off ``c·(eps·T_m + noise_m) / h_r`` (``noise`` measured, see :meth:`_measure_noise`):
        a central difference divides two evaluations' rounding (each ``≤ eps·T + noise``) by ``2h``; the Richardson combination ``(4·D(h/2) − D(h))/3`` weighs them by
        ``(8/h + 1/h)/3``; the factors 4 and 16 are those counts doubled. Truncation: the estimates
        in :attr:`fd_truncation` (from Richardson's ``h, h/2, h/4`` levels).
        """
        h = oracles.steps(self.w0, method)[self.fd_cols]
        factor = {"central": 4.0, "richardson": 16.0}[method]
        roundoff = EPS64 * self.T + self.noise
        return factor * roundoff[:, None] / h[None, :] + self.fd_truncation[method]

    def block_scale(self, J: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``max |J|`` over each (output segment, input segment) block, broadcast to ``J[:, cols]``'s shape."""
        out = np.zeros((self.M, cols.size))
        for oname in self.lout.names:
            rs = self.rows(oname)
            for iname in self.lin.names:
                cs = self.cols(iname)
                sel = (cols >= cs.start) & (cols < cs.stop)
                if not sel.any():
                    continue
                block = np.abs(J[rs][:, cols[sel]])
                out[rs, np.flatnonzero(sel)] = block.max(initial=0.0)
        return out
