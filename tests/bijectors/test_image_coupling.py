"""Image couplings: channel split, channel rotation, checkerboard (every transform and scale map)."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from harness import (
    EPS64,
    FD_STEP,
    check_logdet,
    check_logdet_cancels,
    check_roundtrip,
    check_structure,
    rel_err,
)
from rawflow import Chain, tree
from rawflow.nets.cnn import GlowCNN, ResNetCNN
from rawflow.bijectors.coupling import AffineTransform
from rawflow.bijectors.image_coupling import ChannelCoupling, ChannelRotationCoupling, CheckerboardCoupling
from rawflow.bijectors.split import Split
from rawflow.bijectors.squeeze import Squeeze
from support.image_checks import (
    EXP_ULPS,
    U32,
    assert_within,
    check_gradients_resolvable,
    float32_and_float64,
    in_float32_range,
    net_error_bounds,
    randomize_cnn,
)
from support.image_checks import check_complex_step

# Examples for the costly checks (finite differences): half the profile's, at least 6.
FEW = max(6, settings.default.max_examples // 2)

TRANSFORMS = [("additive", "exp"), ("affine", "exp"), ("affine", "bounded"), ("affine", "sigmoid")]


@st.composite
def couplings(draw, kind=None, param_scale=(0.3, 1.0)):
    kind = kind or draw(st.sampled_from(["channel", "rotation", "checkerboard"]))
    transform, scale = draw(st.sampled_from(TRANSFORMS))
    n = draw(st.integers(1, 2))
    c = draw(st.integers(1 if kind == "checkerboard" else 2, 4))
    h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    if kind == "checkerboard" and h * w == 1:
        w = 2  # a single pixel has nothing to transform or nothing to condition on
    flip = draw(st.booleans())
    mult = 1 if transform == "additive" else 2
    size_a = {"channel": c - c // 2 if flip else c // 2, "rotation": 1, "checkerboard": c}[kind]
    size_b = c - size_a if kind != "checkerboard" else c
    width = draw(st.integers(1, 3))
    if draw(st.booleans()):
        net = GlowCNN(size_a, mult * size_b, width)
    else:  # one residual block keeps the finite-difference checks fast; test_cnn covers deeper nets
        net = ResNetCNN(size_a, mult * size_b, width, blocks=1)
    kwargs = dict(transform=transform, scale=scale, conditioner=net)
    if kind == "channel":
        layer = ChannelCoupling(c, flip=flip, **kwargs)
    elif kind == "rotation":
        layer = ChannelRotationCoupling(c, step=draw(st.integers(0, 7)), **kwargs)
    else:
        layer = CheckerboardCoupling(c, flip=flip, **kwargs)
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    x = rng.normal(size=(n, c, h, w))
    params = randomize_cnn(layer.init(rng, x), rng, draw(st.floats(*param_scale)))
    return layer, params, x, rng


def transform_cache(layer, cache):
    return cache[1]  # (net_cache, tcache) for channel couplings, (net_cache, tcache, C_h) for checkerboard


def kappa(layer, params, x):
    """Round-off amplification of the inverse: 1 / min s over the batch (1 for additive)."""
    _, _, cache = layer.forward(params, x)
    tcache = transform_cache(layer, cache)
    if tcache is None or tcache[1].size == 0:
        return 1.0
    return max(1.0, float(np.max(1 / tcache[1])))


def copied_mask(layer, x):
    """Boolean array shaped like ``x``: True where the layer copies its input."""
    mask = np.zeros(x.shape, dtype=bool)
    if isinstance(layer, CheckerboardCoupling):
        i, j = np.indices(x.shape[2:])
        mask[:] = ((i + j) % 2 == layer.parity)[None, None]
    else:
        mask[:, layer.partition.idx_a] = True
    return mask


def cast(params, x, dtype):
    return tree.map(lambda a: a.astype(dtype), params), x.astype(dtype)


@given(couplings(), st.sampled_from([np.float32, np.float64]))
def test_roundtrip_both_directions(case, dtype):
    layer, params, x, _ = case
    params, x = cast(params, x, dtype)
    # y = x·s + t, x' = (y − t)/s: |x' − x| ≤ eps(5|x| + |y|/s) to first order (as for vector couplings).
    check_roundtrip(layer, params, x, bound_ulps=6, kappa=kappa(layer, params, x))


@given(couplings(), st.sampled_from([np.float32, np.float64]))
def test_logdets_cancel_exactly_and_copied_part_is_bit_identical(case, dtype):
    layer, params, x, _ = case
    params, x = cast(params, x, dtype)
    check_logdet_cancels(layer, params, x, exact=True)
    z, logdet, _ = layer.forward(params, x)
    assert z.dtype == dtype and logdet.dtype == dtype and z.shape == x.shape
    m = copied_mask(layer, x)
    assert np.array_equal(z[m], x[m])
    x_back, _, _ = layer.inverse(params, z)
    assert np.array_equal(x_back[m], x[m])


class Positions:
    """Where a coupling copies and transforms, as gathers/scatters between full arrays and the
    transform's ``b`` layout (test-side re-implementation, for the float32 bounds)."""

    def __init__(self, layer, x):
        self.layer, self.checker = layer, isinstance(layer, CheckerboardCoupling)
        if self.checker:
            self.mask = copied_mask(layer, x[:1, :1])  # (1, 1, H, W)
            self.idx = np.flatnonzero(~self.mask.ravel())

    def net_input(self, x):
        return np.where(self.mask, x, 0.0) if self.checker else self.layer.partition.split(x)[0]

    def b(self, a):
        """Transformed entries of an x-shaped (or h-shaped, checkerboard) array."""
        if self.checker:
            return a.reshape(a.shape[0], a.shape[1], -1)[:, :, self.idx]
        return self.layer.partition.split(a)[1]

    def h_b(self, h):
        return self.b(h) if self.checker else h

    def h_full(self, vb, like):
        if not self.checker:
            return vb
        out = np.zeros((like.shape[0], like.shape[1], like.shape[2] * like.shape[3]))
        out[:, :, self.idx] = vb
        return out.reshape(like.shape)

    def out_full(self, vb, like):
        """An x-shaped array: ``vb`` at the transformed entries, 0 at the copied ones."""
        if self.checker:
            return self.h_full(vb, like)
        return self.layer.partition.merge(np.zeros_like(self.layer.partition.split(like)[0]), vb)

    def from_net_input(self, v, like):
        """The conditioner's input gradient placed at the copied entries of an x-shaped array."""
        if self.checker:
            return np.where(self.mask, v, 0.0)
        return self.layer.partition.merge(v, np.zeros_like(self.layer.partition.split(like)[1]))


