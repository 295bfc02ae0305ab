"""Multi-scale image flows (Glow, RealNVP, NICE on images) as whole bijectors and models."""

import numpy as np
import pytest

from harness import check_gradients, check_logdet, check_roundtrip, rel_err
from rawflow import FlowModel, StandardNormal, tree
from rawflow.models.architectures import glow, nice_images, realnvp_multiscale
from rawflow.data.images import bits_per_dim, dequantize
from rawflow.training.memory import peak_step_memory

SHAPE = (1, 4, 4)


def build(name, reconstruct=False):
    if name == "glow-affine-lu":
        return glow(2, 2, 4, SHAPE, reconstruct=reconstruct)
    if name == "glow-additive-shuffle":
        return glow(1, 2, 4, (2, 4, 4), coupling="additive", permutation="shuffle", reconstruct=reconstruct)
    if name == "glow-dense-reverse":
        return glow(1, 2, 3, SHAPE, permutation="dense", scale="exp", reconstruct=reconstruct)
    if name == "realnvp":
        return realnvp_multiscale(2, 4, SHAPE, blocks=1, reconstruct=reconstruct)
    if name == "nice":
        return nice_images(SHAPE, 2, (6,), reconstruct=reconstruct)
    raise KeyError(name)


NAMES = ["glow-affine-lu", "glow-additive-shuffle", "glow-dense-reverse", "realnvp", "nice"]


def setup(name, seed=0, n=2, noise=0.01, reconstruct=False):
    """The model's own init on dequantised-looking data, then every leaf moved (zero last layers hide bugs)."""
    rng = np.random.default_rng(seed)
    flow = build(name, reconstruct)
    x = rng.uniform(size=(n,) + flow.event_shape)
    params = flow.init(rng, x)
    params = tree.map(lambda a: a + rng.normal(scale=noise, size=a.shape), params)
    return flow, params, x, rng


@pytest.mark.parametrize("name", NAMES)
def test_roundtrip_and_logdet_cancellation(name):
    flow, params, x, _ = setup(name)
    # Many layers: each contributes a few eps, amplified by the inverse's conditioning (≤ 10 here).
    check_roundtrip(flow, params, x, bound_ulps=64, kappa=10.0)
    z, logdet, _ = flow.forward(params, x)
    _, logdet_inv, _ = flow.inverse(params, z)
    assert np.max(np.abs(logdet + logdet_inv)) <= 256 * np.finfo(float).eps * (1 + np.max(np.abs(logdet)))


@pytest.mark.parametrize("name", NAMES)
def test_logdet_matches_the_jacobian(name):
    """slogdet of the finite-difference Jacobian of the whole flow: catches a missing H·W factor."""
    flow, params, x, _ = setup(name)
    check_logdet(flow, params, x)


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_gradients_of_a_small_glow_element_by_element(direction):
    flow = glow(1, 2, 2, SHAPE)
    rng = np.random.default_rng(4)
    x = rng.uniform(size=(2,) + SHAPE)
    params = tree.map(lambda a: a + rng.normal(scale=0.05, size=a.shape), flow.init(rng, x))
    if direction == "inverse":
        x = flow.forward(params, x)[0]
    check_gradients(flow, params, x, rng, direction)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_gradients_of_every_architecture_along_random_directions(name, direction):
    """⟨VJP, v⟩ against the complex-step derivative along v (all inputs and parameters at once).

    One complex evaluation per direction, so the bigger flows are checked too. The bar is round-off:
    64·eps times the sum of the magnitudes of the terms of ⟨VJP, v⟩.
    """
    flow, params, x, rng = setup(name)
    if direction == "inverse":
        x = flow.forward(params, x)[0]
    run = flow.forward if direction == "forward" else flow.inverse
    vjp = flow.backward if direction == "forward" else flow.inverse_backward
    out, logdet, cache = run(params, x)
    g, gl = rng.normal(size=out.shape), rng.normal(size=logdet.shape)
    gx, gp = vjp(params, cache, g, gl)
    for _ in range(3):
        vx = rng.normal(size=x.shape)
        vp = tree.map(lambda a: rng.normal(size=a.shape), params)
        h = 1e-30
        xc = x + 1j * h * vx
        pc = tree.map(lambda a, v: a + 1j * h * v, params, vp)
        oc, ldc, _ = (flow.forward if direction == "forward" else flow.inverse)(pc, xc)
        expected = float((np.sum(g * oc) + np.sum(gl * ldc)).imag / h)
        terms = [gx * vx] + [tree.get(gp, k) * leaf for k, leaf in tree.leaves(vp)]
        actual = float(sum(np.sum(t) for t in terms))
        budget = 64 * np.finfo(float).eps * float(sum(np.sum(np.abs(t)) for t in terms))
        assert abs(actual - expected) <= budget, (actual, expected, budget)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reconstructing_backward_equals_cached(name, dtype):
    cached, params, x, rng = setup(name)
    lean = build(name, reconstruct=True)
    params = tree.map(lambda a: a.astype(dtype), params)
    x = x.astype(dtype)
    eps = np.finfo(dtype).eps
    for direction in ("forward", "inverse"):
        inp = x if direction == "forward" else cached.forward(params, x)[0]
        out = []
        for f in (cached, lean):
            run = f.forward if direction == "forward" else f.inverse
            vjp = f.backward if direction == "forward" else f.inverse_backward
            y, ld, cache = run(params, inp)
            g = np.random.default_rng(1).normal(size=y.shape).astype(dtype)
            gl = np.random.default_rng(2).normal(size=ld.shape).astype(dtype)
            out.append(vjp(params, cache, g, gl))
        (gx_c, gp_c), (gx_l, gp_l) = out
        # Rebuilt inputs differ from the originals by the inverse's round-off (a few eps·κ per layer).
        bound = 1e4 * eps
        assert rel_err(gx_l, gx_c) <= bound
        for path, leaf in tree.leaves(gp_c):
            assert rel_err(tree.get(gp_l, path), leaf) <= bound, path


