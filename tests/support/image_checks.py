"""Oracles and bounds shared by the image-layer tests (convolutions, CNN conditioners, image
couplings, the split layer): the complex-step check of a hand-written VJP, CNN parameter
randomisation, finite-difference resolvability and float32 rounding budgets."""

import copy

import numpy as np
from hypothesis import assume

from harness import EPS64, FD_STEP, check_gradients
from rawflow import tree
from rawflow.nets.cnn import ChannelNorm, Conv2d, ZeroConv2d

CS_STEP = 1e-20  # complex step: no subtractive cancellation, so the step can be tiny


def check_complex_step(run, vjp, params, x, rng, rtol=1e-13) -> dict:
    """Hand-written VJP vs complex-step directional derivatives, one random direction per quantity.

    ``run(params, x) -> (out, logdet)`` and ``vjp(gout, glogdet) -> (gx, gparams)`` at ``(params, x)``.
    For ``L = Σ g·out + Σ gλ·logdet`` and a direction ``v`` of one quantity ``q``,
    ``Im L(q + i·h·v) / h = ⟨∂L/∂q, v⟩ + O(h²)`` with no subtractive cancellation in the step. Both
    sides are still *sums* that can cancel, so the bound is ``rtol`` times the larger of the two sums
    of absolute terms: ``Σ|∂L/∂q ⊙ v|`` and ``(Σ|g ⊙ Im out| + Σ|gλ ⊙ Im logdet|) / h``.
    Returns ``{quantity: error / Σ|terms|}``.
    """
    out, logdet = run(params, x)
    g = rng.normal(size=out.shape)
    gl = rng.normal(size=logdet.shape)
    gx, gparams = vjp(g, gl)
    xc = x.astype(np.complex128)
    pc = tree.map(lambda a: a.astype(np.complex128), params)
    quantities = [("input", gx, x.shape)] + [(p, tree.get(gparams, p), a.shape) for p, a in tree.leaves(params)]
    errors = {}
    for name, grad, shape in quantities:
        v = rng.normal(size=shape)
        if name == "input":
            o, ld = run(pc, xc + 1j * CS_STEP * v)
        else:
            o, ld = run(tree.set(pc, name, tree.get(pc, name) + 1j * CS_STEP * v), xc)
        cs = (np.sum(g * o) + np.sum(gl * ld)).imag / CS_STEP
        terms = max(np.sum(np.abs(grad * v)), (np.sum(np.abs(g * o.imag)) + np.sum(np.abs(gl * ld.imag))) / CS_STEP)
        err = abs(cs - np.sum(grad * v))
        errors[name] = err / terms if terms > 0 else (0.0 if err == 0 else np.inf)
    bad = {k: e for k, e in errors.items() if not e <= rtol}
    assert not bad, f"complex-step errors above {rtol}: {bad}"
    return errors


def randomize_cnn(params: dict, rng: np.random.Generator, scale: float) -> dict:
    """``N(0, scale²)`` leaves, with conv weights ``w`` divided by √fan_in and a ZeroConv2d's ``logs``
    by its log-scale factor 3, so every activation stays ``O(scale)`` at any depth.

    Plain ``N(0, s²)`` draws either overflow ``exp`` (``exp(3·logs)`` after sums of ``9·C`` terms) or
    make deep gradients tiny products of small weights; a tiny gradient is then below the resolution
    of central differences (absolute error ≈ 1e-11·|L|). Neither is a property of the maths.
    """

    def walk(node):
        out = {}
        for key, leaf in node.items():
            if isinstance(leaf, dict):
                out[key] = walk(leaf)
                continue
            a = rng.normal(scale=scale, size=leaf.shape)
            if key == "w":
                a = a / np.sqrt(leaf[0].size)
            elif key == "logs" and "w" in node:
                a = a / 3
            out[key] = a.astype(leaf.dtype)
        return out

    return walk(params)


