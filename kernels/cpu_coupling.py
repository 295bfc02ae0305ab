"""Fused Numba CPU kernels for the elementwise part of affine and additive couplings.

Same maths and the same argument convention as :class:`rawflow.bijectors.coupling.AffineTransform`:
``xb: (N, C, ...)`` is the transformed part, ``h: (N, 2C, ...)`` the raw conditioner output with
``h_s = h[:, :C]`` and ``t = h[:, C:]``; rows are samples, everything after axis 0 is flattened
to ``M`` columns (so ``h``'s row is ``[h_s | t]``, ``2M`` long). ``log s = scale_map(h_s)``::

    forward           y = x·s + t                     logdet[n]     =  Σ_m log s[n, m]
    inverse           x = (y − t)/s                   logdet_inv[n] = −Σ_m log s[n, m]
    backward          gx = gy·s,  gt = gy,   gh_s = (gy·s·x + gℓ[n])·dlog s
    inverse_backward  gy = gx/s,  gt = −gy,  gh_s = (−gx·x − gℓ[n])·dlog s

``backward``/``inverse_backward`` return ``gh = [gh_s | gt]`` shaped like ``h`` (the concatenation
is written in place, not copied). Their "cache" is just ``(xb, h)``: ``s`` and ``dlog s`` are
recomputed, which costs less than reading two stored arrays. ``xb`` is the input of the forward
(= the output of the inverse), so caches from either direction are interchangeable.

One pass per direction, parallel over tasks of rows (``prange``; a task is one row of ≥
:data:`TASK_VALUES` values or enough short rows to make that many), fused log-det reduction. Rows
of at most :data:`NARROW` values take 2-D loops per task (``h`` de-interleaved into ``h_s`` and
``t``, one flat element loop, ``log s`` summed column by column with one TwoSum chain per row, so
the chains of different rows run side by side); longer rows a row function with chunked lanes
(below). Calls under :data:`SERIAL_BELOW` values run on the calling thread. Forward + backward
against the NumPy reference, float32, 2 threads, before → after this layout (one run each,
``sigmoid`` / ``exp``): 4096 × 2 0.70 → 4.0× / 0.82 → 3.3×; 2048 × 8 1.19 → 2.9× / 0.86 → 1.8×;
1024 × 16 1.8 → 2.4× / 1.06 → 1.22×; rows of ≥ 32 values unchanged within ±10 %. Under ~2k
values the reference's few NumPy calls still cost less than two kernel launches (512 × 1:
0.87× / 0.44×).

Per element the scale map is evaluated with :mod:`rawflow.kernels.fastexp` (vectorisable ``exp``,
``tanh``, ``log1p``), identically in every direction and on both paths, so forward/inverse round
trips see the same ``s`` and the two log-dets are exact negations of one sum. Scale maps (``c``
for ``bounded``)::

    exp      log s = h                 s = exp(h)            dlog s = 1
    bounded  log s = c·tanh(h/c)       s = exp(log s)        dlog s = sech²(h/c) = 1 − tanh²(h/c)
    sigmoid  log s = −softplus(−u)     s = sigmoid(u)        dlog s = sigmoid(−u),   u = h + 2

(``sigmoid``: ``s`` is computed directly as ``sigmoid(u)``, which is ``exp(log s)`` exactly and
avoids compounding the error of ``log s``. ``bounded``: ``sech²`` is ``4G/(1 + G)²``, ``G =
e^{−2|h/c|}``, once ``tanh > ½``, where the reference's ``1 − tanh²`` cancels; saturated maps get
a gradient accurate to a few ulp instead of one with an absolute error of ``eps``.)

Log-det accumulation of long rows, in a fixed order (bitwise reproducible, independent of the thread
count): each row goes in chunks of ``CHUNK`` values of ``log s`` through a scratch buffer. float64 rows:
eight Kahan-compensated lanes (the lanes break the dependency chain; the error stays
``≈ eps·Σ|log s|`` whatever the row length). float32 rows: each chunk summed in float64 (a
vectorised loop; its order is fixed for a given CPU's vector width), chunks Kahan-added: within
``2⁻²⁹·Σ|log s|`` of the exact sum of the float32 ``log s`` values. The total is rounded once to
the dtype; the inverse negates that rounded value.

Compilation: lazy, two parallel kernels (forward/inverse, and the two VJPs; the direction and the
scale map are runtime switches hoisted out of the element loops) plus the additive one, per dtype,
cached on disk (``cache=True``). Numba's cache does not see edits to :mod:`.fastexp`: after
changing it, delete this package's ``__pycache__/*.nb[ic]``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ._launch import launch
from .fastexp import fast_exp, fast_log1p_unit, fast_tanh_sech2
from .interface import SCALE_KINDS, KernelCache, scale_kind  # noqa: F401  (KernelCache, SCALE_KINDS re-exported)

#: log s chunk kept in a per-task scratch buffer between the elementwise loop and the reduction.
CHUNK = 512
#: values per parallel task (short rows are grouped; see :func:`rows_per_task`).
TASK_VALUES = 4096
#: below this many elements a kernel runs on the calling thread (waking the pool costs more than
#: the work; measured crossover for these kernels between 4k and 16k values).
SERIAL_BELOW = 1 << 13
#: rows of at most this many values take the flat short-row loops (see :func:`_rows_kernel`);
#: measured: faster than the row functions up to 16 values, slower from 32.
NARROW = 16


# ------------------------------------------------------------------ typed constants
def _one_like(x):
    return 1.0


@overload(_one_like)
def _ov_one_like(x):
    if x == types.float32:
        one32 = np.float32(1.0)
        return lambda x: one32
    if x == types.float64:
        one64 = np.float64(1.0)
        return lambda x: one64
    return None


# ------------------------------------------------------------------ scale maps: hv ↦ (log_s, s, dlog_s)
# Pasted into the row loops as source (see _make_rows): a map written as a function that calls
# both tanh and exp is too big for LLVM's inliner, and a call inside the loop stops vectorisation.
_MAPS = {
    "exp": """
