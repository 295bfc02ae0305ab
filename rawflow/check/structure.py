"""Checks that need no derivative oracle: round trips, log-det cancellation, structural properties.

See the table in :mod:`rawflow.check.suite` for what each checks and the bars.
"""

from __future__ import annotations

import numpy as np

from .. import tree
from .._array import to_numpy
from .analysis import Analysis
from .conditioning import Conditioning, Context, Rebuild
from .records import Record, compare, verdict


def roundtrip(ctx: Context, x_pt, dt, cond: Conditioning, ulps, name) -> list[Record]:
    eps = float(np.finfo(dt).eps)
    x = x_pt.astype(dt)
    z, _, _ = ctx.call("forward", x, dt)
    x_back, _, _ = ctx.call("inverse", z, dt)
    z_rev = z[::-1].copy()
    x2, _, _ = ctx.call("inverse", z_rev, dt)
    z2, _, _ = ctx.call("forward", x2, dt)
    records = []
    how = ("κ·max(|x|∞,|z|∞) (user κ)" if cond.user else
           "Σ_k |P_k⁻¹|·|x_k| (x→z→x) / Σ_k |J_K..J_k+1|·|x_k| (z→x→z), element-wise")
    for label, actual, expected, bound in (
        ("x -> z -> x", x_back, x, cond.bound("forward")),
        ("z -> x -> z", z2, z_rev, cond.bound("inverse")[::-1]),
    ):
        rec = compare(actual.astype(np.float64), expected.astype(np.float64), rtol=ulps * eps,
                      scale=np.maximum(bound, np.finfo(dt).tiny), dtype=dt.name, layer=name, direction="both",
                      check="roundtrip", quantity=label, oracle="identity", step=None,
                      scale_note=how + "; bar = ulps·eps")
        rec.kappa = float(np.max(cond.kappa))
        rec.note = f"bound {ulps:g} ulp of the conditioning-weighted size"
        records.append(rec)
    return records


def _logdet_terms(layer, params, x, ctx: Context, dt) -> np.ndarray:
    """Σ_k |ℓ_k| over a chain's layers (|ℓ| for a single layer), at the chain's input ``x``."""
    subs = getattr(layer, "layers", None)
    if not subs:
        return np.abs(to_numpy(layer.forward(params, x)[1]).astype(np.float64))
    total = 0
    for i, sub in enumerate(subs):
        total = total + _logdet_terms(sub, params[str(i)], x, ctx, dt)
        x = sub.forward(params[str(i)], x)[0]
    return total


def logdet_cancel(ctx: Context, x_pt, dt, exact, n_layers, name) -> list[Record]:
    x = x_pt.astype(dt)
    z, ld, _ = ctx.call("forward", x, dt)
    _, ld_inv, _ = ctx.call("inverse", z, dt)
    total = (ld.astype(np.float64) + ld_inv.astype(np.float64))
    fields = dict(layer=name, direction="both", check="logdet-cancel", quantity="logdet + logdet_inv",
                  oracle="exact" if exact else "round-off", step=None)
    if exact:
        worst = float(np.max(np.abs(total), initial=0.0))
        return [verdict(worst == 0, dtype=dt.name, max_abs_err=worst, n=int(total.size),
                        note="" if worst == 0 else "forward and inverse log-dets do not cancel exactly", **fields)]
    terms = _logdet_terms(ctx.layer, ctx.params(dt), ctx.arr(x, dt), ctx, dt)
    eps = float(np.finfo(dt).eps)
    rec = compare(total, np.zeros_like(total), rtol=64 * n_layers * eps, scale=1 + terms, dtype=dt.name,
                  scale_note="1 + Σ|ℓ_k|", **fields)
    rec.note = "chain: per-layer log-dets cancel exactly at matching points, the sums to round-off"
    return [rec]