def coupling_float32_bounds(layer, p64, u64, g64, gl64, gx64, direction):
    """First-order bounds on |float32 − float64| for ``(out, logdet, gx, gparams)``.

    With ``δh`` the conditioner's bound (rawflow.nets.cnn magnitudes, see test_cnn) and ``u = eps32/2``::

        δlog s = |log s'|·δh_s + 4u·max(1, |log s|),    δs/s = δlog s + 4u       (exp within 4 ulp)
        forward  y_b = x_b·s + t:   δy_b = |x_b·s|(δs/s + u) + δt + u|y_b|
        inverse  x_b = (y_b − t)/s: δx_b = (u|y_b − t| + δt)/s + |x_b|(δs/s + u)
        log-det  Σ log s:           δλ = Σ δlog s + P·u·Σ|log s|

    and for the VJPs the same rules through ``gx_b = g_b·s`` (``g_b/s``), ``q = ±g_b·x_b ± gλ``,
    ``gh_s = q·log s'`` (``|log s''| ≤ 1`` for the exp, bounded and sigmoid maps), then the
    conditioner's VJP bound with that cotangent error; copied entries add one rounding ``u|gx|``.
    """
    u = U32
    pos = Positions(layer, u64)
    net_in = pos.net_input(u64)
    h, _ = layer.net.apply(p64["net"], net_in)
    dh = net_error_bounds(layer.net, p64["net"], net_in)
    hb, dhb = pos.h_b(h), pos.h_b(dh)
    ub, gb = pos.b(u64), pos.b(g64)
    gl = gl64.reshape((-1,) + (1,) * (ub.ndim - 1))
    if isinstance(layer.transform, AffineTransform):
        cb = hb.shape[1] // 2
        hs, t, dhs, dt = hb[:, :cb], hb[:, cb:], dhb[:, :cb], dhb[:, cb:]
        log_s, dlog = layer.transform.scale(hs)
        s = np.exp(log_s)
        dlog_s = np.abs(dlog) * dhs + EXP_ULPS * u * np.maximum(1, np.abs(log_s))
        ds = dlog_s + EXP_ULPS * u
        ddlog = dhs + EXP_ULPS * u * np.abs(dlog)
        dld = dlog_s.reshape(len(ub), -1).sum(axis=1) + log_s[0].size * u * np.abs(log_s).reshape(len(ub), -1).sum(1)
        if direction == "forward":
            xb = ub
            dout_b = np.abs(xb * s) * (ds + u) + dt + u * np.abs(xb * s + t)
            dgxb = np.abs(gb * s) * (ds + u)
            q = gb * xb * s + gl
            dq = np.abs(gb * xb * s) * (ds + 2 * u) + u * np.abs(q)
            dgt = np.zeros_like(gb)
            gt = gb
        else:
            xb = (ub - t) / s
            dout_b = (u * np.abs(ub - t) + dt) / s + np.abs(xb) * (ds + u)
            gyb = gb / s
            dgxb = np.abs(gyb) * (ds + u)
            q = -(gb * xb) - gl
            dq = np.abs(gb) * dout_b + u * np.abs(gb * xb) + u * np.abs(q)
            dgt, gt = dgxb, -gyb
        ghs = q * dlog
        dghs = dq * np.abs(dlog) + np.abs(q) * ddlog + u * np.abs(ghs)
        gh_b, dgh_b = np.concatenate([ghs, gt], axis=1), np.concatenate([dghs, dgt], axis=1)
    else:
        dld = np.zeros(len(ub))
        dout_b = dhb + u * np.abs(ub + hb if direction == "forward" else ub - hb)
        dgxb = np.zeros_like(gb)
        gh_b, dgh_b = (gb if direction == "forward" else -gb), np.zeros_like(gb)
    gh, dgh = pos.h_full(gh_b, h), pos.h_full(dgh_b, h)
    _, dg_in, dgp = net_error_bounds(layer.net, p64["net"], net_in, gh, dgh)
    copied = pos.from_net_input(np.ones_like(net_in), u64) > 0
    dgx = pos.from_net_input(dg_in, u64) + np.where(copied, u * np.abs(gx64), 0.0) + pos.out_full(dgxb, u64)
    return pos.out_full(dout_b, u64), dld, dgx, {"net": dgp}


