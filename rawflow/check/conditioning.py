"""How a layer amplifies round-off: per-layer Jacobians, round-trip bounds, rebuilt-input bounds.

Also the small plumbing the checks share: :class:`Context` calls a layer in a given dtype and in the
layer's own array namespace and hands NumPy arrays back.
"""

from __future__ import annotations

import warnings

import numpy as np

from .. import tree
from .._array import to_numpy
from . import oracles
from .analysis import Analysis


class Context:
    """Calls the layer in a dtype and the layer's namespace, returning NumPy arrays."""

    def __init__(self, layer, name, backend, params64):
        self.layer, self.name, self.backend, self.params64 = layer, name, backend, params64

    def arr(self, a, dtype):
        return self.backend.asarray(np.asarray(a).astype(dtype))

    def params(self, dtype):
        return tree.map(lambda a: self.arr(a, dtype), self.params64)

    def call(self, method, u, dtype, params=None):
        run = {"forward": self.layer.forward, "inverse": self.layer.inverse}[method]
        out, logdet, cache = run(self.params(dtype) if params is None else params, self.arr(u, dtype))
        return to_numpy(out), to_numpy(logdet), cache

    def vjp(self, method, params, cache, g, gl, dtype):
        fn = {"forward": self.layer.backward, "inverse": self.layer.inverse_backward}[method]
        gu, gp = fn(params, cache, self.arr(g, dtype), self.arr(gl, dtype))
        return to_numpy(gu), tree.map(to_numpy, gp)


def count_layers(layer) -> int:
    # A chain's layers, or a multi-scale flow's levels; a conditional layer checked through its
    # joint rows (ContextAsInput) counts as the layer it wraps.
    from ..bijectors.conditional import ContextAsInput

    if isinstance(layer, ContextAsInput):
        return count_layers(layer.layer)
    subs = getattr(layer, "layers", None) or getattr(layer, "levels", None)
    if not subs:
        return 1
    return sum(count_layers(s) for s in subs)


class Conditioning:
    """How much the layer amplifies round-off, per sample, at the check point ``x`` (float64).

    With per-layer Jacobians ``J_k`` (a chain is walked down to its leaf layers; a single layer has
    ``K = 1``) at the points ``x_0 = x, x_1, ..., x_K = z`` and ``P_k = J_k···J_1``:

    * ``kappa``: ``Π_k cond₂(J_k)`` (reported in the records as the condition estimate);
    * ``forward_bound = Σ_{k=0..K} |P_k⁻¹|·|x_k|`` (element-wise): a rounding of ``≤ eps·|x_k|`` at
      level ``k`` (the forward's output of layer ``k``, the inverse's output of layer ``k+1``)
      reaches the round trip ``x → z → x`` through ``P_k⁻¹``, so
      ``|f⁻¹(f(x)) − x| ≤ ulps·eps·forward_bound`` with a few roundings (``ulps``) per level;
    * ``reverse_bound = Σ_k |J_K···J_{k+1}|·|x_k|``: the same for ``z → x → z``.

    Each level's rounding is charged at its term size rather than at ``|x_k|``: the forward of layer
    ``k`` rounds to ``eps·(|x_k| + |J_k|·|x_{k−1}|)``, its inverse to ``eps·(|x_{k−1}| + |J_k⁻¹|·|x_k|)``,
    each reaching the round trip through the same products. ``|x_k|`` alone under-counts a matrix
    product or solve with cancellation (issue 15: a Glow whose 1×1 convolution meets a point whose
    channels differ in size — the mixed-magnitude stress rows — exceeded it at 12 of 30 random
    points, its layers all accurate); elsewhere the added terms are of the size of ``|x_k|``.

    These are the componentwise (Skeel) forms of ``eps·cond(J)·max(|x|, |z|)``; they are sharp where
    the cond-number form is not (a coupling with tiny and huge scales has a huge ``cond`` but
    rebuilds each element to ``eps·|z_b|/s``). A user ``kappa`` replaces both by
    ``kappa·max(|x|∞, |z|∞)`` per sample.
    """

    def __init__(self, ctx: "Context", x: np.ndarray, kappa=None):
        n = x.shape[0]
        self.note = ""
        leaves = list(leaf_layers(ctx.layer, ctx.params64))
        z = ctx.call("forward", x, np.float64)[0]
        size = np.maximum(rowmax(x), rowmax(z))
        try:
            points, jacs = [x.reshape(n, -1)], []
            u = x
            for sub, p in leaves:
                jacs.append(_jacobians(sub, p, u, ctx.backend))
                u = to_numpy(sub.forward(tree.map(ctx.backend.asarray, p), ctx.backend.asarray(u))[0])
                points.append(u.reshape(n, -1))
            self.kappa = np.prod([np.maximum(1.0, np.linalg.cond(j)) for j in jacs], axis=0)
            invs = [np.linalg.inv(j) for j in jacs]
            # The term sizes of each layer's own evaluation: its forward rounds to eps·(|x_k| + |J_k|·|x_{k−1}|)
            # and its inverse to eps·(|x_{k−1}| + |J_k⁻¹|·|x_k|) — more than eps·|x_k| where a matrix product
            # or a solve cancels (a 1×1 convolution at a point whose channels differ in size).
            fwd_terms = [np.einsum("nij,nj->ni", np.abs(j), np.abs(points[k])) for k, j in enumerate(jacs)]
            inv_terms = [np.einsum("nij,nj->ni", np.abs(a), np.abs(points[k + 1])) for k, a in enumerate(invs)]
            self.forward_bound = np.abs(points[0]) + inv_terms[0]
            prod = None
            for k, j in enumerate(jacs, start=1):
                prod = j if prod is None else j @ prod
                back = np.abs(np.linalg.inv(prod))
                self.forward_bound += np.einsum("nij,nj->ni", back, np.abs(points[k]) + fwd_terms[k - 1])
                if k < len(jacs):
                    self.forward_bound += np.einsum("nij,nj->ni", back, inv_terms[k])
            self.reverse_bound = np.abs(points[-1]) + fwd_terms[-1]
            prod = None
            for k in range(len(jacs), 0, -1):
                prod = jacs[k - 1] if prod is None else prod @ jacs[k - 1]
                self.reverse_bound += np.einsum("nij,nj->ni", np.abs(prod), np.abs(points[k - 1]) + inv_terms[k - 1])
                if k > 1:
                    self.reverse_bound += np.einsum("nij,nj->ni", np.abs(prod), fwd_terms[k - 2])
        except (ValueError, np.linalg.LinAlgError) as exc:
            self.note = f"no per-layer Jacobians ({exc}); round-trip bound uses kappa = 1"
            self.kappa = np.ones(n)
            kappa = 1.0 if kappa is None else kappa
        self.user = kappa is not None and not self.note
        self.shapes = {"forward": x.shape, "inverse": z.shape}
        if kappa is not None:
            k = np.broadcast_to(np.asarray(kappa, dtype=np.float64), (n,)).copy()
            self.kappa = k
            self.forward_bound = np.repeat((k * size)[:, None], x[0].size, axis=1)
            self.reverse_bound = np.repeat((k * size)[:, None], z[0].size, axis=1)

    def bound(self, direction: str) -> np.ndarray:
        """Element-wise round-trip bound (in eps·ulps units) at the analysis point of ``direction``."""
        b = self.forward_bound if direction == "forward" else self.reverse_bound
        return b.reshape(self.shapes[direction])