# Central differences with h = eps^(1/3) carry the rounding noise of two evaluations of L divided by
# h. That noise is ≳ eps·S/h (S = Σ|terms| of L, FD_NOISE·S; the harness allows 4·eps·S/h) and, for
# deep conditioners, several times more: the network's own rounding (measured up to 5·eps·S/h, on
# leaves the complex step confirms to 1e-14). A gradient is then checkable to 1e-7 relative only if
# its ‖·‖∞ reaches ≈ 5·FD_NOISE·S/1e-7 ≈ 2e-3·S; we ask for FD_RESOLUTION = 1e-2 (5× margin). Exactly
# zero gradients (dead ReLU channels) are checkable: FD gives exact zeros there. Cases with a smaller
# leaf are skipped by `assume` — narrow nets (width 1–3) often have one, through cancellation across
# few pixels — and every case, skipped or not, is also checked by the complex-step tests.
FD_NOISE = EPS64 / FD_STEP
FD_RESOLUTION = 1e-2
assert FD_RESOLUTION >= 5 * 5 * FD_NOISE / 1e-7


def fd_resolvable(grads, scale: float) -> bool:
    """Whether central differences can check every array in ``grads`` to 1e-7, ``scale`` being the
    objective's ``S = Σ|terms|`` (see FD_RESOLUTION)."""
    return all(not np.any(g) or np.max(np.abs(g)) >= FD_RESOLUTION * scale for g in grads)


def check_gradients_resolvable(layer, params, x, rng, direction: str) -> dict:
    """``harness.check_gradients`` on cases whose gradients central differences can resolve."""
    probe = copy.deepcopy(rng)  # the same cotangents check_gradients will draw
    run = layer.forward if direction == "forward" else layer.inverse
    vjp = layer.backward if direction == "forward" else layer.inverse_backward
    out, logdet, cache = run(params, x)
    g, gl = probe.normal(size=out.shape), probe.normal(size=logdet.shape)
    for gz in (g, np.zeros_like(g)):  # the full objective and the log-det-only one
        gx, gp = vjp(params, cache, gz, gl)
        scale = float(np.sum(np.abs(gz * out)) + np.sum(np.abs(gl * logdet)))
        assume(fd_resolvable([gx] + [a for _, a in tree.leaves(gp)], scale))
    return check_gradients(layer, params, x, rng, direction)


U32 = float(np.finfo(np.float32).eps) / 2  # unit round-off of float32
EXP_ULPS = 4  # NumPy's float32 exp/log/tanh are within a few ulp; counted as 4 roundings each


# ------------------------------------------------------------------ float32 vs float64
# Float32 results are compared with float64 ones at the same (float32-representable) inputs,
# parameters and cotangents, element by element, against first-order *a-priori* bounds: a sum of K
# products errs by ≤ γ_K·Σ|terms| ≈ K·u·Σ|terms| in any order (Higham), and errors propagate to
# later layers through |Jacobian| ≤ the magnitude network below. Normwise "1e-6 relative" bars do
# not hold in general (measured up to 4e-6 for these nets: sums that cancel, exp of a sum), and a
# perturbation estimate (±eps32 on inputs and parameters only) misses the rounding inside deep
# nets (measured up to 148× too small); the magnitude bound below is always above the error
# (measured ≤ 4·u·M against a bound of ≥ 20·u·M).


def float32_and_float64(run, vjp, params, x, rng):
    """Run forward and VJP in float32 and in float64 at the same point; dtypes checked.

    ``run(p, u) -> (out, logdet, cache)``, ``vjp(p, cache, g, gλ) -> (gx, gparams)``. Returns
    ``(r32, r64, point)`` with ``r = (out, logdet, gx, gparams)`` and ``point = (p64, x64, g64, gλ64,
    cache64)``, the float64 values of the shared point.
    """
    p32 = tree.map(lambda a: a.astype(np.float32), params)
    p64 = tree.map(lambda a: a.astype(np.float64), p32)
    x32 = x.astype(np.float32)
    x64 = x32.astype(np.float64)
    out32, ld32, c32 = run(p32, x32)
    out64, ld64, c64 = run(p64, x64)
    g = rng.normal(size=out64.shape).astype(np.float32)
    gl = rng.normal(size=ld64.shape).astype(np.float32)
    gx32, gp32 = vjp(p32, c32, g, gl)
    gx64, gp64 = vjp(p64, c64, g.astype(np.float64), gl.astype(np.float64))
    for name, a in [("output", out32), ("log-det", ld32), ("input gradient", gx32)] + list(tree.leaves(gp32)):
        assert a.dtype == np.float32, f"float32 run returned {name} as {a.dtype}"
    return (out32, ld32, gx32, gp32), (out64, ld64, gx64, gp64), (p64, x64, g.astype(np.float64),
                                                                   gl.astype(np.float64), c64)