log_s = hv
s = fast_exp(hv)
dlog_s = one
""",
    # dlog s = sech²(h/c) computed without the cancellation of 1 − tanh² near saturation.
    "bounded": """
th, dlog_s = fast_tanh_sech2(hv / c)
log_s = c * th
s = fast_exp(log_s)
""",
    # s = sigmoid(u) directly (= exp(log s) exactly); e ∈ (0, 1] so neither softplus branch overflows.
    "sigmoid": """
u = hv + two
e = fast_exp(-abs(u))
sp = fast_log1p_unit(e)
d = one + e
pos = u >= zero
log_s = -sp if pos else u - sp
s = one / d if pos else e / d
dlog_s = e / d if pos else one / d
""",
}


# ------------------------------------------------------------------ row bodies
@njit(error_model="numpy")
def _kahan(s, comp, v):
    y = v - comp
    t = s + y
    return t, (t - s) - y


@njit(error_model="numpy")
def _kahan_lanes(buf, n, acc):
    """float64 ``buf[:n]`` into eight Kahan lanes ``acc = (s0..s7, c0..c7)``, in a fixed order.

    Error ≤ 2u·Σ|b| per lane (+O(n·u²)). Scalar code (no reassociation allowed), ≈ 0.25 ns/value.
    """
    s0, s1, s2, s3, s4, s5, s6, s7, c0, c1, c2, c3, c4, c5, c6, c7 = acc
    n8 = n - n % 8
    for i in range(n8 // 8):
        b = buf[8 * i : 8 * i + 8]  # constant offsets: plain consecutive loads
        s0, c0 = _kahan(s0, c0, b[0])
        s1, c1 = _kahan(s1, c1, b[1])
        s2, c2 = _kahan(s2, c2, b[2])
        s3, c3 = _kahan(s3, c3, b[3])
        s4, c4 = _kahan(s4, c4, b[4])
        s5, c5 = _kahan(s5, c5, b[5])
        s6, c6 = _kahan(s6, c6, b[6])
        s7, c7 = _kahan(s7, c7, b[7])
    for i in range(n8, n):
        s0, c0 = _kahan(s0, c0, buf[i])
    return (s0, s1, s2, s3, s4, s5, s6, s7, c0, c1, c2, c3, c4, c5, c6, c7)


@njit(error_model="numpy", fastmath={"reassoc"})
def _widened_sum(buf, n):
    """``Σ buf[:n]`` in float64, in whatever order LLVM vectorises it (reassociation allowed here only).

    For float32 values the error is ≤ n·u64·Σ|b|, under 2⁻²⁹·Σ|b| for n < 2²⁴: far below float32's
    rounding, so the order does not matter at float32 precision (it is still fixed per machine).
    """
    s = 0.0
    for i in range(n):
        s += np.float64(buf[i])
    return s


@njit(error_model="numpy")
def _float32_chunks(buf, n, acc):
    s0, c0 = _kahan(acc[0], acc[8], _widened_sum(buf, n))
    z = 0.0
    return (s0, z, z, z, z, z, z, z, c0, z, z, z, z, z, z, z)


def _accumulate(buf, n, acc):
    """Add the chunk ``buf[:n]`` of ``log s`` values to the row's float64 accumulator state."""