def test_memory_lean_training_step_is_flat_in_depth():
    """Whole multi-scale Glow, split layers included: K = 2 vs 8 at a fixed image size."""
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(16, 1, 8, 8))
    peaks = {}
    for reconstruct in (False, True):
        for k in (2, 8):
            flow = glow(k, 2, 8, (1, 8, 8), reconstruct=reconstruct)
            params = flow.init(np.random.default_rng(1), x)
            peaks[reconstruct, k] = peak_step_memory(flow, params, x)["peak_bytes"]
    print(peaks)
    assert peaks[True, 8] / peaks[True, 2] <= 1.15, peaks
    assert peaks[False, 8] / peaks[False, 2] >= 2.5, peaks


def test_model_sampling_temperature_encode_decode_interpolate():
    flow, params, x, rng = setup("glow-affine-lu", n=3)
    d = int(np.prod(SHAPE))
    model = FlowModel(flow, StandardNormal((d,)))
    mparams = {"flow": params, "prior": {}}
    cold = model.sample(mparams, np.random.default_rng(5), 200, temperature=0.1)
    warm = model.sample(mparams, np.random.default_rng(5), 200, temperature=1.0)
    assert cold.shape == (200,) + SHAPE
    # Same draws at a lower temperature are closer to the mode: their latents are exactly T·ε.
    z_cold, z_warm = model.encode(mparams, cold), model.encode(mparams, warm)
    np.testing.assert_allclose(z_cold, 0.1 * z_warm, rtol=0, atol=1e-9)
    frames = model.interpolate(mparams, x[:2], x[1:3], steps=5)
    assert frames.shape == (5, 2) + SHAPE
    np.testing.assert_allclose(frames[0], x[:2], atol=1e-12)
    np.testing.assert_allclose(frames[-1], x[1:3], atol=1e-12)


def test_bits_per_dim_of_an_untrained_glow_on_dequantised_data():
    rng = np.random.default_rng(3)
    v = rng.integers(0, 17, size=(8,) + SHAPE)
    x = dequantize(v, 17, rng)
    flow = glow(1, 2, 4, SHAPE)
    model = FlowModel(flow, StandardNormal((16,)))
    params = model.init(rng, x)
    nll = model.nll(params, x)
    bpd = bits_per_dim(nll, 16, 17)
    # bpd = (NLL + D·log 17)/(D·ln 2): recompute by hand from the per-sample log-likelihoods.
    lp = model.log_prob(params, x)
    assert bpd == pytest.approx(float(np.mean(-lp / 16 + np.log(17)) / np.log(2)), rel=1e-12)


def test_bad_image_shapes_are_refused():
    with pytest.raises(ValueError, match="glow: H and W must be divisible by 2\\^2"):
        glow(1, 2, 4, (1, 6, 6))
    with pytest.raises(ValueError, match="glow: permutation must be"):
        glow(1, 1, 4, (1, 4, 4), permutation="cyclic")
    flow = glow(1, 2, 4, SHAPE)
    params = flow.init(np.random.default_rng(0), np.random.default_rng(0).uniform(size=(2,) + SHAPE))
    with pytest.raises(ValueError, match="MultiScale: input has size 5 on axis 2"):
        flow.forward(params, np.zeros((2, 1, 5, 4)))
    with pytest.raises(ValueError, match="MultiScale: .*NaN or Inf"):
        flow.forward(params, np.full((2,) + SHAPE, np.nan))