@given(couplings(), st.sampled_from(["forward", "inverse"]))
def test_float32_matches_float64_within_rounding_bounds(case, direction):
    layer, params, x, rng = case
    if direction == "inverse":
        x = layer.forward(params, x)[0]
    run = layer.forward if direction == "forward" else layer.inverse
    vjp = layer.backward if direction == "forward" else layer.inverse_backward
    r32, r64, (p64, x64, g64, gl64, _) = float32_and_float64(run, vjp, params, x, rng)
    tcache = transform_cache(layer, run(p64, x64)[2])
    scales = 1.0 if tcache is None else tcache[1]
    assume(in_float32_range(scales, r64[0], r64[2], *[a for _, a in tree.leaves(r64[3])]))
    dout, dld, dgx, dgp = coupling_float32_bounds(layer, p64, x64, g64, gl64, r64[2], direction)
    m = copied_mask(layer, x)
    assert np.array_equal(r32[0][m], x.astype(np.float32)[m])  # copied entries: exact in float32 too
    assert_within(r32[0], r64[0], dout, "output")
    assert_within(r32[1], r64[1], dld, "log-det")
    assert_within(r32[2], r64[2], dgx, "input gradient")
    for path, leaf in tree.leaves(r64[3]):
        assert_within(tree.get(r32[3], path), leaf, tree.get(dgp, path), path)


def fd_logdet_noise(layer, params, x) -> float:
    """First-order error of ``slogdet`` of the finite-difference Jacobian, relative to max(1, |λ|).

    Its transformed diagonal entries are ``s`` (forward) and ``1/s`` (inverse); each carries the
    rounding of two outputs over ``2h``: ``eps·|y|/h``, ``h = FD_STEP·max(1, |x|)``. The log-det
    then errs by ``Σ δJ_ii/J_ii`` (the copied block is exact, off-diagonals enter at second order).
    """
    z, logdet, cache = layer.forward(params, x)
    tcache = transform_cache(layer, cache)
    if tcache is None:
        return 0.0
    pos, s = Positions(layer, x), tcache[1]
    xb, zb = np.abs(pos.b(x)), np.abs(pos.b(z))
    fwd = EPS64 * zb / (FD_STEP * np.maximum(1, xb)) / s
    inv = EPS64 * xb * s / (FD_STEP * np.maximum(1, zb))
    worst = np.maximum(fwd.reshape(len(x), -1).sum(axis=1), inv.reshape(len(x), -1).sum(axis=1))
    return float(np.max(worst / np.maximum(1, np.abs(logdet))))