def leaf_layers(layer, params):
    subs = getattr(layer, "layers", None)
    if not subs:
        yield layer, params
        return
    for i, sub in enumerate(subs):
        yield from leaf_layers(sub, params[str(i)])


def _jacobians(layer, params, x, backend) -> np.ndarray:
    """Per-sample forward Jacobians ``(N, D_out, D_in)`` by complex step, perturbing feature ``j`` of
    every sample at once; central differences for a layer that does not run in complex arithmetic."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", np.exceptions.ComplexWarning)
            return _cs_jacobians(layer, params, x, backend)
    except (TypeError, ValueError, np.exceptions.ComplexWarning):
        return _fd_jacobians(layer, params, x, backend)


def _cs_jacobians(layer, params, x, backend) -> np.ndarray:
    n = x.shape[0]
    flat = x.reshape(n, -1)
    pc = tree.map(lambda a: backend.asarray(np.asarray(a, dtype=np.complex128)), params)
    cols = []
    for j in range(flat.shape[1]):
        xc = flat.astype(np.complex128)
        xc[:, j] += 1j * oracles.COMPLEX_STEP
        out = to_numpy(layer.forward(pc, backend.asarray(xc.reshape(x.shape)))[0])
        if not np.iscomplexobj(out):
            raise TypeError("real output for complex input")
        cols.append(out.reshape(n, -1).imag / oracles.COMPLEX_STEP)
    return np.stack(cols, axis=-1)


def _fd_jacobians(layer, params, x, backend) -> np.ndarray:
    n = x.shape[0]
    flat = x.reshape(n, -1)
    pb = tree.map(backend.asarray, params)
    cols = []
    for j in range(flat.shape[1]):
        h = oracles.CENTRAL_STEP * np.maximum(1.0, np.abs(flat[:, j]))
        up, dn = flat.copy(), flat.copy()
        up[:, j] += h
        dn[:, j] -= h
        fu = to_numpy(layer.forward(pb, backend.asarray(up.reshape(x.shape)))[0]).reshape(n, -1)
        fd = to_numpy(layer.forward(pb, backend.asarray(dn.reshape(x.shape)))[0]).reshape(n, -1)
        cols.append((fu - fd) / (2 * h[:, None]))
    return np.stack(cols, axis=-1)


def rowmax(a: np.ndarray) -> np.ndarray:
    return np.abs(a.reshape(a.shape[0], -1)).max(axis=1)



class Rebuild:
    """Round-off a memory-lean (reconstructing) backward adds to the gradients.

    Such a backward evaluates each layer's VJP at inputs rebuilt by inverses (or, for
    ``inverse_backward``, by forwards); those sit within a round trip of the true ones,
    ``|δ| ≤ ulps·eps·bound`` element-wise (:class:`Conditioning`), so gradient entry ``q`` moves by
    ``≤ Σ_r |H_qr|·δ_r`` over the input columns. :meth:`atol` is that bound on every ``f`` entry
    (zero off the gradient rows, and zero for a layer that keeps its caches unless ``force``: a
    backward handed the other direction's cache sits at a rebuilt point too).
    """

    def __init__(self, an: Analysis, cond: "Conditioning", ulps, active: bool):
        self.an, self.cond, self.ulps, self.active = an, cond, ulps, active

    @property
    def kappa_max(self) -> float:
        return float(np.max(self.cond.kappa))

    def atol(self, eps: float, force: bool = False) -> np.ndarray:
        an = self.an
        out = np.zeros(an.M)
        if not (self.active or force):
            return out
        delta = self.ulps * eps * self.cond.bound(an.probe.direction).reshape(-1)
        for prefix in ("grad:", "gradld:") + (("gradout:",) if an.probe.output_only else ()):
            rows = an.grad_rows(prefix)
            out[rows] = np.abs(an.J[rows][:, an.cols("input")]) @ delta
        return out