def in_float32_range(*arrays) -> bool:
    """Whether every nonzero magnitude lies in [1e-30, 1e30]: the bounds are about rounding, not
    about float32 overflow or underflow (which large random scales reach through ``exp``)."""
    for a in arrays:
        m = np.abs(np.asarray(a, np.float64))
        m = m[m != 0]
        if not (np.all(np.isfinite(m)) and np.all(m >= 1e-30) and np.all(m <= 1e30)):
            return False
    return True


def assert_within(actual, expected, bound, what: str) -> float:
    """Elementwise ``|actual − expected| ≤ bound``; returns the worst ratio (0 where both are 0)."""
    err = np.abs(np.asarray(actual, np.float64) - expected)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(err == 0, 0.0, err / bound)
    worst = float(np.max(ratio, initial=0.0))
    assert worst <= 1, f"{what}: float32 error {worst:.2f}× its first-order bound"
    return worst


def rounding_counts(net, params, pixels: int) -> tuple[float, float]:
    """First-order rounding counts ``(F, B)`` of a CNN: |δy| ≤ F·u·M_y, |δg| ≤ (F + B)·u·G.

    Per layer: a convolution sums ``C_in·k² + 1`` terms (forward), ``C_out·k²`` (input gradient) and
    ``N·H·W`` (parameter gradients); a norm adds, exponentiates and multiplies; a ZeroConv2d also
    rounds ``3·logs`` (an absolute error ``3|logs|·u`` in the exponent, relative in the result).
    The forward errors enter the backward through the cache, hence ``F + B`` for gradients.
    """
    fwd = bwd = 0.0
    for name, layer in getattr(net, "layers", [(None, net)]):
        p = params.get(name) if name is not None else params
        if hasattr(layer, "layers"):  # nested sequence or residual block
            f, b = rounding_counts(layer, p, pixels)
            fwd, bwd = fwd + f + 1, bwd + b + 1
        elif isinstance(layer, (Conv2d, ZeroConv2d)):
            k2 = layer.kernel**2
            extra = 0.0
            if isinstance(layer, ZeroConv2d):
                extra = 3 * float(np.max(np.abs(p["logs"]))) + EXP_ULPS + 2
            fwd += layer.in_features * k2 + 1 + extra
            bwd += max(layer.out_features * k2, pixels) + 1 + extra
        elif isinstance(layer, ChannelNorm):
            fwd += EXP_ULPS + 2
            bwd += pixels + EXP_ULPS + 2
    return fwd, bwd


def magnitudes(net, params, x, gy=None):
    """The network on ``|x|`` with ``|params|`` (and its VJP on ``|gy|``): elementwise upper bounds of
    ``Σ|terms|`` at every layer, since ``exp(|ℓ|) ≥ exp(ℓ)`` and ``0 ≤ ReLU' ≤ 1``."""
    pa = tree.map(np.abs, params)
    m, cache = net.apply(pa, np.abs(x))
    if gy is None:
        return m
    gm, gpm = net.backward(pa, cache, np.abs(gy))
    return m, gm, gpm


def net_error_bounds(net, params, x, gh=None, dgh=None):
    """First-order float32 error bounds of a conditioner: ``δh`` (and, given the cotangent ``gh`` with
    its own error ``δgh``, the bounds ``(δg_in, δgparams)`` of its VJP)."""
    pixels = x.shape[0] * x.shape[2] * x.shape[3]
    f, b = rounding_counts(net, params, pixels)
    if gh is None:
        return f * U32 * magnitudes(net, params, x)
    cot = (f + b) * U32 * np.abs(gh) + (0 if dgh is None else dgh)
    m, gm, gpm = magnitudes(net, params, x, cot)
    return f * U32 * m, gm, gpm