@overload(_accumulate)
def _ov_accumulate(buf, n, acc):
    if buf.dtype == types.float64:
        return lambda buf, n, acc: _kahan_lanes(buf, n, acc)
    if buf.dtype == types.float32:
        return lambda buf, n, acc: _float32_chunks(buf, n, acc)
    return None


@njit(error_model="numpy")
def _lane_total(acc):
    """``Σ_j (s_j − c_j)`` with Neumaier's compensation: one rounding of the lane total, in effect."""
    total = 0.0
    comp = 0.0
    for j in range(16):
        v = acc[j] if j < 8 else -acc[j]
        t = total + v
        if abs(total) >= abs(v):
            comp += (total - t) + v
        else:
            comp += (v - t) + total
        total = t
    return total + comp


_ROW_SOURCE = """
def forward_row(x, h, off_t, y, c, inverse, buf):
    one = _one_like(c)
    two = one + one
    zero = one - one
    m_total = x.shape[0]
    z = 0.0
    acc = (z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z)
    for j0 in range(0, m_total, CHUNK):
        j1 = min(j0 + CHUNK, m_total)
        n = j1 - j0
        # Chunk views indexed from 0: LLVM sees contiguous, non-negative indices (no gathers).
        xc, hc, tc, yc = x[j0:j1], h[j0:j1], h[off_t + j0 : off_t + j1], y[j0:j1]
        if inverse:
            for j in range(n):
                hv = hc[j]
                MAP
                yc[j] = (xc[j] - tc[j]) / s
                buf[j] = log_s
        else:
            for j in range(n):
                hv = hc[j]
                MAP
                yc[j] = xc[j] * s + tc[j]
                buf[j] = log_s
        acc = _accumulate(buf, n, acc)
    return _lane_total(acc)


def backward_row(x, h, off_t, g, gl, gout, gh, c, inverse):
    one = _one_like(c)
    two = one + one
    zero = one - one
    m = x.shape[0]
    hc, ghs, gt = h[:m], gh[:m], gh[off_t : off_t + m]
    if inverse:
        for j in range(m):
            hv = hc[j]
            MAP
            gy = g[j] / s
            gout[j] = gy
            ghs[j] = (-(g[j] * x[j]) - gl) * dlog_s
            gt[j] = -gy
    else:
        for j in range(m):
            hv = hc[j]
            MAP
            gys = g[j] * s
            gout[j] = gys
            ghs[j] = (gys * x[j] + gl) * dlog_s
            gt[j] = g[j]


def forward_narrow(x, h, out, logdet, r0, r1, c, inverse, hs, tt, ls, acc, err):
    one = _one_like(c)
    two = one + one
    zero = one - one
    m = x.shape[1]
    rows = r1 - r0
    k = 0
    for n in range(r0, r1):  # de-interleave [h_s | t]: the element loop below is then flat
        for j in range(m):
            hs[k] = h[n, j]
            tt[k] = h[n, m + j]
            k += 1
    xf = x.reshape(x.size)[r0 * m : r1 * m]
    of = out.reshape(out.size)[r0 * m : r1 * m]
    if inverse:
        for k in range(rows * m):
            hv = hs[k]
            MAP
            of[k] = (xf[k] - tt[k]) / s
            ls[k] = log_s
    else:
        for k in range(rows * m):
            hv = hs[k]
            MAP
            of[k] = xf[k] * s + tt[k]
            ls[k] = log_s
    for i in range(rows):
        acc[i] = 0.0
        err[i] = 0.0
    # column by column: the TwoSum chains of different rows are independent, so this loop runs
    # across rows (no dependency from one iteration to the next)
    for j in range(m):
        for i in range(rows):
            v = np.float64(ls[i * m + j])
            a = acc[i]
            t = a + v
            bp = t - a
            err[i] += (a - (t - bp)) + (v - bp)
            acc[i] = t
    for i in range(rows):
        logdet[r0 + i] = acc[i] + err[i]
        if inverse:
            logdet[r0 + i] = -logdet[r0 + i]


def backward_narrow(x, h, g, glogdet, gout, gh, r0, r1, c, inverse, hs, glb, ghs, gtb):
    one = _one_like(c)
    two = one + one
    zero = one - one
    m = x.shape[1]
    rows = r1 - r0
    k = 0
    for n in range(r0, r1):
        gl = glogdet[n]
        for j in range(m):
            hs[k] = h[n, j]
            glb[k] = gl
            k += 1
    xf = x.reshape(x.size)[r0 * m : r1 * m]
    gf = g.reshape(g.size)[r0 * m : r1 * m]
    of = gout.reshape(gout.size)[r0 * m : r1 * m]
    if inverse:
        for k in range(rows * m):
            hv = hs[k]
            MAP
            gy = gf[k] / s
            of[k] = gy
            ghs[k] = (-(gf[k] * xf[k]) - glb[k]) * dlog_s
            gtb[k] = -gy
    else:
        for k in range(rows * m):
            hv = hs[k]
            MAP
            gys = gf[k] * s
            of[k] = gys
            ghs[k] = (gys * xf[k] + glb[k]) * dlog_s
            gtb[k] = gf[k]
    k = 0
    for n in range(r0, r1):  # interleave back into gh = [gh_s | gt]
        for j in range(m):
            gh[n, j] = ghs[k]
            gh[n, m + j] = gtb[k]
            k += 1
"""


