"""Convolutional conditioners: init, gradients (finite differences and complex step), protocol."""

import copy

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from harness import EPS64, FD_STEP, _fd_scalar_grad, check_gradients, randomize, rel_err
from rawflow import tree
from rawflow.cnn import ChannelNorm, Conv2d, GlowCNN, ResNetCNN, ZeroConv2d
from test_conv import check_complex_step

# Examples for the costly checks (finite differences): half the profile's, at least 6.
FEW = max(6, settings.default.max_examples // 2)


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


@st.composite
def nets(draw, param_scale=(0.3, 1.0)):
    kind = draw(st.sampled_from(["glow", "resnet"]))
    n = draw(st.integers(1, 2))
    c_in, c_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    width = draw(st.integers(1, 4))
    kernel = draw(st.sampled_from([1, 3]))
    if kind == "glow":
        net = GlowCNN(c_in, c_out, width, kernel=kernel)
    else:
        net = ResNetCNN(c_in, c_out, width, blocks=draw(st.integers(0, 2)), kernel=kernel)
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    x = rng.normal(size=(n, c_in, h, w))
    params = randomize_cnn(net.init(rng, x), rng, draw(st.floats(*param_scale)))
    return net, params, x, rng


def fd_check(net, params, x, rng, rtol=1e-7) -> dict:
    """VJP of ``apply`` vs central differences of ``Σ gy·y`` (input and every parameter)."""
    y, cache = net.apply(params, x)
    gy = rng.normal(size=y.shape)
    gx, gparams = net.backward(params, cache, gy)
    assert tree.structure(gparams) == tree.structure(params)
    x = x.copy()
    params = tree.map(lambda a: a.copy(), params)
    objective = lambda: float(np.sum(gy * net.apply(params, x)[0]))  # noqa: E731
    assume(fd_resolvable([gx] + [a for _, a in tree.leaves(gparams)], float(np.sum(np.abs(gy * y)))))
    errors = {"input": rel_err(gx, _fd_scalar_grad(objective, x))}
    for path, leaf in tree.leaves(params):
        errors[path] = rel_err(tree.get(gparams, path), _fd_scalar_grad(objective, leaf))
    bad = {k: v for k, v in errors.items() if not v <= rtol}
    assert not bad, f"{type(net).__name__}: gradient errors above {rtol}: {bad}"
    return errors


def cs_check(net, params, x, rng, rtol=1e-13) -> dict:
    _, cache = net.apply(params, x)
    return check_complex_step(
        lambda p, u: (net.apply(p, u)[0], np.zeros(u.shape[0])),
        lambda gy, gl: net.backward(params, cache, gy),
        params, x, rng, rtol,
    )


@given(nets())
@settings(max_examples=FEW)
def test_gradients_match_finite_differences(case):
    fd_check(*case)


@given(nets())
def test_float32_matches_float64_within_rounding_bounds(case):
    net, params, x, rng = case

    def run(p, u):
        y, cache = net.apply(p, u)
        return y, np.zeros(u.shape[0], dtype=u.dtype), cache

    r32, r64, (p64, x64, g64, _, _) = float32_and_float64(
        run, lambda p, c, g, gl: net.backward(p, c, g), params, x, rng
    )
    dy, dgx, dgp = net_error_bounds(net, p64, x64, g64)
    assert_within(r32[0], r64[0], dy, "output")
    assert_within(r32[2], r64[2], dgx, "input gradient")
    for path, leaf in tree.leaves(r64[3]):
        assert_within(tree.get(r32[3], path), leaf, tree.get(dgp, path), path)


@given(nets())
def test_gradients_match_complex_step(case):
    cs_check(*case)


@given(nets())
def test_zero_cotangent_and_linearity(case):
    net, params, x, rng = case
    y, cache = net.apply(params, x)
    gx, gp = net.backward(params, cache, np.zeros_like(y))
    assert not np.any(gx) and not any(np.any(a) for _, a in tree.leaves(gp))
    g1, g2 = rng.normal(size=y.shape), rng.normal(size=y.shape)
    gx1, gp1 = net.backward(params, cache, g1)
    gx2, gp2 = net.backward(params, cache, g2)
    gx12, gp12 = net.backward(params, cache, 0.75 * g1 - 1.5 * g2)
    for v12, v1, v2 in [(gx12, gx1, gx2)] + [
        (a, tree.get(gp1, p), tree.get(gp2, p)) for p, a in tree.leaves(gp12)
    ]:
        budget = 64 * np.finfo(float).eps * np.max(np.abs(0.75 * v1) + np.abs(1.5 * v2), initial=0.0)
        assert np.max(np.abs(v12 - (0.75 * v1 - 1.5 * v2)), initial=0.0) <= budget


@given(nets())
@settings(max_examples=FEW)
def test_batch_equals_samples_stacked(case):
    net, params, x, _ = case
    y, _ = net.apply(params, x)
    stacked = np.concatenate([net.apply(params, x[i : i + 1])[0] for i in range(x.shape[0])])
    # GEMMs of different widths may block their sums differently; each output of the 5-layer net
    # then differs by round-off of its sums only (relative to the output scale).
    assert rel_err(stacked, y) <= 1e-12


@pytest.mark.parametrize("make", [lambda: GlowCNN(3, 4, 5), lambda: ResNetCNN(3, 4, 5, blocks=2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fresh_network_outputs_exact_zeros_in_dtype(make, dtype):
    rng = np.random.default_rng(0)
    net = make()
    x = rng.normal(size=(2, 3, 4, 4)).astype(dtype)
    params = net.init(rng, x)
    assert all(a.dtype == dtype for _, a in tree.leaves(params))
    y, _ = net.apply(params, x)
    assert y.dtype == dtype and y.shape == (2, 4, 4, 4) and not np.any(y)


def test_glow_norms_are_data_initialised():
    """Each norm sees zero mean / unit variance per channel on the init batch (Glow's ActNorm init)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 4, 4)) * 5 + 2
    net = GlowCNN(3, 2, 6)
    params = net.init(rng, x)
    h = x
    seen = 0
    for name, layer in net.layers:
        std_in = h.std(axis=(0, 2, 3))
        h = layer.apply(params.get(name), h)[0]
        if isinstance(layer, ChannelNorm):
            np.testing.assert_allclose(h.mean(axis=(0, 2, 3)), 0, atol=1e-14)
            # Glow's scale is 1/(std + 1e-6), so the output std is std/(std + 1e-6), not exactly 1.
            np.testing.assert_allclose(h.std(axis=(0, 2, 3)), std_in / (std_in + 1e-6), rtol=1e-13)
            seen += 1
    assert seen == 2
    assert set(params) == {"conv1", "norm1", "conv2", "norm2", "out"}
    assert "b" not in params["conv1"] and "b" not in params["conv2"]


def test_zero_conv_logscale_factor():
    rng = np.random.default_rng(2)
    layer = ZeroConv2d(2, 3, logscale_factor=3.0)
    x = rng.normal(size=(1, 2, 3, 3))
    p = randomize(layer.init(rng, x), rng, 0.5)
    y, _ = layer.apply(p, x)
    ref, _ = Conv2d(2, 3).apply({"w": p["w"], "b": p["b"]}, x)
    np.testing.assert_allclose(y, ref * np.exp(3 * p["logs"])[None, :, None, None], rtol=1e-14)


def test_complex_step_through_data_initialised_norm():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 2, 3, 3))
    net = ResNetCNN(2, 2, 3, blocks=1)
    params = randomize_cnn(net.init(rng, x), rng, 0.8)
    cs_check(net, params, x, rng)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: GlowCNN(0, 2), "GlowCNN"),
        (lambda: GlowCNN(2, 2, kernel=2), "GlowCNN: kernel"),
        (lambda: ResNetCNN(2, 2, blocks=-1), "ResNetCNN: blocks"),
        (lambda: Conv2d(2, 2, init="xavier"), "Conv2d: unknown init"),
        (lambda: ZeroConv2d(2, 2, kernel=4), "ZeroConv2d: kernel"),
    ],
)
def test_bad_construction_raises(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("net", [GlowCNN(3, 2, 4), ResNetCNN(3, 2, 4)])
def test_wrong_input_channels_raise(net):
    rng = np.random.default_rng(0)
    params = net.init(rng, rng.normal(size=(1, 3, 2, 2)))
    with pytest.raises(ValueError, match=type(net).__name__):
        net.apply(params, rng.normal(size=(1, 2, 2, 2)))
    with pytest.raises(ValueError, match=type(net).__name__):
        net.init(rng, rng.normal(size=(1, 3, 2)))
