"""``check_bijector``: every check of rawflow/check/README.md on any object keeping the bijector contract.

The checks, per direction (``forward`` at ``x``, ``inverse`` at ``z = f(x)``) unless marked *both*:

=====================  =====================================================================  ==================
check                  what                                                                   bar (float64)
=====================  =====================================================================  ==================
``gradient``           every VJP element (input, each parameter leaf; ``logdet->…`` with the   ``1e-13·T``
                       log-det cotangent alone) vs the primary oracle (complex step)
``logdet-jacobian``    log-det vs ``slogdet`` of the per-sample Jacobian from each oracle      ``1e-13·max(1,|ℓ|)``
                       (complex step; Richardson and central differences)                     ``+ Σ|J⁻¹|ᵀ|δJ| + 16·eps·Tℓ``
``oracle``             complex step, Richardson and central differences against each other     ``1e-10`` / ``1e-8``
                       on the Jacobian and Hessian columns (a broken oracle is blamed)         ``·block max + noise``
``samples``            output/log-det/gradient of sample m independent of the input of n ≠ m  exactly 0
``hvp``                Hessian-vector products by complex step *through the hand-written       ``1e-8`` (vs FD),
                       backward* vs central differences of the backward; vs the assembled     ``1e-12`` (others)
                       Hessian; symmetry ``u·Hv = v·Hu``
``roundtrip`` (both)   ``f⁻¹(f(x))`` and ``f(f⁻¹(z))`` element-wise, against the round-off the   ``4·eps·B`` (f32: 8)
                       layer's conditioning allows (``B``, see :mod:`~rawflow.check.conditioning`)
``logdet-cancel``      forward + inverse log-dets at matching points                          exactly 0 (chains:
(both)                                                                                        ``64·K·eps·Σ|ℓ_k|``)
``structure`` (both)   zero cotangent → exactly zero gradients; VJP linear in the cotangent;  exact /
                       repeated runs bitwise identical; dtypes and gparams structure          ``64·eps·terms``
``batch`` (both)       a batch equals its samples stacked (parameter gradients: summed)       ``8·eps·T``
``cache`` (both)       backward given the other direction's cache (at the rebuilt point)      ``16·eps·T + |H|·δ``
``float32``            every output, log-det and gradient in float32 vs float64 at the same   ``16·eps32·T``
                       (float32-representable) point
=====================  =====================================================================  ==================

``T`` is the term size of each entry (:mod:`rawflow.check.analysis`); ``Σ|J⁻¹|ᵀ|δJ|`` is how far an
oracle's errors ``δJ`` (``16·eps·|J|`` for the complex step) can move ``slogdet``. ``B`` is the
element-wise round-off amplification of a round trip (``|x| + |J⁻¹|·|z|`` for one layer, each
rounding charged at its layer's term sizes, see :class:`~rawflow.check.conditioning.Conditioning`;
summed over a chain's layers), ``δ = ulps·eps·B`` the shift of a rebuilt point. Records also report ``κ``, the
product of the layers' ``cond₂``; a user ``kappa`` replaces ``B`` by ``kappa·max(|x|∞, |z|∞)``.
A memory-lean (reconstructing) chain evaluates its VJPs at rebuilt points: its gradient bars add
``|H|·δ`` (and its complex-step Hessian bars scale with ``64·eps·κ``).

Where complex arithmetic is not possible (the layer raises, or drops the imaginary part) the
primary oracle is Richardson and the bars become the finite-difference bars (``1e-8·T`` plus the
difference's round-off floor); every record says which oracle and step it used.

All checks run at one point: with ``float32`` among the dtypes, the input, parameters and cotangents
are first rounded to float32, so float64 and float32 are compared at the same point.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from .. import tree
from .._array import namespace, to_numpy
from . import oracles
from . import structure
from .analysis import Analysis
from .conditioning import Conditioning, Context, Rebuild, count_layers
from .probe import Probe
from .records import Record, Report, compare, verdict

EPS64 = oracles.EPS64

#: float64 bar of gradients vs the complex step, relative to the term size
RTOL_GRADIENT = 1e-13
#: float64 bar of the log-det vs slogdet of the complex-step Jacobian, relative to max(1, |ℓ|)
RTOL_LOGDET = 1e-13
#: bars of the difference oracles, relative to the block's largest derivative (plus their noise)
RTOL_FD = {"complex-step": 0.0, "richardson": 1e-10, "central": 1e-8}
#: bar of a difference oracle used as the primary oracle (≤ 1e-8 vs central differences)
RTOL_FD_PRIMARY = 1e-8
#: float32 vs float64: ``C32·eps32·T`` (a handful of roundings per term, see module docstring)
C32 = 16
#: from this condition estimate on, check_bijector adds the 60-digit oracle's records (the
#: complex step's own error grows like eps·κ; at κ ≈ 1e12 its Hessian symmetry misses 1e-12)
PRECISE_KAPPA = 1e8
#: round trip: ulps of the conditioning-weighted size (see _Conditioning: 4 ulp in float64, 8 in float32)
ROUNDTRIP_ULPS = {"float64": 4, "float32": 8}


def check_bijector(
    layer,
    params: dict,
    x,
    *,
    dtypes=("float64", "float32"),
    kappa=None,
    exact_cancel: bool | None = None,
    oracle: str = "auto",
    directions=("forward", "inverse"),
    roundtrip_ulps: float | None = None,
    second_order: bool = True,
    fd_columns: int | None = 64,
    seed: int = 0,
    name: str | None = None,
    precise: bool | None = None,
) -> Report:
    """Check ``layer`` (any object with ``forward``/``inverse``/``backward``/``inverse_backward``).

    ``params`` and ``x`` give the point (any float dtype; NumPy or CuPy: the layer is called with
    arrays of ``x``'s namespace). ``kappa`` (scalar or per sample) overrides the condition estimate
    of the round-trip bound. ``exact_cancel`` says whether forward + inverse log-dets must cancel
    exactly (default: yes, except for chains, where they cancel to round-off). ``oracle``:
    ``"auto"`` (complex step when the layer runs in complex128, else Richardson), ``"complex-step"``
    or ``"richardson"``. ``fd_columns`` limits the difference oracles (cross-checks) to that many
    random columns (the primary oracle always covers every column). ``dtypes`` picks the precisions
    whose results are checked; the oracles themselves always run in float64/complex128.
    ``precise`` adds :func:`~rawflow.check.precise.check_precise`'s records (every result against
    the layer's own code at 60 digits, beside its bound ``eps·T``); by default (``None``) where
    the complex step is limited by conditioning, ``κ ≥`` :data:`PRECISE_KAPPA`, if mpmath is
    installed.
    Returns a :class:`~rawflow.check.records.Report` (truthy when all pass).
    """
    name = name or getattr(layer, "name", type(layer).__name__)
    backend = namespace(x)
    dtypes = tuple(np.dtype(d).name for d in dtypes)
    for d in dtypes:
        if d not in ("float64", "float32"):
            raise ValueError(f"check_bijector: dtypes must be float64 and/or float32, got {d!r}")
    low = np.float32 if "float32" in dtypes else np.float64
    rng = np.random.default_rng(seed)

    # One point for every precision: rounded to the lowest dtype checked.
    x_pt = np.asarray(to_numpy(x), dtype=np.float64).astype(low).astype(np.float64)
    p_pt = tree.map(lambda a: np.asarray(to_numpy(a), dtype=np.float64).astype(low).astype(np.float64), params)
    ctx = Context(layer, name, backend, p_pt)
    z_pt = ctx.call("forward", x_pt, np.float64)[0].astype(low).astype(np.float64)
    points = {"forward": x_pt, "inverse": z_pt}

    report = Report(meta={"layer": name, "dtypes": list(dtypes), "seed": seed, "oracle": oracle,
                          "n": int(x_pt.shape[0]), "event_shape": list(x_pt.shape[1:])})
    analyses: dict[str, Analysis] = {}
    for direction in directions:
        u = points[direction]
        out_shape = ctx.call(direction, u, np.float64)[0].shape
        g = rng.normal(size=out_shape).astype(low).astype(np.float64)
        gl = rng.normal(size=u.shape[0]).astype(low).astype(np.float64)
        probe = Probe(layer, p_pt, u, g, gl, direction, backend=backend)
        analyses[direction] = Analysis(probe, oracle=oracle, fd_columns=fd_columns, rng=rng)

    cond = Conditioning(ctx, x_pt, kappa)
    report.meta["kappa_max"] = float(np.max(cond.kappa))
    if cond.note:
        report.meta.setdefault("notes", []).append(cond.note)
    n_layers = count_layers(layer)
    ulps_for = (lambda d: roundtrip_ulps) if roundtrip_ulps is not None else (lambda d: ROUNDTRIP_ULPS[d])
    if exact_cancel is None:
        exact_cancel = count_layers(layer) == 1
    reconstruct = bool(getattr(layer, "reconstruct", False))

    for direction, an in analyses.items():
        base = dict(layer=name, direction=direction)
        if "float64" in dtypes:
            rebuild = Rebuild(an, cond, ulps_for("float64"), reconstruct)
            report.extend(_first_order(an, base, rebuild))
            report.extend(_logdet_jacobian(an, base))
            report.extend(_samples_independent(an, base))
            if an.oracle == "complex-step":
                report.extend(_oracle_cross_checks(an, base))
            if second_order:
                report.extend(_second_order(an, base, rng, rebuild))
        if "float32" in dtypes:
            report.extend(_float32(an, base, Rebuild(an, cond, ulps_for("float32"), reconstruct)))
    for d in dtypes:
        dt = np.dtype(d)
        report.extend(structure.roundtrip(ctx, x_pt, dt, cond, ulps_for(d), name))
        report.extend(structure.logdet_cancel(ctx, x_pt, dt, exact_cancel, n_layers, name))
        for direction, an in analyses.items():
            rebuild = Rebuild(an, cond, ulps_for(d), reconstruct)
            report.extend(structure.structure(ctx, an, dt, rebuild, dict(layer=name, direction=direction)))
    for an in analyses.values():
        for note in an.notes:
            report.meta.setdefault("notes", []).append(f"{an.probe.direction}: {note}")
    if precise is None:
        precise = report.meta["kappa_max"] >= PRECISE_KAPPA and importlib.util.find_spec("mpmath") is not None
    if precise:
        from .precise import check_precise

        report.extend(check_precise(layer, params, x, dtypes=dtypes, directions=directions, structure=False,
                                    seed=seed, name=name))
    return report


# ---------------------------------------------------------------------- first order
def _first_order(an: Analysis, base: dict, rebuild: Rebuild) -> list[Record]:
    records = []
    extra = rebuild.atol(EPS64)
    cs = an.oracle == "complex-step"
    first = an.first_order_rows()
    for ld_only, prefix, qprefix in ((False, "grad:", ""), (True, "gradld:", "logdet->")):
        expected = an.expected_gradient(ld_only)
        c = an.cotangent_ld if ld_only else an.cotangent
        for seg in an.lin.names:
            rows = an.rows(prefix + seg)
            cols = an.cols(seg)
            actual = an.f0[rows]
            fields = dict(base, check="gradient", quantity=qprefix + seg,
                          oracle=an.oracle, step=oracles.COMPLEX_STEP if cs else oracles.RICHARDSON_STEP)
            if cs:
                rec = compare(actual, expected[cols], rtol=RTOL_GRADIENT, scale=an.T[rows], atol=extra[rows],
                              scale_note="term size T" + (" (+ rebuild bound)" if rebuild.active else ""),
                              **fields)
            else:
                noise = an.fd_noise("richardson")[first][:, cols]
                atol = np.abs(c) @ noise + extra[rows]
                bad = (np.abs(c)[:, None] * an.nonsmooth[first][:, cols] > 0).any(axis=0)
                rec = compare(actual, expected[cols], rtol=RTOL_FD_PRIMARY, scale=an.T[rows], atol=atol,
                              mask=~bad, scale_note="term size T (+ difference round-off)", **fields)
                if bad.any():
                    rec.note = f"{int(bad.sum())} element(s) non-smooth within the difference step: not checked"
            records.append(rec)
    return records


def _logdet_jacobian(an: Analysis, base: dict) -> list[Record]:
    """The layer's log-det vs ``slogdet`` of each oracle's per-sample Jacobian.

    The bar adds the log-det's own rounding and what the oracle's errors ``δJ`` move ``slogdet`` by,
    ``|tr(J⁻¹ δJ)| ≤ Σ |J⁻¹|ᵀ∘|δJ|``: ``16·eps·|J|`` for the complex step (Skeel's ``S``), the
    difference oracles' round-off and truncation estimates for them.
    """
    records = []
    actual = an.f0[an.rows("logdet")]
    t_ld = an.T[an.rows("logdet")]
    n_in = an.cols("input").stop
    estimates = [(an.oracle, an.J, None, None)]
    if an.oracle == "complex-step" and an.fd_cols.size >= n_in:
        estimates += [(m, an.fd[m], an.fd_noise(m), an.nonsmooth) for m in ("richardson", "central")]
    for method, cols, err, nonsmooth in estimates:
        fields = dict(base, check="logdet-jacobian", quantity="logdet", oracle=method, dtype="float64",
                      step=oracles.steps(np.zeros(1), method)[0])
        jac = an.per_sample_jacobians(cols)
        if jac.shape[1] != jac.shape[2]:
            records.append(verdict(False, note=f"Jacobian is not square: {jac.shape[1:]}", **fields))
            continue
        sign, lad = np.linalg.slogdet(jac)
        if np.any(sign == 0):
            records.append(verdict(False, note="singular Jacobian from the oracle", **fields))
            continue
        inv_t = np.abs(np.linalg.inv(jac)).transpose(0, 2, 1)
        moved = 16 * EPS64 * (inv_t * np.abs(jac)).sum(axis=(1, 2))
        if err is not None:
            moved = moved + (inv_t * an.per_sample_jacobians(err)).sum(axis=(1, 2))
        if method == "complex-step":
            rtol, mask = RTOL_LOGDET, None
        else:
            rtol = RTOL_FD[method] if an.oracle == "complex-step" else RTOL_FD_PRIMARY
            bad = an.per_sample_jacobians(an.nonsmooth if nonsmooth is None else nonsmooth)
            mask = ~bad.any(axis=(1, 2))
            if an.oracle != "complex-step":
                moved = moved + (inv_t * an.per_sample_jacobians(an.fd_noise("richardson"))).sum(axis=(1, 2))
        rec = compare(actual, lad, rtol=rtol, scale=np.maximum(1.0, np.abs(lad)), atol=16 * EPS64 * t_ld + moved,
                      mask=mask, scale_note="max(1,|slogdet|) (+ Σ|J⁻¹|ᵀ|δJ| + 16·eps·Tℓ)", **fields)
        rec.kappa = float(np.max(np.linalg.cond(jac)))
        if mask is not None and (~mask).any():
            rec.note = f"{int((~mask).sum())} sample(s) with a kink inside the difference step: not compared"
        records.append(rec)
    return records


def _samples_independent(an: Analysis, base: dict) -> list[Record]:
    """Sample m's outputs must not depend on sample n's input (exactly zero derivative)."""
    n = an.probe.n_samples
    worst = 0.0
    for seg in ("out", "logdet", "grad:input"):
        block = an.J[an.rows(seg), an.cols("input")]
        r, c = block.shape[0] // n, block.shape[1] // n
        for i in range(n):
            for j in range(n):
                if i != j:
                    worst = max(worst, float(np.abs(block[i * r:(i + 1) * r, j * c:(j + 1) * c]).max(initial=0.0)))
    return [verdict(worst == 0, dtype="float64", check="samples", quantity="cross-sample derivatives",
                    oracle=an.oracle, step=None, max_abs_err=worst,
                    note="" if worst == 0 else "a sample's output depends on another sample's input", **base)]


# ---------------------------------------------------------------------- oracles
_BLOCKS = (("jacobian", ("out",)), ("logdet-gradient", ("logdet",)), ("hessian", ("grad:",)),
           ("logdet-hessian", ("gradld:",)))


def _oracle_cross_checks(an: Analysis, base: dict) -> list[Record]:
    cols = an.fd_cols
    est = {"complex-step": an.J[:, cols], "richardson": an.fd["richardson"], "central": an.fd["central"]}
    noise = {"complex-step": 0.0, "richardson": an.fd_noise("richardson"), "central": an.fd_noise("central")}
    scale = an.block_scale(an.J, cols)
    smooth = ~an.nonsmooth
    records = []
    for block, prefixes in _BLOCKS:
        rows = np.r_[tuple(an.rows(nm) for nm in an.lout.names if nm.startswith(prefixes))]
        pair_records = []
        for a, b in (("complex-step", "richardson"), ("complex-step", "central"), ("richardson", "central")):
            atol = (noise[a][rows] if a != "complex-step" else 0.0) + noise[b][rows]
            rtol = max(RTOL_FD[a], RTOL_FD[b])
            rec = compare(est[a][rows], est[b][rows], rtol=rtol, scale=scale[rows], atol=atol,
                          mask=smooth[rows], dtype="float64", check="oracle", quantity=block,
                          oracle=f"{a} vs {b}", step=oracles.CENTRAL_STEP if b == "central" else oracles.RICHARDSON_STEP,
                          scale_note="block max |derivative| (+ difference round-off)", **base)
            pair_records.append(rec)
        results = [(r.oracle.split(" vs ")[0], r.oracle.split(" vs ")[1], r.ratio, r.passed) for r in pair_records]
        blamed = oracles.blame(results)
        excused = int((~smooth[rows]).sum())
        for rec in pair_records:
            notes = []
            if blamed:
                hint = " (the layer is not complex-step safe?)" if "complex-step" in blamed else ""
                notes.append(f"oracle {', '.join(blamed)} disagrees with the others{hint}")
            if excused:
                notes.append(f"{excused} element(s) non-smooth within the difference step (kink): not compared")
            rec.note = "; ".join(notes)
        records.extend(pair_records)
    total = an.nonsmooth.size
    frac = float(an.nonsmooth.sum()) / total if total else 0.0
    records.append(verdict(frac <= 0.5, dtype="float64", check="oracle", quantity="smoothness",
                           oracle="richardson levels + complex step at w±h, w±h/2", step=oracles.RICHARDSON_STEP,
                           max_rel_err=frac,
                           n=total, note=f"{frac:.1%} of compared derivatives non-smooth within the step", **base))
    return records


# ---------------------------------------------------------------------- second order
def _second_order(an: Analysis, base: dict, rng, rebuild: Rebuild) -> list[Record]:
    records = []
    primary = an.oracle
    u = rng.normal(size=an.R)
    v = rng.normal(size=an.R)
    if primary == "complex-step":
        hv_p = an.directional(v, primary)
        hu_p = an.directional(u, primary)
        rich_v = an.directional(v, "richardson")
    else:
        rich_v = an.directional(v, "richardson")
        hv_p = rich_v.estimate
        hu_p = an.directional(u, "richardson").estimate
    h_c = oracles.CENTRAL_STEP
    hv_c = an.directional(v, "central", h_c)
    ns_v = rich_v.nonsmooth
    if primary == "complex-step":
        floor = 64 * EPS64 * np.abs(hv_p).max(initial=0.0)
        ns_v = ns_v | oracles.complex_step_kinks(an.probe, an.w0, v, oracles.RICHARDSON_STEP, floor=floor)
    trunc_v = oracles.central_truncation(rich_v.curvature, rich_v.h, h_c)
    if primary != "complex-step":
        trunc_v = trunc_v + rich_v.error
    # Complex-step tangents through a reconstructing backward are rebuilt by inverses too: their
    # relative round-off grows like eps·κ (64·eps·κ bounds it with the round-trip's margin).
    rtol_cs = max(1e-12, 64 * EPS64 * rebuild.kappa_max) if rebuild.active else 1e-12
    for prefix, label in (("grad:", "L"), ("gradld:", "logdet")):
        rows = an.grad_rows(prefix)
        H = an.J[rows]
        absHv = np.abs(H) @ np.abs(v)
        step = oracles.COMPLEX_STEP if primary == "complex-step" else oracles.RICHARDSON_STEP
        fields = dict(base, check="hvp", dtype="float64", step=step)
        # vs central differences of the backward, element-wise with the difference's noise floor
        block = np.zeros(rows.size)
        start = 0
        for seg in an.lin.names:
            size = an.lin.slices[seg].stop - an.lin.slices[seg].start
            block[start:start + size] = absHv[start:start + size].max(initial=0.0)
            start += size
        atol = 4 * (EPS64 * an.T[rows] + an.noise[rows]) / h_c + trunc_v[rows]
        mask = ~ns_v[rows]
        rec = compare(hv_c[rows], hv_p[rows], rtol=RTOL_FD["central"], scale=block, atol=atol, mask=mask,
                      quantity=f"{label}: Hv", oracle=f"{primary} vs central of backward",
                      scale_note="segment max |H||v| (+ difference round-off)", **fields)
        if (~mask).any():
            rec.note = f"{int((~mask).sum())} element(s) non-smooth within the step: not compared"
        records.append(rec)
        # vs the Hessian assembled from the per-element columns
        rtol_asm = rtol_cs if primary == "complex-step" else RTOL_FD_PRIMARY
        records.append(compare(H @ v, hv_p[rows], rtol=rtol_asm, scale=block, quantity=f"{label}: Hv",
                               oracle=f"{primary} directional vs assembled columns",
                               scale_note="segment max |H||v|", **fields))
        # symmetry u·Hv = v·Hu
        s1, s2 = float(u @ hv_p[rows]), float(v @ hu_p[rows])
        size = float(np.abs(u) @ absHv + np.abs(v) @ (np.abs(H) @ np.abs(u)))
        rtol_sym = rtol_cs if primary == "complex-step" else RTOL_FD_PRIMARY
        records.append(compare(np.array([s1]), np.array([s2]), rtol=rtol_sym, scale=np.array([size]),
                               quantity=f"{label}: u·Hv = v·Hu", oracle=primary,
                               scale_note="|u|ᵀ|H||v| + |v|ᵀ|H||u|", **fields))
    return records


# ---------------------------------------------------------------------- float32
def _float32(an: Analysis, base: dict, rebuild: Rebuild) -> list[Record]:
    parts32 = an.probe.evaluate(an.w0, np.float32)
    records = []
    eps32 = float(np.finfo(np.float32).eps)
    extra = rebuild.atol(eps32)
    for seg in an.lout.names:
        rows = an.rows(seg)
        if seg == "out":
            q = "output"
        elif seg == "logdet":
            q = "logdet"
        elif seg.startswith("gradld:"):
            q = "grad logdet->" + seg[len("gradld:"):]
        else:
            q = "grad " + seg[len("grad:"):]
        records.append(compare(parts32[seg].reshape(-1), an.f0[rows], rtol=C32 * eps32, scale=an.T[rows],
                               atol=extra[rows], dtype="float32", check="float32", quantity=q, oracle="float64",
                               step=None, scale_note="term size T" + (" (+ rebuild bound)" if rebuild.active else ""),
                               **base))
    return records


def run_suite(families=None, *, dtypes=("float64", "float32"), **kwargs) -> Report:
    """:func:`check_bijector` over every registered case (:mod:`rawflow.check.registry`)."""
    from . import registry

    report = Report(meta={"families": list(families or registry.families()), "dtypes": list(dtypes)})
    for case in registry.cases(families):
        options = {**kwargs, **case.options}
        report.extend(check_bijector(case.layer, case.params, case.x, dtypes=dtypes, name=case.name, **options))
    return report