def _make_rows(scale: str):
    """``(forward_row, backward_row, forward_narrow, backward_narrow)`` for one scale map, its body
    pasted into each element loop (the ``*_narrow`` pair: a task's block of short rows).

    ``forward_row`` does ``y = x·s + t`` (``(x − t)/s`` when ``inverse``) and returns ``Σ log s``
    in float64; ``backward_row`` writes the VJP (``x`` is the forward's input, ``g`` the cotangent
    of the direction's output). ``h`` is the row ``[h_s | t]``, ``t`` starting at ``off_t``.
    """
    lines = []
    for line in _ROW_SOURCE.splitlines():
        if line.strip() == "MAP":
            indent = line[: len(line) - len(line.lstrip())]
            lines += [indent + m for m in _MAPS[scale].strip().splitlines()]
        else:
            lines.append(line)
    src = "\n".join(lines)
    scope = {
        "np": np, "CHUNK": CHUNK, "_one_like": _one_like, "_accumulate": _accumulate, "_lane_total": _lane_total,
        "fast_exp": fast_exp, "fast_tanh_sech2": fast_tanh_sech2, "fast_log1p_unit": fast_log1p_unit,
    }
    exec(compile(src, f"<rawflow.kernels.cpu_coupling rows: {scale}>", "exec"), scope)
    jit = njit(error_model="numpy")
    return tuple(jit(scope[name]) for name in ("forward_row", "backward_row", "forward_narrow", "backward_narrow"))


_fwd_exp, _bwd_exp, _nfwd_exp, _nbwd_exp = _make_rows("exp")
_fwd_bounded, _bwd_bounded, _nfwd_bounded, _nbwd_bounded = _make_rows("bounded")
_fwd_sigmoid, _bwd_sigmoid, _nfwd_sigmoid, _nbwd_sigmoid = _make_rows("sigmoid")


# ------------------------------------------------------------------ parallel kernels
def _rows_kernel(x, h, out, logdet, kind, c, inverse):
    """``out = x·s + t`` (``(x − t)/s`` if ``inverse``), ``logdet = ±Σ log s``; 2-D C arrays, h: (N, 2M).

    Rows go in tasks of :func:`rows_per_task` rows. Rows of at most :data:`NARROW` values run
    2-D loops over the task's rows: the elementwise pass keeps ``log s`` in a task buffer, then
    one TwoSum-compensated float64 sum per row, accumulated column by column so the rows' chains
    run side by side (per-row calls, slices and chunked lanes would cost more than the few values
    of a row; error ≤ 2u·Σ|log s| + O(m u²) per row, as for a lane of the long-row path). Longer
    rows: the chunked, lane-summed row function with one scratch buffer per task.
    """
    n_rows, m = x.shape
    per = rows_per_task(m)
    n_tasks = (n_rows + per - 1) // per
    if m <= NARROW:
        for task in prange(n_tasks):
            r0 = task * per
            r1 = min(n_rows, r0 + per)
            hs = np.empty(per * m, dtype=x.dtype)
            tt = np.empty(per * m, dtype=x.dtype)
            ls = np.empty(per * m, dtype=x.dtype)
            acc = np.empty(per, dtype=np.float64)
            err = np.empty(per, dtype=np.float64)
            if kind == 0:
                _nfwd_exp(x, h, out, logdet, r0, r1, c, inverse, hs, tt, ls, acc, err)
            elif kind == 1:
                _nfwd_bounded(x, h, out, logdet, r0, r1, c, inverse, hs, tt, ls, acc, err)
            else:
                _nfwd_sigmoid(x, h, out, logdet, r0, r1, c, inverse, hs, tt, ls, acc, err)
    else:
        for task in prange(n_tasks):
            buf = np.empty(CHUNK, dtype=x.dtype)
            for n in range(task * per, min(n_rows, (task + 1) * per)):
                if kind == 0:
                    total = _fwd_exp(x[n], h[n], m, out[n], c, inverse, buf)
                elif kind == 1:
                    total = _fwd_bounded(x[n], h[n], m, out[n], c, inverse, buf)
                else:
                    total = _fwd_sigmoid(x[n], h[n], m, out[n], c, inverse, buf)
                logdet[n] = total
                if inverse:  # negate the rounded sum: forward + inverse log-dets cancel exactly
                    logdet[n] = -logdet[n]