class _Point:
    """One direction of the layer at the analysis point, in dtype ``dt``, with its VJP."""

    def __init__(self, ctx: Context, an: Analysis, dt):
        self.ctx, self.an, self.dt = ctx, an, dt
        self.direction = an.probe.direction
        self.eps = float(np.finfo(dt).eps)
        self.u = an.lin.unpack(an.w0)["input"].astype(dt)
        self.params = ctx.params(dt)
        self.g = an.probe.g.astype(dt)
        self.gl = an.probe.glogdet.astype(dt)
        self.out, self.ld, self.cache = self.run(self.u)
        self.gu, self.gp = self.vjp(self.cache, self.g, self.gl)

    def run(self, u):
        return self.ctx.call(self.direction, u, self.dt, self.params)

    def vjp(self, cache, g, gl):
        return self.ctx.vjp(self.direction, self.params, cache, g.astype(self.dt), gl.astype(self.dt), self.dt)

    def T(self, segment: str, shape) -> np.ndarray:
        return self.an.T[self.an.rows(segment)].reshape(shape)


def structure(ctx: Context, an: Analysis, dt, rebuild: Rebuild, base) -> list[Record]:
    """Every oracle-free check of one direction in one dtype."""
    pt = _Point(ctx, an, dt)
    fields = dict(base, dtype=dt.name, check="structure", oracle="-", step=None)
    return (_contract(pt, fields) + _linearity(pt, fields) + _batch(pt, fields, rebuild)
            + _other_cache(pt, fields, rebuild))


def _contract(pt: _Point, fields) -> list[Record]:
    """gparams structure, dtypes kept, zero cotangent → exactly zero, repeated runs bitwise equal."""
    records = []
    want = tree.structure(tree.map(to_numpy, pt.params))
    same = tree.structure(pt.gp) == want
    records.append(verdict(same, quantity="gparams structure",
                           note="" if same else f"gparams {tree.structure(pt.gp)} vs params {want}", **fields))
    arrays = [("output", pt.out), ("logdet", pt.ld)] + _grad_items((pt.gu, pt.gp))
    wrong = [k for k, a in arrays if a.dtype != pt.dt]
    records.append(verdict(not wrong, quantity="dtype preserved",
                           note=f"not {pt.dt.name}: {wrong}" if wrong else "", **fields))
    zero = pt.vjp(pt.cache, np.zeros_like(pt.g), np.zeros_like(pt.gl))
    nonzero = [k for k, a in _grad_items(zero) if np.any(a != 0)]
    records.append(verdict(not nonzero, quantity="zero cotangent -> zero gradient",
                           note=f"nonzero: {nonzero}" if nonzero else "", **fields))
    out2, ld2, cache2 = pt.run(pt.u)
    again = [("output", out2), ("logdet", ld2)] + _grad_items(pt.vjp(cache2, pt.g, pt.gl))
    differ = [k for (k, a), (_, b) in zip(arrays, again) if not np.array_equal(a, b, equal_nan=True)]
    records.append(verdict(not differ, quantity="repeated runs bitwise identical",
                           note=f"differ: {differ}" if differ else "", **fields))
    return records


def _linearity(pt: _Point, fields) -> list[Record]:
    """``vjp(a·g, b·gℓ) = a·vjp(g, 0) + b·vjp(0, gℓ)``.

    Splitting the analysis cotangent keeps the term sizes known: ``T`` of ``vjp(g, gℓ)`` and of
    ``vjp(0, gℓ)``, whose sum bounds that of ``vjp(g, 0)``; each of the three VJPs errs by ``≤ c·eps·T``.
    """
    a, b = 0.75, -1.5
    v1 = pt.vjp(pt.cache, pt.g, np.zeros_like(pt.gl))
    v2 = pt.vjp(pt.cache, np.zeros_like(pt.g), pt.gl)
    v12 = pt.vjp(pt.cache, a * pt.g, b * pt.gl)
    records = []
    for (k, x12), (_, x1), (_, x2) in zip(_grad_items(v12), _grad_items(v1), _grad_items(v2)):
        x1, x2, x12 = (q.astype(np.float64) for q in (x1, x2, x12))
        size = pt.T("grad:" + k, x12.shape) + pt.T("gradld:" + k, x12.shape)
        records.append(compare(x12, a * x1 + b * x2, rtol=32 * pt.eps * (abs(a) + abs(b)), scale=size,
                               **dict(fields, quantity=f"VJP linear in cotangent: {k}",
                                      oracle="a·vjp(g,0) + b·vjp(0,gℓ)"),
                               scale_note="T of vjp(g,gℓ) + T of vjp(0,gℓ)"))
    return records