@given(couplings())
def test_logdet_matches_finite_difference_jacobian(case):
    layer, params, x, _ = case
    # the oracle resolves 1e-8 only where scales are not tiny (s reaches 1e-10 in random draws)
    assume(fd_logdet_noise(layer, params, x) <= 1e-9)
    check_logdet(layer, params, x)


@given(couplings())
@settings(max_examples=FEW)
def test_gradients_forward_match_finite_differences(case):
    layer, params, x, rng = case
    check_gradients_resolvable(layer, params, x, rng, "forward")


@given(couplings())
@settings(max_examples=FEW)
def test_gradients_inverse_match_finite_differences(case):
    layer, params, x, rng = case
    z, _, _ = layer.forward(params, x)
    check_gradients_resolvable(layer, params, z, rng, "inverse")


@given(couplings())
def test_gradients_match_complex_step_both_directions(case):
    layer, params, x, rng = case
    for direction in ("forward", "inverse"):
        run = layer.forward if direction == "forward" else layer.inverse
        vjp = layer.backward if direction == "forward" else layer.inverse_backward
        u = x if direction == "forward" else layer.forward(params, x)[0]
        _, _, cache = run(params, u)
        check_complex_step(lambda p, v: run(p, v)[:2], lambda g, gl: vjp(params, cache, g, gl), params, u, rng)


@given(couplings())
def test_structural_properties(case):
    layer, params, x, rng = case
    check_structure(layer, params, x, rng)


@given(couplings())
@settings(max_examples=FEW)
def test_batch_equals_samples_stacked_and_runs_repeat_bitwise(case):
    layer, params, x, _ = case
    z, logdet, _ = layer.forward(params, x)
    z2, logdet2, _ = layer.forward(params, x)
    assert np.array_equal(z, z2) and np.array_equal(logdet, logdet2)
    rows = [layer.forward(params, x[i : i + 1]) for i in range(x.shape[0])]
    # GEMMs of different widths may order their sums differently: equal to round-off only.
    assert rel_err(np.concatenate([r[0] for r in rows]), z) <= 1e-12
    assert rel_err(np.concatenate([r[1] for r in rows]), logdet) <= 1e-12


@given(couplings(kind="checkerboard"))
def test_checkerboard_logdet_sums_only_transformed_positions(case):
    layer, params, x, _ = case
    z, logdet, _ = layer.forward(params, x)
    m = copied_mask(layer, x)
    h, _ = layer.net.apply(params["net"], np.where(m, x, 0.0))
    if isinstance(layer.transform, AffineTransform):
        log_s, _ = layer.transform.scale(h[:, : x.shape[1]])
        t = h[:, x.shape[1] :]
        expected_z = np.where(m, x, x * np.exp(log_s) + t)
        expected_ld = np.where(m, 0.0, log_s).sum(axis=(1, 2, 3))
    else:
        expected_z, expected_ld = np.where(m, x, x + h), np.zeros(x.shape[0])
    eps = np.finfo(float).eps
    assert np.all(np.abs(z - expected_z) <= 4 * eps * np.maximum(np.abs(z), 1))
    assert np.all(np.abs(logdet - expected_ld) <= 4 * eps * x[0].size * np.maximum(np.abs(expected_ld), 1))


def test_checkerboard_pattern_and_parity():
    layer0, layer1 = CheckerboardCoupling(1, width=2), CheckerboardCoupling(1, width=2, flip=True)
    x = np.zeros((1, 1, 3, 4))
    assert layer0.parity == 0 and layer1.parity == 1
    m0, m1 = copied_mask(layer0, x)[0, 0], copied_mask(layer1, x)[0, 0]
    assert m0.tolist() == [[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]]
    assert np.array_equal(m1, ~m0)