def _rows_vjp_kernel(x, h, g, glogdet, gout, gh, kind, c, inverse):
    """VJP of :func:`affine_rows_kernel` (``inverse`` selects the direction); writes ``gout``, ``gh``.

    Short rows (≤ :data:`NARROW` values): a task de-interleaves ``h_s``, runs one flat element
    loop, and interleaves ``[gh_s | gt]`` back; longer rows: the row function."""
    n_rows, m = x.shape
    per = rows_per_task(m)
    n_tasks = (n_rows + per - 1) // per
    if m <= NARROW:
        for task in prange(n_tasks):
            r0 = task * per
            r1 = min(n_rows, r0 + per)
            hs = np.empty(per * m, dtype=x.dtype)
            glb = np.empty(per * m, dtype=x.dtype)
            ghs = np.empty(per * m, dtype=x.dtype)
            gtb = np.empty(per * m, dtype=x.dtype)
            if kind == 0:
                _nbwd_exp(x, h, g, glogdet, gout, gh, r0, r1, c, inverse, hs, glb, ghs, gtb)
            elif kind == 1:
                _nbwd_bounded(x, h, g, glogdet, gout, gh, r0, r1, c, inverse, hs, glb, ghs, gtb)
            else:
                _nbwd_sigmoid(x, h, g, glogdet, gout, gh, r0, r1, c, inverse, hs, glb, ghs, gtb)
    else:
        for task in prange(n_tasks):
            for n in range(task * per, min(n_rows, (task + 1) * per)):
                if kind == 0:
                    _bwd_exp(x[n], h[n], m, g[n], glogdet[n], gout[n], gh[n], c, inverse)
                elif kind == 1:
                    _bwd_bounded(x[n], h[n], m, g[n], glogdet[n], gout[n], gh[n], c, inverse)
                else:
                    _bwd_sigmoid(x[n], h[n], m, g[n], glogdet[n], gout[n], gh[n], c, inverse)


