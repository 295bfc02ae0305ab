"""A high-precision oracle: a layer's own reference code evaluated at 50+ significant digits.

::

    from rawflow.check.precise import check_precise
    report = check_precise(layer, params, x)        # float64 and float32 vs 60 digits, both directions
    assert report, report.failure_report()

**How.** Inputs, parameters and cotangents (float64, so exactly representable) become NumPy object
arrays of mpmath numbers, and the layer's own unchecked methods (``_forward``, ``_inverse``,
``_backward``, ``_inverse_backward``; the public ones for a layer without them) run on them:
:func:`rawflow._array.namespace` gives such arrays the :class:`~rawflow._array.ObjectNumPy`
namespace (NumPy for structure, mpmath for ``exp``, ``log1p``, ``tanh``, ``slogdet``, the
triangular solves, ...). The maths exists once; there is no second copy to drift. Constants the
code rounds to float64 (``α``, ``log(1 − 2α)``, ``log 2π/2``) are part of the function being
evaluated, for the oracle and the float code alike. What is evaluated is exactly what
:class:`~rawflow.check.probe.Probe` evaluates: ``out``, ``logdet``, the VJP of
``L = Σ g·out + Σ gℓ·logdet`` for the input and every parameter leaf (``grad:*``), of
``Lℓ = Σ gℓ·logdet`` (``gradld:*``) and of ``Σ g·out`` (``gradout:*``; a term only the output
cotangent carries can hide under the log-det's in ``grad:*``, as ``p·q·gx`` did in ``Logit``).

**Why.** The float64 complex step inherits the conditioning of the point: at ``cond(W) = 1e12`` its
columns are good to ~1e-4 relative, plenty for a bound but not for an expected value. The 60-digit
evaluation is good to ``~1e-60·cond``.

**Trusting the oracle.**

* *precision*: every point is also evaluated at ``dps + 20`` digits; the change must be below
  ``1e-6·eps·T`` (``precise-oracle`` records);
* *maths*: the hand-written VJP, evaluated at ``dps`` digits, against a central difference of the
  objective ``L`` (and ``Lℓ``) along one random direction per segment (input and each parameter
  leaf), evaluated at ``dps + 20`` digits with a relative step of ``10^(−dps/2)``: truncation
  ``~(10^(−dps/2)·κ)²`` and rounding ``~10^(−dps/2 − 20)``. This is independent of the backward
  code; a wrong VJP formula is an O(1) discrepancy (``precise-maths`` records, bar ``10^(−dps/3)``).

**Bounds.** Each result ``f_m`` (float64 or float32) is judged against the oracle by
``|f_m − exact_m| ≤ C·eps·T_m`` with ``T_m`` the term size of :mod:`rawflow.check.analysis` (the
first-order change of ``f_m`` when every input, parameter and cotangent moves by its own relative
rounding: Skeel's componentwise condition number times ``|f_m|``, ``Σ|terms|`` for a sum of
products, ``≈ cond(W)·|x|`` for a solve), from complex-step columns of the float64 reference.
A backward-stable evaluation errs by a few ``eps·T`` at that point (rounding the inputs alone
moves ``f_m`` that far); every record carries ``eps·T`` (``bound``, at the worst element) beside the error, so a defect (error ≫ bound) is told
apart from an ill-posed point (bound large). ``C`` is :data:`C_PRECISE`. A reconstructing chain
evaluates its VJPs at rebuilt points and adds ``|H|·δ`` (:class:`~rawflow.check.conditioning.Rebuild`).

Needs mpmath (``pip install 'rawflow[precise]'``).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .. import tree
from .._array import to_numpy
from .analysis import Analysis
from .conditioning import Conditioning, Context, Rebuild, count_layers
from .probe import Layout, Probe
from .records import Record, Report, compare, verdict

EPS64 = float(np.finfo(np.float64).eps)
#: default working precision (significant decimal digits)
DPS = 60
#: extra digits of the second evaluation that bounds the oracle's own error
EXTRA_DPS = 20
#: the bar: ``|f − exact| ≤ C_PRECISE·eps·T`` (a handful of roundings per term, as the float32 checks)
C_PRECISE = 16
#: at most this many segments (input + parameter leaves) get a difference direction each
MAX_SEGMENT_DIRECTIONS = 8
#: the oracle's own error (``dps`` vs ``dps + 20`` digits) must stay below this many ``eps64·T``
ORACLE_BAR = 1e-6
#: round trips: ulps of the conditioning-weighted size (4 in float64, 8 in float32, as in check_bijector)
ROUNDTRIP_ULPS = {"float64": 4, "float32": 8}


def _mpmath():
    try:
        import mpmath
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("rawflow.check.precise needs mpmath: pip install 'rawflow[precise]'") from exc
    return mpmath


def to_mp(a) -> np.ndarray:
    """A float array (NumPy or CuPy) as an object array of mpmath numbers, converted exactly."""
    mpmath = _mpmath()
    a = np.asarray(to_numpy(a))
    if a.dtype.kind == "O":
        return a
    a = a.astype(np.float64)
    with np.errstate(invalid="ignore"):  # NaN converts to mpmath's nan, as it should
        return np.frompyfunc(mpmath.mpf, 1, 1)(a).astype(object).reshape(a.shape)


def to_float(a, dtype=np.float64) -> np.ndarray:
    """An object array of mpmath numbers rounded to ``dtype`` (float64: correctly rounded)."""
    out = np.frompyfunc(float, 1, 1)(np.asarray(a, dtype=object)).astype(np.float64)
    return out.astype(dtype)


def _methods(layer, direction: str) -> tuple[Callable, Callable]:
    """The unchecked ``(run, vjp)`` of a direction (object arrays do not pass input validation)."""
    names = ("_forward", "_backward") if direction == "forward" else ("_inverse", "_inverse_backward")
    public = ("forward", "backward") if direction == "forward" else ("inverse", "inverse_backward")
    return tuple(getattr(layer, n, None) or getattr(layer, p) for n, p in zip(names, public))


class PreciseProbe:
    """``layer`` in one ``direction`` at ``(u, params)`` with cotangents ``(g, gℓ)``, in mpmath.

    :meth:`evaluate` returns the same dict as :meth:`Probe.evaluate` with ``output_only=True``
    (``out``, ``logdet``, ``grad:<segment>``, ``gradld:<segment>``, ``gradout:<segment>``) as
    object arrays of mpmath numbers.
    """

    def __init__(self, layer, params: dict, u, g, glogdet, direction: str, *, dps: int = DPS):
        if direction not in ("forward", "inverse"):
            raise ValueError(f"direction must be 'forward' or 'inverse', got {direction!r}")
        self.mpmath = _mpmath()
        self.layer, self.direction, self.dps = layer, direction, int(dps)
        self.run, self.vjp = _methods(layer, direction)
        self.template = params
        self.paths = [path for path, _ in tree.leaves(params)]
        leaves = {path: np.asarray(to_numpy(leaf), dtype=np.float64) for path, leaf in tree.leaves(params)}
        u = np.asarray(to_numpy(u), dtype=np.float64)
        self.layout = Layout([("input", u.shape)] + [(p, leaves[p].shape) for p in self.paths])
        self.w0 = self.layout.pack({"input": u, **leaves})
        self.g = np.asarray(to_numpy(g), dtype=np.float64)
        self.glogdet = np.asarray(to_numpy(glogdet), dtype=np.float64)

    def _split(self, w):
        parts = self.layout.unpack(np.asarray(w, dtype=object))
        u = parts.pop("input")
        return u, tree.rebuild(self.template, parts)

    def forward_only(self, w, dps: int | None = None):
        """``(out, logdet)`` at ``w`` (object arrays), evaluated at ``dps`` digits."""
        with self.mpmath.workdps(dps or self.dps):
            u, params = self._split(to_mp(w) if np.asarray(w).dtype.kind != "O" else w)
            out, logdet, _ = self.run(params, u)
        return out, logdet

    def evaluate(self, w=None, dps: int | None = None) -> dict:
        """Every output at ``w`` (default: the point) as object arrays, at ``dps`` digits."""
        w = self.w0 if w is None else w
        with self.mpmath.workdps(dps or self.dps):
            u, params = self._split(to_mp(w))
            out, logdet, cache = self.run(params, u)
            g, gl = to_mp(self.g), to_mp(self.glogdet)
            gu, gp = self.vjp(params, cache, g, gl)
            gu0, gp0 = self.vjp(params, cache, g * 0, gl)
            parts = {"out": np.asarray(out, dtype=object), "logdet": np.asarray(logdet, dtype=object),
                     "grad:input": np.asarray(gu, dtype=object), "gradld:input": np.asarray(gu0, dtype=object)}
            gp, gp0 = dict(tree.leaves(gp)), dict(tree.leaves(gp0))
            if sorted(gp) != sorted(self.paths) or sorted(gp0) != sorted(self.paths):
                raise ValueError(f"gparams leaves {sorted(gp)} differ from params leaves {sorted(self.paths)}")
            for p in self.paths:
                parts[f"grad:{p}"] = np.asarray(gp[p], dtype=object)
                parts[f"gradld:{p}"] = np.asarray(gp0[p], dtype=object)
            gu1, gp1 = self.vjp(params, cache, g, gl * 0)
            parts["gradout:input"] = np.asarray(gu1, dtype=object)
            parts.update({f"gradout:{p}": np.asarray(a, dtype=object) for p, a in tree.leaves(gp1)})
        return parts

    def objectives(self, w, dps: int | None = None):
        """``(L, Lℓ)`` at ``w``: ``Σ g·out + Σ gℓ·logdet`` and ``Σ gℓ·logdet``."""
        out, logdet = self.forward_only(w, dps)
        with self.mpmath.workdps(dps or self.dps):
            ld = (to_mp(self.glogdet) * np.asarray(logdet, dtype=object)).sum()
            return (to_mp(self.g) * np.asarray(out, dtype=object)).sum() + ld, ld

    def gradient_discrepancy(self, parts: dict, rng: np.random.Generator) -> dict:
        """Per segment, ``|⟨VJP, d⟩ − (L(w + d) − L(w − d))/2| / Σ|VJP·d|`` for ``L``, ``Lℓ`` and
        ``Σ g·out`` (one direction over every segment at once, keyed ``all``, when there are more
        than :data:`MAX_SEGMENT_DIRECTIONS` segments: a wrong leaf then shows in proportion to its
        share of the terms, still far above the bar unless that share is below ``10^(−dps/3)``).

        ``d`` is a random direction on the segment with relative size ``10^(−dps/2)``, the
        differences are taken at ``dps + 20`` digits: truncation ``~(10^(−dps/2)·κ)²`` (``κ`` the
        point's conditioning, which scales the third derivative), rounding ``~10^(−dps/2 − 20)``.
        Tiny values mean the VJP is the derivative of the forward; O(1) means its formula is wrong.
        """
        mpmath = self.mpmath
        high = self.dps + EXTRA_DPS
        out = {}
        with mpmath.workdps(high):
            w = to_mp(self.w0)
            step = mpmath.mpf(10) ** (-(self.dps // 2))
            segments = [n for n in self.layout.names if self.layout.slices[n].stop > self.layout.slices[n].start]
            groups = [[n] for n in segments] if len(segments) <= MAX_SEGMENT_DIRECTIONS else [segments]
            for group in groups:
                v = np.zeros(self.w0.size)
                for n in group:
                    sl = self.layout.slices[n]
                    v[sl] = rng.normal(size=sl.stop - sl.start)
                seg = group[0] if len(group) == 1 else "all"
                # relative to each element (inputs: to itself, so points near a domain's edge stay
                # inside it; parameters: to max(1, |θ|), as the complex-step columns)
                scale = np.maximum(1.0, np.abs(self.w0))
                inp = self.layout.slices["input"]
                scale[inp] = np.where(self.w0[inp] != 0, np.abs(self.w0[inp]), 1.0)
                d = to_mp(v * scale) * step
                lp, lpl = self.objectives(w + d, high)
                lm, lml = self.objectives(w - d, high)
                fds = (("grad", (lp - lm) / 2), ("gradld", (lpl - lml) / 2),
                       ("gradout", ((lp - lpl) - (lm - lml)) / 2))
                for kind, fd in fds:
                    vjp = np.concatenate([parts[f"{kind}:{n}"].reshape(-1) for n in group])
                    terms = vjp * np.concatenate([d[self.layout.slices[n]] for n in group])
                    size = sum(abs(t) for t in terms)
                    err = abs(terms.sum() - fd)
                    out[f"{kind}:{seg}"] = float(err / size) if size != 0 else (0.0 if err == 0 else math.inf)
        return out


def _labels(name: str) -> str:
    if name == "out":
        return "output"
    if name == "logdet":
        return "logdet"
    if name.startswith("gradld:"):
        return "grad logdet->" + name[len("gradld:"):]
    if name.startswith("gradout:"):
        return "grad output->" + name[len("gradout:"):]
    return "grad " + name[len("grad:"):]


def _round(a, low):
    return np.asarray(to_numpy(a), dtype=np.float64).astype(low).astype(np.float64)


def check_precise(
    layer,
    params: dict,
    x=None,
    *,
    z=None,
    dtypes=("float64", "float32"),
    directions=("forward", "inverse"),
    variants: dict | None = None,
    c: float = C_PRECISE,
    dps: int = DPS,
    structure: bool = True,
    roundtrip: bool = True,
    kappa=None,
    verify_oracle: bool = True,
    seed: int = 0,
    name: str | None = None,
) -> Report:
    """Check ``layer`` (and optional ``variants`` of it) against its own code at ``dps`` digits.

    ``x`` is the forward point; the inverse runs at ``z`` if given, else at ``f(x)``. The condition
    estimate ``κ`` and a reconstructing chain's rebuild bounds are taken at ``x`` (at ``f⁻¹(z)``
    without one). ``variants`` maps a label to another implementation of the same function
    (``AffineCoupling(..., backend="numba")``, :class:`~rawflow.check.stress.KernelTransformLayer`):
    each is evaluated in every dtype and judged against the reference's oracle and bounds
    (default: ``{"reference": layer}``). Points, parameters and cotangents are first rounded to
    the lowest dtype checked, so every precision is judged at the same point; the reference runs
    on NumPy arrays. ``structure`` adds the round trips (unless ``roundtrip=False``) and the exact
    log-det cancellation at ``x``; ``kappa`` replaces the round trips' componentwise bound by
    ``κ·max(|x|∞, |z|∞)``, as in :func:`~rawflow.check.check_bijector`. ``verify_oracle`` adds
    the oracle's precision and maths records (module docstring).
    """
    name = name or getattr(layer, "name", type(layer).__name__)
    dtypes = tuple(np.dtype(d).name for d in dtypes)
    low = np.float32 if "float32" in dtypes else np.float64
    rng = np.random.default_rng(seed)
    variants = dict(variants or {"reference": layer})
    p_pt = tree.map(lambda a: _round(a, low), params)
    backend = np
    ctx = Context(layer, name, backend, p_pt)
    points = {}
    if x is not None:
        points["forward"] = _round(x, low)
    if z is not None:
        points["inverse"] = _round(z, low)
    elif "inverse" in directions:
        if x is None:
            raise ValueError("check_precise: give x, z or both")
        points["inverse"] = _round(ctx.call("forward", points["forward"], np.float64)[0], low)
    x_cond = points.get("forward")
    if x_cond is None:
        x_cond = ctx.call("inverse", points["inverse"], np.float64)[0]
    report = Report(meta={"layer": name, "dtypes": list(dtypes), "oracle": f"mpmath {dps} digits",
                          "variants": list(variants), "c": c})
    cond = Conditioning(ctx, x_cond, kappa)
    kappa = float(np.max(cond.kappa))
    report.meta["kappa_max"] = kappa
    reconstruct = bool(getattr(layer, "reconstruct", False))
    for direction in directions:
        if direction not in points:
            continue
        u = points[direction]
        out_shape = ctx.call(direction, u, np.float64)[0].shape
        g = rng.normal(size=out_shape).astype(low).astype(np.float64)
        gl = rng.normal(size=u.shape[0]).astype(low).astype(np.float64)
        probe = Probe(layer, p_pt, u, g, gl, direction, output_only=True)
        an = Analysis(probe, differences=False)
        oracle = PreciseProbe(layer, p_pt, u, g, gl, direction, dps=dps)
        exact = oracle.evaluate()
        base = dict(layer=name, direction=direction)
        if verify_oracle:
            report.extend(_verify_oracle(oracle, exact, an, base, rng))
        expected = {k: to_float(v) for k, v in exact.items()}
        for label, impl in variants.items():
            vprobe = probe if impl is layer else Probe(impl, p_pt, u, g, gl, direction, output_only=True)
            for d in dtypes:
                dt = np.dtype(d)
                eps = float(np.finfo(dt).eps)
                extra = Rebuild(an, cond, ROUNDTRIP_ULPS[d], reconstruct).atol(eps)
                got = vprobe.evaluate(an.w0, dt)
                for seg in an.lout.names:
                    rows = an.rows(seg)
                    T = an.T[rows]
                    rec = compare(np.asarray(got[seg], dtype=np.float64).reshape(-1), expected[seg].reshape(-1),
                                  rtol=c * eps, scale=T, atol=extra[rows], dtype=d, check="precise",
                                  quantity=_labels(seg), oracle=f"mpmath {dps} digits",
                                  step=None, scale_note="term size T" + (" (+ rebuild bound)" if reconstruct else ""),
                                  **base)
                    if label != "reference" or len(variants) > 1:
                        rec.layer = f"{name}[{label}]"
                    rec.kappa = kappa
                    if rec.worst_index is not None:
                        rec.bound = float(eps * T[rec.worst_index[0]])
                    elif T.size:
                        rec.bound = float(eps * T.max())
                    report.records.append(rec)
    if structure:
        from . import structure as _structure

        for label, impl in variants.items():
            vctx = Context(impl, name if label == "reference" and len(variants) == 1 else f"{name}[{label}]",
                           backend, p_pt)
            x_rt = points.get("forward", x_cond)
            for d in dtypes:
                dt = np.dtype(d)
                if roundtrip:
                    report.extend(_structure.roundtrip(vctx, x_rt, dt, cond, ROUNDTRIP_ULPS[d], vctx.name))
                n_layers = count_layers(layer)
                report.extend(_structure.logdet_cancel(vctx, x_rt, dt, n_layers == 1, n_layers, vctx.name))
    return report


def _verify_oracle(oracle: PreciseProbe, exact: dict, an: Analysis, base: dict, rng) -> list[Record]:
    """The oracle's own error (``dps`` vs ``dps + 20`` digits) and its VJP maths (vs differences)."""
    records = []
    higher = oracle.evaluate(dps=oracle.dps + EXTRA_DPS)
    worst, where = 0.0, ""
    for seg in an.lout.names:
        T = an.T[an.rows(seg)]
        with oracle.mpmath.workdps(oracle.dps + EXTRA_DPS):
            diff = np.abs((exact[seg] - higher[seg]).reshape(-1))
        ratio = [float(dv) / (EPS64 * t) if t > 0 else (0.0 if dv == 0 else math.inf) for dv, t in zip(diff, T)]
        if ratio and max(ratio) > worst:
            worst, where = max(ratio), _labels(seg)
    fields = dict(base, dtype="float64", oracle=f"mpmath {oracle.dps} vs {oracle.dps + EXTRA_DPS} digits",
                  step=None)
    records.append(verdict(worst <= ORACLE_BAR, check="precise-oracle", quantity="oracle precision",
                           max_rel_err=worst, tolerance=ORACLE_BAR, ratio=worst / ORACLE_BAR,
                           scale="eps64·T (change between the two precisions, in units of eps64·T)",
                           note=f"worst at {where}" if where else "", **fields))
    disc = oracle.gradient_discrepancy(exact, rng)
    bar = 10.0 ** (-(oracle.dps // 3))
    bad = {k: v for k, v in disc.items() if not v <= bar}
    worst_d = max(disc.values(), default=0.0)
    records.append(verdict(not bad, check="precise-maths", quantity="VJP vs differences of the objective",
                           max_rel_err=worst_d, tolerance=bar, ratio=worst_d / bar,
                           note=("" if not bad else "the hand-written VJP is not the derivative of the forward: "
                                 + ", ".join(f"{k} ({v:.2g})" for k, v in bad.items())),
                           n=len(disc), **fields))
    return records