@pytest.mark.parametrize("make", [
    lambda t, s: ChannelCoupling(4, t, scale=s, width=3),
    lambda t, s: ChannelRotationCoupling(3, 2, t, scale=s, width=3),
    lambda t, s: CheckerboardCoupling(3, t, scale=s, width=3, conditioner="resnet"),
])
@pytest.mark.parametrize("transform, scale", [("additive", "exp"), ("affine", "exp"), ("affine", "bounded")])
def test_fresh_layer_is_identity(make, transform, scale):
    rng = np.random.default_rng(0)
    layer = make(transform, scale)
    x = rng.normal(size=(2, layer.event_shape[0], 4, 4))
    z, logdet, _ = layer.forward(layer.init(rng, x), x)
    assert np.array_equal(z, x) and not np.any(logdet)


def test_fresh_sigmoid_checkerboard_contracts_only_transformed_pixels():
    rng = np.random.default_rng(1)
    layer = CheckerboardCoupling(2, scale="sigmoid", width=3)
    x = rng.normal(size=(2, 2, 4, 4))
    z, logdet, _ = layer.forward(layer.init(rng, x), x)
    m = copied_mask(layer, x)
    eps = np.finfo(float).eps
    assert np.array_equal(z[m], x[m])
    np.testing.assert_allclose(z[~m], x[~m] / (1 + np.exp(-2.0)), rtol=4 * eps)
    np.testing.assert_allclose(logdet, -16 * np.log1p(np.exp(-2.0)), rtol=16 * eps)


def test_channel_split_defaults_and_flip():
    a, b = ChannelCoupling(5, width=2), ChannelCoupling(5, width=2, flip=True)
    assert a.partition.idx_a.tolist() == [0, 1] and b.partition.idx_a.tolist() == [2, 3, 4]
    assert isinstance(a.net, GlowCNN) and (a.net.in_features, a.net.out_features) == (2, 6)
    assert (b.net.in_features, b.net.out_features) == (3, 4)
    assert a.event_shape == (5, None, None) and a.out_event_shape == (5, None, None)


def test_rotation_copies_each_channel_in_turn():
    layers = [ChannelRotationCoupling(3, step, width=2) for step in range(6)]
    assert [layer.partition.idx_a.tolist() for layer in layers] == [[0], [1], [2], [0], [1], [2]]
    assert [layer.partition.idx_b.tolist() for layer in layers[:3]] == [[1, 2], [0, 2], [0, 1]]
    assert (layers[0].net.in_features, layers[0].net.out_features) == (1, 4)


def test_custom_conditioner_and_mismatch():
    net = ResNetCNN(2, 4, 3, blocks=1)
    layer = ChannelCoupling(4, "additive", conditioner=ResNetCNN(2, 2, 3))
    assert layer.net.out_features == 2
    assert ChannelCoupling(4, conditioner=net).net is net
    with pytest.raises(ValueError, match="ChannelCoupling: conditioner maps 2 → 4 channels, the layer needs 2 → 2"):
        ChannelCoupling(4, "additive", conditioner=net)
    message = "CheckerboardCoupling: conditioner maps 2 → 4 channels, the layer needs 3 → 6"
    with pytest.raises(ValueError, match=message):
        CheckerboardCoupling(3, conditioner=net)
    with pytest.raises(ValueError, match="CheckerboardCoupling: unknown conditioner"):
        CheckerboardCoupling(3, conditioner="unet")


@pytest.mark.parametrize("make, match", [
    (lambda: ChannelCoupling(1), "ChannelCoupling: channels must be an integer ≥ 2"),
    (lambda: ChannelRotationCoupling(1, 0), "ChannelRotationCoupling: channels"),
    (lambda: ChannelRotationCoupling(3, 0.5), "ChannelRotationCoupling: step"),
    (lambda: CheckerboardCoupling(0), "CheckerboardCoupling: channels"),
    (lambda: CheckerboardCoupling(2, "spline"), "CheckerboardCoupling: transform"),
    (lambda: ChannelCoupling(2, scale="relu"), "unknown scale map"),
])
def test_bad_construction_raises(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("layer", [ChannelCoupling(4, width=2), CheckerboardCoupling(4, width=2)])
def test_bad_inputs_raise_naming_the_layer(layer):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 4, 2, 2))
    params = layer.init(rng, x)
    name = layer.name
    with pytest.raises(ValueError, match=f"{name}: input has size 3 on axis 1"):
        layer.forward(params, x[:, :3])
    with pytest.raises(ValueError, match=f"{name}: input must have 4 dimensions"):
        layer.forward(params, x[:, :, 0])
    with pytest.raises(ValueError, match=f"{name}: input contains NaN"):
        layer.forward(params, np.where(x > 1, np.nan, x))
    with pytest.raises(ValueError, match=f"{name}: parameter .* has dtype float32"):
        layer.forward(params, x.astype(np.float32))


