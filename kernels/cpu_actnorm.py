"""Fused Numba CPU kernels for ActNorm (:class:`rawflow.ActNorm`): forward, inverse and both VJPs.

Same maths as the reference layer. ``x: (N, C, *spatial)`` (``(N, C)`` for vectors), ``bias,
log_scale: (C,)``, ``e = exp(log_scale)``, ``P`` spatial positions (1 for vectors), sums ``Σ``
over the batch and spatial axes::

    forward           z = (x + bias)·e            logdet     =  P·Σ_c log_scale_c
    inverse           x = z/e − bias              logdet_inv = −logdet   (the same rounded value)
    backward          gx = gz·e     g bias =  e·Σ gz     g log_scale =   Σ gz·z       + P·Σ_n gℓ_n
    inverse_backward  gz = gx/e     g bias = −Σ gx       g log_scale = −(Σ gx·(x + b) + P·Σ_n gℓ_n)

The VJPs read the layer's own input/output instead of a stored ``u = x + bias``: ``backward``
takes ``z`` (the forward's output or the inverse's input), ``inverse_backward`` takes ``x`` (the
inverse's output or the forward's input), so the cache is just ``(x, z)``, arrays the caller
holds anyway, and a cache from either direction serves both VJPs.

Precision: every element is computed in float64 and rounded once to the dtype. ``e`` is
``exp`` of the float64 ``log_scale`` (libm, once per channel: there is no per-element exp to
vectorise here), so for float32 data the outputs are the correctly rounded float64 results (a
second rounding from float64 is a ≤ 2⁻²⁹-ulp effect), and for float64 data the operations are
the reference's, in its order (``u = x + b``, ``z = u·e``; ``u = z/e``, ``x = u − b``). Round
trips use the same ``e`` in both directions. ``g bias = e·Σ gz`` (one product after the sum)
rather than ``Σ fl(gz·e)``: the same value, with fewer roundings.

Reductions (``Σ gz``, ``Σ gz·z``, ``Σ gℓ``, ``Σ log_scale``) run in float64 in a fixed order that
depends only on the shapes (bitwise reproducible whatever the thread count). The data is seen as
rows ``(N, J = C·P)``; partial sums are formed per task, then added per channel in task order by
TwoSum (Knuth's error-free addition; the compensations are summed alongside):

* images (``P > 1``): one task per ``(n, c)`` plane of ``P`` contiguous values, reduced in
  registers: float32 data by a plain float64 sum LLVM may reorder to vectorise it (error
  ≤ P·2⁻⁵³·Σ|t|, i.e. 2⁻²⁹·Σ|t| for P < 2²⁴, far below float32's rounding), float64 data by four
  TwoSum lanes per sum (scalar code, ≈ 1.7 ns per value: float64 is the verification precision);
* narrow vectors (``P = 1``, ``C ≤ NARROW``): blocks of ``RB`` rows, column by column, TwoSum;
* wide vectors: blocks of ``RB`` rows × ``CB`` columns, one accumulator per column (independent
  lanes: the column loop vectorises), TwoSum for float64 data, plain float64 for float32.

For float64 data every stage is TwoSum-compensated: Ogita–Rump–Oishi's ``Sum2`` with a fixed
tree, ``|ŝ − s| ≤ u|s| + γ²_n·Σ|t|`` (u = 2⁻⁵³, n terms). Per term the float64 product ``gz·z``
is exact for float32 data and rounds once (≤ u|t|) for float64 data. Bounds in "term units"
(``eps`` of the dtype × the sum of the magnitudes of the terms, as in
``tests/kernels/test_kernels_cpu.py``), first order:

* float64: ``g log_scale`` ≤ ½ (products) + ½ (the sum) + ½ (final ``+ P·Σgℓ`` rounding) = 1.5;
  the inverse's ``x + b`` adds ½ relative to ``|gx|·(|x| + |b|)``; ``g bias`` ≤ 1.5 (``e``,
  the sum, the product; each ≤ ½ ulp); the log-det ≤ 1 (sum, ``×P``).
* float32: ≈ ½ everywhere (the single final rounding; the float64 work is 2⁻²⁹ below it).

Speed (one thread, CPU time, ``(256, 48, 16, 16)`` / ``(64, 12, 32, 32)`` float32, forward +
backward): 2.5–2.9× the reference layer, 78–83 % of the machine's copy rate; float64 1.2–1.6×;
wide float32 vectors (``(256, 12288)``) at par, their accumulators' traffic being the limit.

Compilation: two parallel kernels (map, VJP; one ``prange`` each) per dtype, lazy, cached on disk
(``cache=True``); ≈ 12 s for both dtypes on first use (2 loaded cores), then ≈ 0.1 s to load.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ._launch import launch
from .interface import ActNormCache  # noqa: F401  (re-exported: the layer's cache type)

#: columns per task of the forward/inverse and of wide vectors' VJP (4·CB float64 accumulators: L1).
CB = 512
#: rows per task of vectors (the per-task partial sums cost 1/RB of the data traffic).
RB = 64
#: below this many elements a kernel runs on the calling thread alone: waking the thread pool costs
#: more than the work, and on a busy machine a parallel region can wait a whole scheduler time
#: slice for its second thread (measured: 5 µs median but 1 ms mean, 9–16 ms p99, for a 108-element
#: call under load; 6 µs mean single-threaded). Results do not depend on the thread count.
SERIAL_BELOW = 1 << 15
#: vectors with at most this many features go row block by row block with 2-D loops (per-row
#: slicing and alias checks would cost more than the few values of a row).
NARROW = 64


# ------------------------------------------------------------------ scalar helpers
@njit(error_model="numpy")
def _two_sum(a, b):
    """``(s, err)`` with ``s = fl(a + b)`` and ``a + b = s + err`` exactly (Knuth)."""
    s = a + b
    bp = s - a
    return s, (a - (s - bp)) + (b - bp)


@njit(error_model="numpy")
def _channel_scales(bias, log_scale):
    """``(e, b)``: float64 ``exp(log_scale)`` and ``bias``, once per channel."""
    c_total = bias.shape[0]
    e = np.empty(c_total)
    b = np.empty(c_total)
    for c in range(c_total):
        e[c] = math.exp(np.float64(log_scale[c]))
        b[c] = np.float64(bias[c])
    return e, b


@njit(error_model="numpy")
def _compensated_sum(v):
    """``Σ v`` in float64, TwoSum-compensated (``v`` of any float dtype)."""
    s = 0.0
    comp = 0.0
    for i in range(v.shape[0]):
        s, err = _two_sum(s, np.float64(v[i]))
        comp += err
    return s + comp


# ------------------------------------------------------------------ forward / inverse
@njit(error_model="numpy")
def _map_block(xr, orow, e, b, p_total, j0, j1, inverse):
    """``orow[j0:j1]`` from ``xr[j0:j1]`` (one row, one column block)."""
    if p_total == 1:  # vectors: column j is channel j
        xs, os_, es, bs = xr[j0:j1], orow[j0:j1], e[j0:j1], b[j0:j1]
        if inverse:
            for i in range(j1 - j0):
                os_[i] = np.float64(xs[i]) / es[i] - bs[i]
        else:
            for i in range(j1 - j0):
                os_[i] = (np.float64(xs[i]) + bs[i]) * es[i]
        return
    c = j0 // p_total
    j = j0
    while j < j1:  # one segment per channel met in [j0, j1)
        k = min(j1, (c + 1) * p_total)
        xs, os_ = xr[j:k], orow[j:k]  # views indexed from 0: contiguous loads, no gathers
        ec, bc = e[c], b[c]
        if inverse:
            for i in range(k - j):
                os_[i] = np.float64(xs[i]) / ec - bc
        else:
            for i in range(k - j):
                os_[i] = (np.float64(xs[i]) + bc) * ec
        j = k
        c += 1


@njit(error_model="numpy")
def _map_narrow(xb, ob, e, b, inverse):
    """A block of narrow vector rows: ``xb, ob: (rows, C)``."""
    for r in range(xb.shape[0]):
        if inverse:
            for i in range(xb.shape[1]):
                ob[r, i] = np.float64(xb[r, i]) / e[i] - b[i]
        else:
            for i in range(xb.shape[1]):
                ob[r, i] = (np.float64(xb[r, i]) + b[i]) * e[i]


@njit(parallel=True, error_model="numpy", cache=True)
def actnorm_map_kernel(x, bias, log_scale, out, logdet, inverse):
    """``out = (x + b)·e`` (``x/e − b`` if ``inverse``), ``logdet = ±P·Σ log_scale``; x: (N, C·P)."""
    n_rows, j_total = x.shape
    p_total = j_total // bias.shape[0]
    e, b = _channel_scales(bias, log_scale)
    narrow = p_total == 1 and j_total <= NARROW
    ncb = (j_total + CB - 1) // CB
    n_tasks = (n_rows + RB - 1) // RB if narrow else n_rows * ncb
    for t in prange(n_tasks):  # one parallel loop (each prange is compiled separately)
        if narrow:  # a block of RB rows
            _map_narrow(x[t * RB : (t + 1) * RB], out[t * RB : (t + 1) * RB], e, b, inverse)
        else:  # one row's column block
            n = t // ncb
            j0 = (t - n * ncb) * CB
            _map_block(x[n], out[n], e, b, p_total, j0, min(j0 + CB, j_total), inverse)
    if n_rows > 0:
        logdet[0] = np.float64(p_total) * _compensated_sum(log_scale)  # rounds once to the dtype
        value = -logdet[0] if inverse else logdet[0]  # the same rounded value, negated: exact cancel
        for n in range(n_rows):
            logdet[n] = value


# ------------------------------------------------------------------ VJPs
@njit(error_model="numpy")
def _segment_compensated(vs, gs, os_, ec, bc, shi, slo, vhi, vlo, inverse):
    """float64 data: ``os_ = gs·e`` (``gs/e``); column accumulators ``+= g`` and ``g·v`` by TwoSum."""
    if inverse:
        for i in range(gs.shape[0]):
            gv = np.float64(gs[i])
            os_[i] = gv / ec[i]
            s, err = _two_sum(shi[i], gv)
            shi[i] = s
            slo[i] += err
            s, err = _two_sum(vhi[i], gv * (np.float64(vs[i]) + bc[i]))
            vhi[i] = s
            vlo[i] += err
    else:
        for i in range(gs.shape[0]):
            gv = np.float64(gs[i])
            os_[i] = gv * ec[i]
            s, err = _two_sum(shi[i], gv)
            shi[i] = s
            slo[i] += err
            s, err = _two_sum(vhi[i], gv * np.float64(vs[i]))
            vhi[i] = s
            vlo[i] += err


@njit(error_model="numpy")
def _segment_plain(vs, gs, os_, ec, bc, shi, slo, vhi, vlo, inverse):
    """float32 data: the same with plain float64 accumulation (``slo``, ``vlo`` stay 0).

    Each term is exact in float64 or within 2⁻⁵² of it (the inverse's ``x + b``), and each
    accumulator adds at most ``RB`` terms: error ≤ (RB + 2)·2⁻⁵³·Σ|t| < 2⁻⁴⁶·Σ|t|, 2⁻²³ of a float32
    rounding.
    """
    if inverse:
        for i in range(gs.shape[0]):
            gv = np.float64(gs[i])
            os_[i] = gv / ec[i]
            shi[i] += gv
            vhi[i] += gv * (np.float64(vs[i]) + bc[i])
    else:
        for i in range(gs.shape[0]):
            gv = np.float64(gs[i])
            os_[i] = gv * ec[i]
            shi[i] += gv
            vhi[i] += gv * np.float64(vs[i])


def _vjp_segment(vs, gs, os_, ec, bc, shi, slo, vhi, vlo, inverse):
    """One row segment of a wide vector VJP (``ec, bc``: per-column ``e``, ``b``); TwoSum
    accumulation for float64 data, plain float64 for float32 (chosen at compile time)."""


@overload(_vjp_segment)
def _ov_vjp_segment(vs, gs, os_, ec, bc, shi, slo, vhi, vlo, inverse):
    impl = _segment_compensated if gs.dtype == types.float64 else _segment_plain
    return lambda vs, gs, os_, ec, bc, shi, slo, vhi, vlo, inverse: impl(
        vs, gs, os_, ec, bc, shi, slo, vhi, vlo, inverse
    )


@njit(error_model="numpy")
def _columns_narrow(vb, gb, ob, e, b, part, inverse):
    """A block of narrow vector rows (``(rows, C)``), column by column: outputs, and per column
    ``part[c] = (Σg hi, lo, Σg·v hi, lo)`` by TwoSum (scalar code; a column is ≤ RB values)."""
    for c in range(vb.shape[1]):
        ec = e[c]
        bc = b[c]
        sg = 0.0
        sg_lo = 0.0
        sv = 0.0
        sv_lo = 0.0
        for r in range(vb.shape[0]):
            gv = np.float64(gb[r, c])
            if inverse:
                ob[r, c] = gv / ec
                p = gv * (np.float64(vb[r, c]) + bc)
            else:
                ob[r, c] = gv * ec
                p = gv * np.float64(vb[r, c])
            sg, err = _two_sum(sg, gv)
            sg_lo += err
            sv, err = _two_sum(sv, p)
            sv_lo += err
        part[c, 0] = sg
        part[c, 1] = sg_lo
        part[c, 2] = sv
        part[c, 3] = sv_lo


# Images (P > 1): one task per (n, c) plane of P contiguous values, reduced in registers.
@njit(error_model="numpy", fastmath={"reassoc"})
def _plane_widened(vs, gs, os_, ec, bc, inverse):
    """float32 data: ``os_ = gs·e`` (``gs/e``) and ``(Σg, 0, Σg·v, 0)`` in float64.

    ``reassoc`` lets LLVM vectorise the two sums (it reorders them, nothing else: each term is
    formed by one product of exactly represented float64 values, so there is no chain to
    reassociate). Error of a sum of ``P`` float64 terms: ≤ P·2⁻⁵³·Σ|t|, below 2⁻²⁹·Σ|t| for P < 2²⁴.
    """
    sg = 0.0
    sv = 0.0
    if inverse:
        for i in range(gs.shape[0]):
            gv = np.float64(gs[i])
            os_[i] = gv / ec
            sg += gv
            sv += gv * (np.float64(vs[i]) + bc)
    else:
        for i in range(gs.shape[0]):
            gv = np.float64(gs[i])
            os_[i] = gv * ec
            sg += gv
            sv += gv * np.float64(vs[i])
    return sg, 0.0, sv, 0.0


@njit(error_model="numpy")
def _lanes4(acc, a0, a1, a2, a3, p0, p1, p2, p3):
    """Add ``a_k`` to the g lanes and ``p_k`` to the g·v lanes of ``acc`` (16 floats), by TwoSum."""
    g0, g1, g2, g3, gl0, gl1, gl2, gl3, v0, v1, v2, v3, vl0, vl1, vl2, vl3 = acc
    g0, t0 = _two_sum(g0, a0)
    g1, t1 = _two_sum(g1, a1)
    g2, t2 = _two_sum(g2, a2)
    g3, t3 = _two_sum(g3, a3)
    v0, u0 = _two_sum(v0, p0)
    v1, u1 = _two_sum(v1, p1)
    v2, u2 = _two_sum(v2, p2)
    v3, u3 = _two_sum(v3, p3)
    return (g0, g1, g2, g3, gl0 + t0, gl1 + t1, gl2 + t2, gl3 + t3,
            v0, v1, v2, v3, vl0 + u0, vl1 + u1, vl2 + u2, vl3 + u3)


@njit(error_model="numpy")
def _plane_compensated(vs, gs, os_, ec, bc, inverse):
    """float64 data: the same with each ``Σ`` as four TwoSum lanes (``(hi, lo)`` pairs returned).

    Four lanes break the dependency chain of one compensated sum; the lane totals are merged by
    TwoSum too, so the result is Sum2's: ``|ŝ − s| ≤ u|s| + γ²_P·Σ|t|``.
    """
    z = 0.0
    acc = (z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z)
    m = gs.shape[0]
    m4 = m - m % 4
    if inverse:
        for k in range(m4 // 4):
            i = 4 * k
            a0, a1, a2, a3 = gs[i], gs[i + 1], gs[i + 2], gs[i + 3]
            os_[i] = a0 / ec
            os_[i + 1] = a1 / ec
            os_[i + 2] = a2 / ec
            os_[i + 3] = a3 / ec
            acc = _lanes4(acc, a0, a1, a2, a3, a0 * (vs[i] + bc), a1 * (vs[i + 1] + bc),
                          a2 * (vs[i + 2] + bc), a3 * (vs[i + 3] + bc))
        for i in range(m4, m):
            os_[i] = gs[i] / ec
            acc = _lanes4(acc, gs[i], z, z, z, gs[i] * (vs[i] + bc), z, z, z)
    else:
        for k in range(m4 // 4):
            i = 4 * k
            a0, a1, a2, a3 = gs[i], gs[i + 1], gs[i + 2], gs[i + 3]
            os_[i] = a0 * ec
            os_[i + 1] = a1 * ec
            os_[i + 2] = a2 * ec
            os_[i + 3] = a3 * ec
            acc = _lanes4(acc, a0, a1, a2, a3, a0 * vs[i], a1 * vs[i + 1], a2 * vs[i + 2], a3 * vs[i + 3])
        for i in range(m4, m):
            os_[i] = gs[i] * ec
            acc = _lanes4(acc, gs[i], z, z, z, gs[i] * vs[i], z, z, z)
    g0, g1, g2, g3, gl0, gl1, gl2, gl3, v0, v1, v2, v3, vl0, vl1, vl2, vl3 = acc
    ga, ta = _two_sum(g0, g1)
    gb, tb = _two_sum(g2, g3)
    gt, tc = _two_sum(ga, gb)
    va, ua = _two_sum(v0, v1)
    vb, ub = _two_sum(v2, v3)
    vt, uc = _two_sum(va, vb)
    return (gt, (gl0 + gl1) + (gl2 + gl3) + (ta + tb) + tc,
            vt, (vl0 + vl1) + (vl2 + vl3) + (ua + ub) + uc)


def _plane(vs, gs, os_, ec, bc, inverse):
    """One plane's VJP: outputs written, ``(Σg hi, lo, Σg·v hi, lo)`` returned (by dtype)."""


@overload(_plane)
def _ov_plane(vs, gs, os_, ec, bc, inverse):
    impl = _plane_compensated if gs.dtype == types.float64 else _plane_widened
    return lambda vs, gs, os_, ec, bc, inverse: impl(vs, gs, os_, ec, bc, inverse)


@njit(parallel=True, error_model="numpy", cache=True)
def actnorm_vjp_kernel(v, g, glogdet, bias, log_scale, gout, gbias, glog_scale, inverse):
    """VJP of :func:`actnorm_map_kernel`; ``v`` is ``z`` (forward) or ``x`` (``inverse``); (N, C·P).

    Partial sums ``part[k, c] = (Σg hi, lo, Σg·v hi, lo)`` per plane (images, ``k = n``) or per
    row block (vectors, ``k`` = row block), then added per channel in ``k`` order.
    """
    n_rows, j_total = v.shape
    c_total = bias.shape[0]
    p_total = j_total // c_total
    e, b = _channel_scales(bias, log_scale)
    mode = 0 if p_total > 1 else (1 if j_total <= NARROW else 2)  # images, narrow, wide vectors
    ncb = (j_total + CB - 1) // CB
    n_rb = (n_rows + RB - 1) // RB
    part = np.zeros((n_rows if mode == 0 else n_rb, c_total, 4))
    n_tasks = n_rows * c_total if mode == 0 else (n_rb if mode == 1 else n_rb * ncb)
    for t in prange(n_tasks):  # one parallel loop (each prange is compiled separately)
        if mode == 0:  # the (n, c) plane
            n = t // c_total
            c = t - n * c_total
            j0 = c * p_total
            j1 = j0 + p_total
            r0, r1, r2, r3 = _plane(v[n, j0:j1], g[n, j0:j1], gout[n, j0:j1], e[c], b[c], inverse)
            pt = part[n, c]
            pt[0] = r0
            pt[1] = r1
            pt[2] = r2
            pt[3] = r3
        elif mode == 1:  # narrow vectors (or P = 0): a block of RB rows, column by column
            rows = slice(t * RB, (t + 1) * RB)
            _columns_narrow(v[rows], g[rows], gout[rows], e, b, part[t], inverse)
        else:  # wide vectors: per-column accumulators over a block of RB rows
            r = t // ncb
            j0 = (t - r * ncb) * CB
            j1 = min(j0 + CB, j_total)
            acc = np.zeros((4, j1 - j0))
            shi, slo, vhi, vlo = acc[0], acc[1], acc[2], acc[3]
            for n in range(r * RB, min(n_rows, (r + 1) * RB)):
                vr, gr, orow = v[n], g[n], gout[n]
                _vjp_segment(vr[j0:j1], gr[j0:j1], orow[j0:j1], e[j0:j1], b[j0:j1], shi, slo, vhi, vlo, inverse)
            for q in range(4):
                for i in range(j1 - j0):
                    part[r, j0 + i, q] = acc[q, i]

    gl_total = _compensated_sum(glogdet) * np.float64(p_total)
    for c in range(c_total):
        sg = 0.0
        sg_lo = 0.0
        sv = 0.0
        sv_lo = 0.0
        for k in range(part.shape[0]):
            pt = part[k, c]
            sg, err = _two_sum(sg, pt[0])
            sg_lo += err + pt[1]
            sv, err = _two_sum(sv, pt[2])
            sv_lo += err + pt[3]
        sv, err = _two_sum(sv, gl_total)
        total_v = sv + (sv_lo + err)
        total_g = sg + sg_lo
        if inverse:
            gbias[c] = -total_g
            glog_scale[c] = -total_v
        else:
            gbias[c] = e[c] * total_g
            glog_scale[c] = total_v


# ------------------------------------------------------------------ Python entry points
def _launch(kernel, size: int, *args) -> None:
    """``kernel(*args)``, serially below :data:`SERIAL_BELOW` elements (:func:`._launch.launch`)."""
    launch(kernel, size, SERIAL_BELOW, *args)


def _rows(name: str, what: str, a, like=None) -> np.ndarray:
    """``a`` as a C-contiguous ``(N, C·P)`` float array, checked against ``like`` (the data)."""
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: {what} must be a NumPy array, got {type(a).__name__}")
    if a.dtype not in (np.float32, np.float64):
        raise ValueError(f"{name}: {what} must be float32 or float64, got {a.dtype}")
    if a.ndim < 2:
        raise ValueError(f"{name}: {what} must have shape (N, C, ...), got {a.shape}")
    if like is not None:
        if a.shape != like.shape:
            raise ValueError(f"{name}: {what} has shape {a.shape}, expected {like.shape}")
        if a.dtype != like.dtype:
            raise ValueError(f"{name}: {what} has dtype {a.dtype}, the data has {like.dtype}")
    return np.ascontiguousarray(a).reshape(a.shape[0], math.prod(a.shape[1:]))


def _channel_param(name: str, what: str, a, like) -> np.ndarray:
    c = like.shape[1]
    if not isinstance(a, np.ndarray) or a.shape != (c,) or a.dtype != like.dtype:
        raise ValueError(
            f"{name}: {what} must be a NumPy {like.dtype} array of shape ({c},), "
            f"got {type(a).__name__} {getattr(a, 'dtype', '')} {getattr(a, 'shape', '')}"
        )
    return np.ascontiguousarray(a)


def _glogdet(name: str, gl, like) -> np.ndarray:
    if not isinstance(gl, np.ndarray) or gl.shape != (like.shape[0],) or gl.dtype != like.dtype:
        raise ValueError(
            f"{name}: log-det cotangent must be a {like.dtype} array of shape ({like.shape[0]},), "
            f"got {getattr(gl, 'dtype', type(gl).__name__)} {getattr(gl, 'shape', '')}"
        )
    return np.ascontiguousarray(gl)


def _map(name, x, bias, log_scale, inverse):
    x2 = _rows(name, "input", x)
    b = _channel_param(name, "bias", bias, x)
    ls = _channel_param(name, "log_scale", log_scale, x)
    out = np.empty_like(x2)
    logdet = np.empty(x2.shape[0], x2.dtype)
    _launch(actnorm_map_kernel, x2.size, x2, b, ls, out, logdet, inverse)
    return out.reshape(x.shape), logdet


def actnorm_forward(x, bias, log_scale):
    """``(z, logdet)``: ``z = (x + bias)·exp(log_scale)`` along axis 1, ``logdet = P·Σ log_scale``."""
    return _map("actnorm_forward", x, bias, log_scale, False)


def actnorm_inverse(z, bias, log_scale):
    """``(x, logdet_inv)``: ``x = z/exp(log_scale) − bias``, ``logdet_inv`` the forward's negated."""
    return _map("actnorm_inverse", z, bias, log_scale, True)


def _vjp(name, v, bias, log_scale, g, glogdet, inverse):
    v2 = _rows(name, "cache array", v)
    g2 = _rows(name, "cotangent", g, v)
    b = _channel_param(name, "bias", bias, v)
    ls = _channel_param(name, "log_scale", log_scale, v)
    gl = _glogdet(name, glogdet, v)
    gout = np.empty_like(v2)
    gb = np.empty_like(b)
    gls = np.empty_like(ls)
    _launch(actnorm_vjp_kernel, v2.size, v2, g2, gl, b, ls, gout, gb, gls, inverse)
    return gout.reshape(v.shape), gb, gls


def actnorm_backward(z, bias, log_scale, gz, glogdet):
    """VJP of :func:`actnorm_forward` whose output was ``z``: ``(gx, g bias, g log_scale)``."""
    return _vjp("actnorm_backward", z, bias, log_scale, gz, glogdet, False)


def actnorm_inverse_backward(x, bias, log_scale, gx, glogdet):
    """VJP of :func:`actnorm_inverse` whose output was ``x``: ``(gz, g bias, g log_scale)``."""
    return _vjp("actnorm_inverse_backward", x, bias, log_scale, gx, glogdet, True)