def _batch(pt: _Point, fields, rebuild: Rebuild) -> list[Record]:
    """A batch equals its samples stacked; parameter gradients equal the per-sample ones summed.

    BLAS may sum a single row in another order than a batch: ``8·eps·T``. A reconstructing layer
    rebuilds its inputs in both runs: twice the rebuild bound on the gradients.
    """
    extra = 2 * rebuild.atol(pt.eps)
    outs, lds, gus, gps = [], [], [], []
    for i in range(pt.u.shape[0]):
        o_i, l_i, c_i = pt.run(pt.u[i:i + 1])
        gu_i, gp_i = pt.vjp(c_i, pt.g[i:i + 1], pt.gl[i:i + 1])
        outs.append(o_i)
        lds.append(l_i)
        gus.append(gu_i)
        gps.append(gp_i)
    an = pt.an
    pairs = [("output", np.concatenate(outs), pt.out, "out", 0.0),
             ("logdet", np.concatenate(lds), pt.ld, "logdet", 0.0),
             ("input gradient", np.concatenate(gus), pt.gu, "grad:input", extra[an.rows("grad:input")])]
    for p, leaf in tree.leaves(pt.gp):
        summed = np.sum([tree.get(gi, p).astype(np.float64) for gi in gps], axis=0)
        pairs.append((f"Σ samples {p}", summed, leaf, "grad:" + p, extra[an.rows("grad:" + p)]))
    records = []
    for q, stacked, batch, segment, at in pairs:
        at = np.reshape(at, batch.shape) if np.ndim(at) else at
        records.append(compare(stacked, batch, rtol=8 * pt.eps, scale=pt.T(segment, batch.shape), atol=at,
                               **dict(fields, check="batch", quantity=q, oracle="batch"),
                               scale_note="term size T"))
    return records


def _other_cache(pt: _Point, fields, rebuild: Rebuild) -> list[Record]:
    """Backward given the other direction's cache, rebuilt from this direction's output.

    That cache sits at ``u' = u + δ`` within a round trip: the rebuild bound (plus, for a
    reconstructing layer, its own rebuilds on both sides) and the gradient's own rounding.
    """
    other = "inverse" if pt.direction == "forward" else "forward"
    _, _, cache_other = pt.ctx.call(other, pt.out, pt.dt, pt.params)
    got = pt.vjp(cache_other, pt.g, pt.gl)
    at_all = rebuild.atol(pt.eps, force=True) + 2 * rebuild.atol(pt.eps)
    records = []
    for (k, actual), (_, expected) in zip(_grad_items(got), _grad_items((pt.gu, pt.gp))):
        rows = pt.an.rows("grad:" + k)
        records.append(compare(actual, expected, rtol=16 * pt.eps, scale=pt.T("grad:" + k, expected.shape),
                               atol=at_all[rows].reshape(expected.shape),
                               **dict(fields, check="cache", quantity=f"{other} cache -> {k}",
                                      oracle=f"{pt.direction} cache"),
                               scale_note="16·eps·T + |H|·|round-trip shift|"))
    return records


def _grad_items(v):
    gu, gp = v
    return [("input", gu)] + list(tree.leaves(gp))