@njit(error_model="numpy")
def rows_per_task(m):
    """Rows per parallel task: one for rows of ≥ :data:`TASK_VALUES` values, else enough rows to
    make that many (a task per short row would cost more in scheduling than its work)."""
    return max(1, TASK_VALUES // max(m, 1))


_jit_parallel = njit(parallel=True, fastmath=False, error_model="numpy", cache=True)
affine_rows_kernel = _jit_parallel(_rows_kernel)
affine_rows_vjp_kernel = _jit_parallel(_rows_vjp_kernel)


def _additive_kernel(x, t, out, sign):
    """``out = x + sign·t`` row by row (``sign`` = ±1 selects forward/inverse)."""
    n_rows, m = x.shape
    for n in prange(n_rows):
        xr, tr, orow = x[n], t[n], out[n]
        if sign > 0:
            for j in range(m):
                orow[j] = xr[j] + tr[j]
        else:
            for j in range(m):
                orow[j] = xr[j] - tr[j]


additive_rows_kernel = _jit_parallel(_additive_kernel)


def _launch(kernel, size: int, *args) -> None:
    """``kernel(*args)``, serially below :data:`SERIAL_BELOW` elements (:func:`._launch.launch`)."""
    launch(kernel, size, SERIAL_BELOW, *args)


# ------------------------------------------------------------------ Python entry points
def _rows(name: str, what: str, a, like=None, width: int = 1) -> np.ndarray:
    """``a`` as a C-contiguous ``(N, width·M)`` float array, checked against ``like`` (the x block)."""
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: {what} must be a NumPy array, got {type(a).__name__}")
    if a.dtype not in (np.float32, np.float64):
        raise ValueError(f"{name}: {what} must be float32 or float64, got {a.dtype}")
    if a.ndim < 2:
        raise ValueError(f"{name}: {what} must have shape (N, C, ...), got {a.shape}")
    if like is not None:
        want = (like.shape[0], width * like.shape[1]) + like.shape[2:]
        if a.shape != want:
            raise ValueError(f"{name}: {what} has shape {a.shape}, expected {want}")
        if a.dtype != like.dtype:
            raise ValueError(f"{name}: {what} has dtype {a.dtype}, x has {like.dtype}")
    # explicit sizes: a -1 cannot be inferred from an empty batch (N = 0)
    return np.ascontiguousarray(a).reshape(a.shape[0], math.prod(a.shape[1:]))


def _glogdet(name: str, gl, like) -> np.ndarray:
    if not isinstance(gl, np.ndarray) or gl.shape != (like.shape[0],) or gl.dtype != like.dtype:
        raise ValueError(
            f"{name}: log-det cotangent must be a {like.dtype} array of shape ({like.shape[0]},), "
            f"got {getattr(gl, 'dtype', type(gl).__name__)} {getattr(gl, 'shape', '')}"
        )
    return np.ascontiguousarray(gl)


def affine_forward(xb, h, scale="exp"):
    """``(yb, logdet)``: ``yb = xb·s + t``, ``logdet = Σ log s`` per row. ``h = [h_s | t]`` on axis 1."""
    kind, c = scale_kind(scale)
    x = _rows("affine_forward", "x", xb)
    hh = _rows("affine_forward", "h", h, xb, 2)
    y = np.empty_like(x)
    ld = np.empty(x.shape[0], x.dtype)
    _launch(affine_rows_kernel, x.size, x, hh, y, ld, kind, x.dtype.type(c), False)
    return y.reshape(xb.shape), ld


def affine_inverse(yb, h, scale="exp"):
    """``(xb, logdet_inv)``: ``xb = (yb − t)/s``, ``logdet_inv = −Σ log s`` (the forward's, negated)."""
    kind, c = scale_kind(scale)
    y = _rows("affine_inverse", "y", yb)
    hh = _rows("affine_inverse", "h", h, yb, 2)
    x = np.empty_like(y)
    ld = np.empty(y.shape[0], y.dtype)
    _launch(affine_rows_kernel, y.size, y, hh, x, ld, kind, y.dtype.type(c), True)
    return x.reshape(yb.shape), ld


def affine_backward(xb, h, gyb, glogdet, scale="exp"):
    """VJP of :func:`affine_forward` at ``xb``: ``(gxb, gh)`` with ``gh = [gh_s | gt]`` shaped like ``h``."""
    return _vjp("affine_backward", xb, h, gyb, glogdet, scale, False)


def affine_inverse_backward(xb, h, gxb, glogdet, scale="exp"):
    """VJP of :func:`affine_inverse` whose output was ``xb``: ``(gyb, gh)``, ``gh = [gh_s | gt]``."""
    return _vjp("affine_inverse_backward", xb, h, gxb, glogdet, scale, True)


def _vjp(name, xb, h, g, glogdet, scale, inverse):
    kind, c = scale_kind(scale)
    x = _rows(name, "x", xb)
    hh = _rows(name, "h", h, xb, 2)
    gg = _rows(name, "cotangent", g, xb, 1)
    gl = _glogdet(name, glogdet, xb)
    gout = np.empty_like(x)
    gh = np.empty_like(hh)
    _launch(affine_rows_vjp_kernel, x.size, x, hh, gg, gl, gout, gh, kind, x.dtype.type(c), inverse)
    return gout.reshape(xb.shape), gh.reshape(h.shape)


def additive_forward(xb, t):
    """``(xb + t, zeros)``: NICE's coupling, log-det identically 0."""
    return _additive("additive_forward", xb, t, 1)


def additive_inverse(yb, t):
    """``(yb − t, zeros)``."""
    return _additive("additive_inverse", yb, t, -1)


def _additive(name, xb, t, sign):
    x = _rows(name, "x", xb)
    tt = _rows(name, "t", t, xb, 1)
    out = np.empty_like(x)
    _launch(additive_rows_kernel, x.size, x, tt, out, sign)
    return out.reshape(xb.shape), np.zeros(x.shape[0], x.dtype)
