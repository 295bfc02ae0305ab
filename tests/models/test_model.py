"""FlowModel: the NLL gradient of every parameter against complex step and central differences,
cached vs memory-lean chains, the lecture note's 1-D uniform example, sampling and encode/decode."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness import check_gradients, check_logdet_cancels, check_structure, randomize, rel_err
from rawflow import Bijector, tree
from rawflow.models.architectures import nice, realnvp
from rawflow.models.model import FlowModel
from rawflow.distributions.priors import DiagonalGaussian, StandardLogistic, StandardNormal, Uniform

EPS64 = np.finfo(np.float64).eps
EPS32 = np.finfo(np.float32).eps
CS_STEP = 1e-30


def tiny_model(kind: str, features: int, reconstruct: bool = False, smooth: bool = False) -> FlowModel:
    """Three small models; ``smooth`` swaps the (leaky) ReLUs for tanh."""
    if kind == "realnvp-diag":
        return FlowModel(realnvp(features, 3, hidden=(4,), activation="tanh", reconstruct=reconstruct),
                         DiagonalGaussian((features,)))
    if kind == "realnvp-bounded":
        return FlowModel(realnvp(features, 2, hidden=(3, 3), scale="bounded",
                                 activation="tanh" if smooth else "leaky_relu", reconstruct=reconstruct),
                         StandardNormal((features,)))
    if kind == "nice-logistic":
        return FlowModel(nice(features, 3, hidden=(3,), activation="tanh" if smooth else "relu",
                              reconstruct=reconstruct), StandardLogistic((features,)))
    raise AssertionError(kind)


KINDS = ["realnvp-diag", "realnvp-bounded", "nice-logistic"]


@st.composite
def model_cases(draw, smooth=False):
    kind = draw(st.sampled_from(KINDS))
    features = draw(st.integers(2, 4))
    n = draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    model = tiny_model(kind, features, smooth=smooth)
    x = rng.normal(size=(n, features))
    # Random parameters everywhere (fresh couplings are the identity, which would hide bugs).
    params = randomize(model.init(rng, x), rng, draw(st.floats(0.1, 0.6)))
    return model, params, x


def mean_nll(model, params, x):
    return -model.log_prob(params, x).mean()


def cs_param_grads(model, params, x):
    """Complex-step gradient of the mean NLL for every parameter leaf."""
    xc = x.astype(complex)
    pc = tree.map(lambda a: a.astype(complex), params)
    grads = {}
    for path, leaf in tree.leaves(pc):
        g = np.zeros(leaf.shape)
        flat, gflat = leaf.reshape(-1), g.reshape(-1)
        for i in range(flat.size):
            flat[i] += 1j * CS_STEP
            gflat[i] = mean_nll(model, pc, xc).imag / CS_STEP
            flat[i] -= 1j * CS_STEP
        grads[path] = g
    return grads


FD5_STEP = EPS64 ** (1 / 5)


def fd_param_grads(model, params, x):
    """Fourth-order central differences, ``[f(−2h) − 8f(−h) + 8f(h) − f(2h)]/(12h)``.

    With ``h = eps^(1/5)·max(1, |v|)`` the error is ``O(h⁴f⁽⁵⁾ + eps·|f|/h) ≈ 1e-13·|f|``, against
    ``≈ 4e-11·|f|`` for the two-point rule: the model's NLL is O(1) while a leaf's gradient can be
    ~1e-4, where the two-point rule alone would sit at ~1e-7 relative.
    """
    params = tree.map(lambda a: a.copy(), params)
    grads = {}
    for path, leaf in tree.leaves(params):
        g = np.zeros(leaf.shape)
        flat, gflat = leaf.reshape(-1), g.reshape(-1)
        for i in range(flat.size):
            v0 = flat[i]
            h = FD5_STEP * max(1.0, abs(v0))
            values = []
            for k in (-2, -1, 1, 2):
                flat[i] = v0 + k * h
                values.append(mean_nll(model, params, x))
            flat[i] = v0
            gflat[i] = (values[0] - 8 * values[1] + 8 * values[2] - values[3]) / (12 * h)
        grads[path] = g
    return grads


# ---------------------------------------------------------------------------- NLL and its gradient
@given(model_cases())
def test_nll_and_grad_matches_complex_step_for_every_parameter(case):
    model, params, x = case
    loss, grads = model.nll_and_grad(params, x)
    assert isinstance(loss, float)
    assert tree.structure(grads) == tree.structure(params)
    ref = cs_param_grads(model, params, x)
    errors = {path: rel_err(tree.get(grads, path), g) for path, g in ref.items()}
    assert max(errors.values()) <= 1e-13, errors


# Central differences straddle the kink of a (leaky) ReLU whenever a pre-activation lies within
# the step h ≈ 6e-6 of zero, and then measure a one-sided mixture, not the gradient: the FD oracle
# runs on smooth (tanh) versions of the models; the complex-step test above covers the ReLU ones.
@given(model_cases(smooth=True))
def test_nll_and_grad_matches_finite_differences_for_every_parameter(case):
    model, params, x = case
    loss, grads = model.nll_and_grad(params, x)
    assert loss == mean_nll(model, params, x)
    ref = fd_param_grads(model, params, x)
    errors = {path: rel_err(tree.get(grads, path), g) for path, g in ref.items()}
    assert max(errors.values()) <= 1e-7, errors


@pytest.mark.parametrize("kind", KINDS)
def test_reconstruct_chain_gives_the_same_loss_and_gradients(kind):
    rng = np.random.default_rng(5)
    cached, lean = tiny_model(kind, 4), tiny_model(kind, 4, reconstruct=True)
    x = rng.normal(size=(6, 4))
    params = randomize(cached.init(rng, x), rng, 0.5)
    loss_c, grads_c = cached.nll_and_grad(params, x)
    loss_l, grads_l = lean.nll_and_grad(params, x)
    assert loss_c == loss_l  # the forward pass is the same code in both modes
    assert tree.structure(grads_l) == tree.structure(grads_c)
    # The lean backward runs on inputs rebuilt by the layers' inverses, each within a few ulps of
    # the originals (coupling round trips are ≤ 6 eps·κ), so gradients agree to ~1e2 eps.
    errors = {path: rel_err(tree.get(grads_l, path), g) for path, g in tree.leaves(grads_c)}
    assert max(errors.values()) <= 1e-13, errors


@pytest.mark.parametrize("kind", KINDS)
def test_float32_model_stays_float32_and_tracks_float64(kind):
    rng = np.random.default_rng(11)
    model = tiny_model(kind, 3)
    x = rng.normal(size=(8, 3))
    params = randomize(model.init(rng, x), rng, 0.3)
    p32, x32 = tree.map(lambda a: a.astype(np.float32), params), x.astype(np.float32)
    p64, x64 = tree.map(lambda a: a.astype(np.float64), p32), x32.astype(np.float64)
    loss32, grads32 = model.nll_and_grad(p32, x32)
    assert all(a.dtype == np.float32 for _, a in tree.leaves(grads32))
    loss64, grads64 = model.nll_and_grad(p64, x64)
    # Loss: a mean of log-densities of O(1) terms, each through ≤ 3 couplings: 64 eps32 per unit.
    assert abs(loss32 - loss64) <= 64 * EPS32 * max(1.0, abs(loss64))
    # Gradients through several layers and batch sums can lose more than 1e-6 of a leaf's
    # ∞-norm to cancellation (measured up to 3e-6). The bound is backward stability: float32
    # arithmetic behaves like an eps32 relative perturbation of inputs and parameters plus eps32
    # rounding of the result. Its size is measured in float64 by perturbing p and x by ±eps32
    # (measured ratio error/bound ≤ 1.2 over 90 cases; 4× allowed).
    spread = tree.zeros_like(grads64)
    for _ in range(4):
        pp = tree.map(lambda a: a * (1 + EPS32 * rng.choice([-1.0, 1.0], a.shape)), p64)
        xx = x64 * (1 + EPS32 * rng.choice([-1.0, 1.0], x64.shape))
        spread = tree.map(lambda s, a, b: np.maximum(s, np.abs(a - b)), spread, model.nll_and_grad(pp, xx)[1],
                          grads64)
    for path, g in tree.leaves(grads64):
        err = np.max(np.abs(tree.get(grads32, path) - g))
        bound = 4 * (np.max(tree.get(spread, path)) + EPS32 * np.max(np.abs(g)))
        assert err <= bound, (path, err, bound)


def test_log_prob_is_prior_plus_logdet_and_nll_is_its_mean():
    rng = np.random.default_rng(0)
    model = tiny_model("realnvp-diag", 2)
    x = rng.normal(size=(5, 2))
    params = randomize(model.init(rng, x), rng, 0.4)
    z, logdet, _ = model.bijector.forward(params["flow"], x)
    lp, _ = model.prior.log_prob(params["prior"], z)
    assert np.array_equal(model.log_prob(params, x), lp + logdet)
    assert model.nll(params, x) == -float((lp + logdet).mean())


# ---------------------------------------------------------------------------- the lecture note's example
class ElementwiseAffine(Bijector):
    """Test-local ``z = (x − b)·exp(a)`` per feature; ``logdet = Σ a``.

    VJPs: forward ``gx = gz·e^a``, ``gb = −Σ_n gz·e^a``, ``ga = Σ_n (gz·z + glogdet)``;
    inverse ``x = z·e^{−a} + b``: ``gz = gx·e^{−a}``, ``gb = Σ_n gx``, ``ga = −Σ_n (gx·(x − b) + glogdet)``.
    """

    def __init__(self, features):
        self.event_shape = (features,)

    def _init(self, rng, x):
        return {"a": np.zeros(x.shape[1], x.dtype), "b": np.zeros(x.shape[1], x.dtype)}

    def _forward(self, params, x):
        z = (x - params["b"]) * np.exp(params["a"])
        return z, np.full(x.shape[0], params["a"].sum(), dtype=x.dtype), (x, z)

    def _inverse(self, params, z):
        x = z * np.exp(-params["a"]) + params["b"]
        return x, np.full(z.shape[0], -params["a"].sum(), dtype=z.dtype), (x, z)

    def _backward(self, params, cache, gz, glogdet):
        x, z = cache
        gx = gz * np.exp(params["a"])
        return gx, {"a": (gz * z).sum(axis=0) + glogdet.sum(), "b": -gx.sum(axis=0)}

    def _inverse_backward(self, params, cache, gx, glogdet):
        x, z = cache
        return gx * np.exp(-params["a"]), {"a": -(gx * (x - params["b"])).sum(axis=0) - glogdet.sum(),
                                           "b": gx.sum(axis=0)}


def test_elementwise_affine_helper_is_itself_correct():
    rng = np.random.default_rng(3)
    layer = ElementwiseAffine(3)
    x = rng.normal(size=(4, 3))
    params = {"a": rng.normal(size=3), "b": rng.normal(size=3)}
    check_gradients(layer, params, x, rng, "forward")
    check_gradients(layer, params, layer.forward(params, x)[0], rng, "inverse")
    check_logdet_cancels(layer, params, x)
    check_structure(layer, params, x, rng)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lecture_note_uniform_example(dtype):
    """z ~ U[0, 1], x = 2z + 1  ⇒  p(x) = 0.5 on [1, 3]. The flow is z = f(x) = (x − 1)/2."""
    model = FlowModel(ElementwiseAffine(1), Uniform((1,), low=0.0, high=1.0))
    params = {"flow": {"a": np.array([math.log(0.5)], dtype), "b": np.array([1.0], dtype)}, "prior": {}}
    inside = np.array([[1.0], [1.5], [2.0], [2.999], [3.0]], dtype)
    outside = np.array([[0.999], [3.001], [-5.0], [10.0]], dtype)
    lp_in = model.log_prob(params, inside)
    assert lp_in.dtype == dtype
    assert np.all(lp_in == dtype(math.log(0.5))), lp_in  # exactly: 0 (prior) + log 0.5 (log-det)
    assert np.all(model.log_prob(params, outside) == -np.inf)
    # The generator G = f⁻¹ maps U[0, 1] onto [1, 3] as x = 2z + 1.
    z = np.array([[0.0], [0.25], [1.0]], dtype)
    assert np.array_equal(model.decode(params, z), 2 * z + 1)
    samples = model.sample(params, np.random.default_rng(0), 100_000)
    assert samples.dtype == dtype and samples.min() >= 1 and samples.max() <= 3
    hist, _ = np.histogram(samples, bins=8, range=(1, 3), density=True)
    np.testing.assert_allclose(hist, 0.5, rtol=0.03)  # 12 500 per bin: 3 % is > 3 binomial std
    # d(NLL)/da = −1 (NLL = −log π − a), d(NLL)/db = 0 inside the support.
    loss, grads = model.nll_and_grad(params, inside)
    assert loss == float(dtype(math.log(2.0)))
    assert grads["flow"]["a"][0] == -1 and grads["flow"]["b"][0] == 0 and grads["prior"] == {}


# ---------------------------------------------------------------------------- sampling, encode/decode
def test_sample_encode_decode():
    rng = np.random.default_rng(4)
    model = tiny_model("realnvp-diag", 3)
    x = rng.normal(size=(5, 3))
    params = randomize(model.init(rng, x), rng, 0.3)
    z = model.encode(params, x)
    np.testing.assert_allclose(model.decode(params, z), x, rtol=0, atol=64 * EPS64)
    s = model.sample(params, np.random.default_rng(9), 7)
    assert s.shape == (7, 3) and s.dtype == np.float64
    assert np.array_equal(s, model.sample(params, np.random.default_rng(9), 7))
    # samples are G(z) for z drawn by the prior with the same generator state
    z = model.prior.sample(params["prior"], np.random.default_rng(9), 7)
    assert np.array_equal(s, model.decode(params, z))
    p32 = tree.map(lambda a: a.astype(np.float32), params)
    assert model.sample(p32, rng, 2, temperature=0.7).dtype == np.float32


def test_init_gives_identity_flow_and_prior_params():
    rng = np.random.default_rng(0)
    model = tiny_model("realnvp-diag", 2)
    x = rng.normal(size=(4, 2))
    params = model.init(rng, x)
    assert set(params) == {"flow", "prior"}
    assert np.array_equal(model.encode(params, x), x)


def test_bad_construction_and_input():
    with pytest.raises(ValueError, match="FlowModel"):
        FlowModel(realnvp(3, 2), StandardNormal((2,)))
    with pytest.raises(ValueError, match="FlowModel"):
        FlowModel(StandardNormal((2,)), StandardNormal((2,)))
    with pytest.raises(ValueError, match="FlowModel"):
        FlowModel(realnvp(2, 2), realnvp(2, 2))
    model = tiny_model("realnvp-diag", 2)
    rng = np.random.default_rng(0)
    params = model.init(rng, rng.normal(size=(3, 2)))
    with pytest.raises(ValueError, match="FlowModel.nll_and_grad: input contains NaN or Inf"):
        model.nll_and_grad(params, np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="dtype"):
        model.nll_and_grad(params, np.zeros((3, 2), np.float32))


def test_overflowing_flow_reports_a_non_finite_loss_not_an_input_error():
    rng = np.random.default_rng(0)
    model = FlowModel(realnvp(2, 2, hidden=(3,)), StandardNormal((2,)))
    x = rng.normal(size=(4, 2))
    params = model.init(rng, x)
    params = tree.map(lambda a: a + 1e3, params)  # scales exp(h) overflow
    with np.errstate(all="ignore"):
        loss, grads = model.nll_and_grad(params, x)
    assert not math.isfinite(loss)
    assert tree.structure(grads) == tree.structure(params)


# ---------------------------------------------------------------------------- architectures
@pytest.mark.parametrize("build,cls", [(realnvp, "AffineCoupling"), (nice, "AdditiveCoupling")])
def test_architectures_alternate_the_copied_half(build, cls):
    chain = build(5, 4, hidden=(3,))
    couplings = chain.layers[:4]
    assert all(type(layer).__name__ == cls for layer in couplings)
    # NICE ends with its diagonal scaling, the only volume-changing layer.
    assert [type(layer).__name__ for layer in chain.layers[4:]] == (["DiagonalScaling"] if build is nice else [])
    copied = [tuple(layer.partition.idx_a) for layer in couplings]
    assert copied == [(0, 1), (2, 3, 4), (0, 1), (2, 3, 4)]
    assert not chain.reconstruct and build(5, 2, reconstruct=True).reconstruct
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5))
    params = randomize(chain.init(rng, x), rng, 0.3)
    z, logdet, _ = chain.forward(params, x)
    # every feature is transformed by some layer
    assert np.all(z != x)
    if build is nice:
        # the couplings are volume preserving: the log-det is the scaling's Σ log_scale alone
        np.testing.assert_array_equal(logdet, params[str(4)]["log_scale"].sum())


def test_architecture_options_reach_the_layers():
    chain = realnvp(4, 2, hidden=(5, 6), scale="bounded", activation="tanh")
    layer = chain.layers[0]
    assert layer.transform.scale.name == "bounded"
    assert layer.net.widths == [2, 5, 6, 4] and layer.net.activation.name == "tanh"


@pytest.mark.parametrize("kwargs", [dict(features=1), dict(features=4, n_couplings=0),
                                    dict(features=2.5), dict(features=4, n_couplings=True)])
def test_architecture_bad_arguments(kwargs):
    for build in (realnvp, nice):
        with pytest.raises(ValueError, match=build.__name__):
            build(**kwargs)


# ---------------------------------------------------------------------------- far from the data (issue 14, item 5)
def test_log_prob_is_never_nan_far_from_the_data_and_counts_what_overflows():
    """The issue's repro: an exp-scale RealNVP trained 400 Adam steps on two moons. Far from the
    data its scales overflow; every sample's log-density is then −inf (its exact value there is far
    below −1e308: rawflow.check.stress.check_log_prob verifies that against mpmath), never NaN,
    and one RuntimeWarning counts them."""
    from rawflow import Adam, train, two_moons

    rng = np.random.default_rng(0)
    data = two_moons(2000, rng)
    model = FlowModel(realnvp(2, n_couplings=6, hidden=(32, 32)), StandardNormal((2,)))
    params = model.init(rng, data[:256])
    params, _, _ = train(model, params, data, Adam(1e-3), steps=400, batch_size=128, rng=rng)
    grid = np.array([[a, b] for a in (-100, -20, -6, -3, 0, 3, 6, 20, 100) for b in (-100, -20, -6, 0, 6, 100)],
                    dtype=float)
    with pytest.warns(RuntimeWarning, match=r"FlowModel.log_prob: (\d+) of 54 sample\(s\)") as caught:
        lp = model.log_prob(params, grid)
    assert not np.isnan(lp).any()
    n_inf = int(np.isneginf(lp).sum())
    assert n_inf > 0 and f"{n_inf} of 54" in str(caught[0].message)
    assert np.all(np.isfinite(lp) | np.isneginf(lp))
    near = model.log_prob(params, data[:64])  # the data itself: finite, and no warning
    assert np.all(np.isfinite(near))
    # the report follows NumPy's overflow policy, as NumPy's own overflow warnings do
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="ignore"):
            assert np.array_equal(model.log_prob(params, grid), lp)
    with np.errstate(over="raise"), pytest.raises(FloatingPointError, match="FlowModel.log_prob: "):
        model.log_prob(params, grid)


def test_log_prob_stays_finite_where_only_an_intermediate_scale_overflows():
    """``s = exp(h)`` overflows (h = 800) but ``x_b = 0``: ``z_b = 0·s + t = t`` exactly and the
    log-density is an ordinary float (it was NaN from ``0·inf``)."""
    layer = realnvp(2, 1, hidden=(), activation="relu").layers[0]  # x_a → h = W x_a + b, no hidden layer
    model = FlowModel(layer, StandardNormal((2,)))
    params = model.init(np.random.default_rng(0), np.zeros((1, 2)))
    params["flow"]["net"]["0"]["b"] = np.array([800.0, 0.25])  # h_s = 800, t = 0.25
    x = np.array([[0.5, 0.0]])
    lp = model.log_prob(params, x)
    want = -0.5 * (0.5**2 + 0.25**2) - math.log(2 * math.pi) + 800.0
    assert lp[0] == pytest.approx(want, rel=1e-15)