@pytest.mark.parametrize("make", [
    lambda b: CheckerboardCoupling(3, scale="sigmoid", width=3, backend=b),
    lambda b: CheckerboardCoupling(3, "additive", width=3, backend=b),
    lambda b: ChannelCoupling(4, width=3, backend=b),
    lambda b: ChannelRotationCoupling(3, 1, scale="bounded", width=3, backend=b),
])
def test_numba_backend_matches_reference(make):
    rng = np.random.default_rng(4)
    ref, fast = make("reference"), make("numba")
    x = rng.normal(size=(2, ref.event_shape[0], 4, 3))
    params = randomize_cnn(ref.init(rng, x), rng, 0.6)
    z, logdet, cache = ref.forward(params, x)
    z2, logdet2, cache2 = fast.forward(params, x)
    m = copied_mask(ref, x)
    assert np.array_equal(z2[m], x[m])
    eps = np.finfo(float).eps
    # The kernels' exp is within 2 ulp of NumPy's, so s, log s and every elementwise result differ
    # by a few ulp: outputs by a few ulp of their scale, the log-det by a few ulp of Σ|log s|.
    assert rel_err(z2, z) <= 16 * eps
    tcache = transform_cache(ref, cache)
    terms = 0.0 if tcache is None else np.abs(np.log(tcache[1])).reshape(len(x), -1).sum(axis=1)
    assert np.all(np.abs(logdet2 - logdet) <= 16 * eps * terms)
    assert check_logdet_cancels(fast, params, x) == 0
    g, gl = rng.normal(size=z.shape), rng.normal(size=logdet.shape)
    gx, gp = ref.backward(params, cache, g, gl)
    gx2, gp2 = fast.backward(params, cache2, g, gl)
    # Gradients: those few-ulp differences of gh, through the conditioner's linear VJP, whose sums
    # cancel; compared over the whole gradient (input and every leaf), measured ≤ 6 eps in 400 cases.
    flat = lambda gx, gp: np.concatenate([gx.ravel()] + [a.ravel() for _, a in tree.leaves(gp)])  # noqa: E731
    assert rel_err(flat(gx2, gp2), flat(gx, gp)) <= 64 * eps


def test_multiscale_chain_cached_and_memory_lean_gradients_agree():
    """Checkerboard → squeeze → channel coupling → split → rotation, as one chain; both backward modes."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 2, 4, 4))
    layers = [
        CheckerboardCoupling(2, width=3),
        CheckerboardCoupling(2, width=3, flip=True, scale="sigmoid"),
        Squeeze(2),
        ChannelCoupling(8, width=3, conditioner="resnet"),
        Split(8),
        ChannelRotationCoupling(8, 1, "additive", width=3),
    ]
    cached, lean = Chain(layers), Chain(layers, reconstruct=True)
    params = randomize_cnn(cached.init(rng, x), rng, 0.6)
    z, logdet, cache = cached.forward(params, x)
    z2, logdet2, cache2 = lean.forward(params, x)
    assert np.array_equal(z, z2) and np.array_equal(logdet, logdet2)
    # a chain sums its log-dets in opposite orders forward and inverse: cancels to round-off only
    assert check_logdet_cancels(cached, params, x, exact=False) <= 1e-13 * np.max(np.abs(logdet))
    g, gl = rng.normal(size=z.shape), rng.normal(size=logdet.shape)
    gx, gp = cached.backward(params, cache, g, gl)
    gx2, gp2 = lean.backward(params, cache2, g, gl)
    assert rel_err(gx2, gx) <= 1e-12
    for path, leaf in tree.leaves(gp):
        assert rel_err(tree.get(gp2, path), leaf) <= 1e-12, path
    # the composed VJPs, both directions, against complex-step derivatives of the whole chain
    check_complex_step(lambda p, u: cached.forward(p, u)[:2], lambda g, gl: cached.backward(params, cache, g, gl),
                       params, x, rng)
    _, _, cache_inv = cached.inverse(params, z)
    check_complex_step(lambda p, u: cached.inverse(p, u)[:2],
                       lambda g, gl: cached.inverse_backward(params, cache_inv, g, gl), params, z, rng)
