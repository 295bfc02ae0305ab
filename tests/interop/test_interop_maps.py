"""The rawflow-side pieces of rawflow.interop (no torch needed): peer scale maps, the shift-then-scale
transform, the LU layer with given factors, and the peer conditioner networks.

Each runs through :func:`rawflow.check.check_bijector` (complex-step gradients and log-dets, round
trips, exact log-det cancellation, float32 vs float64, structure), like every rawflow layer.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rawflow import AffineCoupling, Coupling, Partition, tree
from rawflow.check import check_bijector, oracles
from rawflow.nets.cnn import ChannelNorm, Conv2d
from rawflow.bijectors.image_coupling import ChannelCoupling, CheckerboardCoupling
from rawflow.interop.lu import FactoredLULinear
from rawflow.interop.maps import ClampScale, NegatedScale, OffsetSigmoidScale, ShiftScaleTransform, SoftclipScale
from rawflow.interop.nets import Act, Parallel, ResidualMLP, SequentialCNN
from rawflow.nets.mlp import MLP
from rawflow.bijectors.scales import ExpScale, SigmoidScale

SCALES = [
    OffsetSigmoidScale(),
    SoftclipScale(),
    SoftclipScale(0.05),
    ClampScale(1.5, "ATAN"),
    ClampScale(2.0, "TANH"),
    ClampScale(0.7, "SIGMOID"),
    NegatedScale(SigmoidScale()),
    NegatedScale(ExpScale()),
]


def _reference(m, h):
    """The peers' formulas, written independently of the classes under test (float64)."""
    if isinstance(m, OffsetSigmoidScale):
        return np.log(1 / (1 + np.exp(-(h + 2))) + 1e-3)
    if isinstance(m, SoftclipScale):
        return h / (1 + np.abs(h / math.log(m.slope)))
    if isinstance(m, ClampScale):
        f = {"ATAN": lambda u: 0.636 * np.arctan(u), "TANH": np.tanh,
             "SIGMOID": lambda u: 2 * (1 / (1 + np.exp(-u)) - 0.5)}[m.activation]
        return m.clamp * f(h)
    base = m.base
    return -(h if isinstance(base, ExpScale) else -np.log1p(np.exp(-(h + 2))))


@pytest.mark.parametrize("m", SCALES, ids=repr)
def test_scale_map_values_and_complex_step_derivative(m):
    h = np.concatenate([np.linspace(-30, 30, 61), [-0.7, -1e-3, 1e-3, 0.3]])
    log_s, d = m(h)
    # Values: the peers' formulas to round-off (different but equivalent evaluation orders).
    np.testing.assert_allclose(log_s, _reference(m, h), rtol=4e-15, atol=1e-15)
    # d log s / dh vs the complex step: exact to round-off wherever the map is analytic (h ≠ 0 for
    # the |h| of SoftclipScale, which is C¹ at 0 but not C²: there the step and the formula still agree).
    cs = oracles.complex_step(lambda w: m(w)[0], h, np.ones_like(h))
    np.testing.assert_allclose(d, cs, rtol=1e-14, atol=0)


@given(st.floats(-50, 50), st.sampled_from(SCALES))
def test_scale_map_is_finite_and_monotone(h, m):
    eps = 1e-6
    lo, hi = m(np.array([h - eps]))[0], m(np.array([h + eps]))[0]
    d = m(np.array([h]))[1]
    assert np.isfinite(lo).all() and np.isfinite(d).all()
    if isinstance(m, NegatedScale):
        assert hi[0] <= lo[0] and d[0] <= 0
    else:
        assert hi[0] >= lo[0] and d[0] >= 0


def test_scale_map_bounds():
    h = np.array([-1e6, 1e6])
    assert np.all(np.abs(SoftclipScale()(h)[0]) < -math.log(1e-3))
    # FrEIA's 0.636 (not 2/π): |log s| stays below 0.636·π/2·clamp ≈ 0.99903·clamp.
    assert np.all(np.abs(ClampScale(2.0, "ATAN")(h)[0]) <= 0.636 * math.pi / 2 * 2.0)
    assert np.all(OffsetSigmoidScale()(h)[0] >= math.log(1e-3))


def _random(layer, x, rng, scale=0.6):
    return tree.map(lambda a: rng.normal(scale=scale, size=a.shape), layer.init(rng, x))


def _check(layer, params, x, **kw):
    report = check_bijector(layer, params, x, **kw)
    assert report, report.failure_report()
    return report


@pytest.mark.parametrize("m", SCALES + [ExpScale(), SigmoidScale()], ids=repr)
def test_shift_scale_coupling_passes_the_full_check(m):
    rng = np.random.default_rng(1)
    layer = Coupling(5, ShiftScaleTransform(m), partition=Partition(np.array([1, 0, 0, 1, 0]) == 1), hidden=(4,),
                     activation="tanh")
    x = rng.normal(size=(3, 5))
    _check(layer, _random(layer, x, rng), x)


@pytest.mark.parametrize("m", SCALES, ids=repr)
def test_rawflow_affine_coupling_with_peer_scale_maps(m):
    rng = np.random.default_rng(2)
    layer = AffineCoupling(4, scale=m, hidden=(5,), activation="tanh")
    x = rng.normal(size=(2, 4))
    _check(layer, _random(layer, x, rng), x)


def test_shift_scale_transform_definition():
    """y_b = (x_b + t)·s, i.e. rawflow's x_b·s + t' with t' = t·s: same map, different parametrisation."""
    rng = np.random.default_rng(3)
    layer = Coupling(4, ShiftScaleTransform(ExpScale()), hidden=(3,))
    params = _random(layer, rng.normal(size=(2, 4)), rng)
    x = rng.normal(size=(5, 4))
    z, logdet, _ = layer.forward(params, x)
    h, _ = layer.net.apply(params["net"], x[:, :2])
    log_s, t = h[:, :2], h[:, 2:]
    np.testing.assert_array_equal(z[:, :2], x[:, :2])
    np.testing.assert_allclose(z[:, 2:], (x[:, 2:] + t) * np.exp(log_s), rtol=1e-15)
    np.testing.assert_allclose(logdet, log_s.sum(axis=1), rtol=1e-15)


def test_shift_scale_image_couplings():
    rng = np.random.default_rng(4)
    net = SequentialCNN([("0", Conv2d(2, 3, 3)), ("1", Act("leaky_relu", 0.2)), ("2", ChannelNorm(3)),
                         ("3", Conv2d(3, 4, 1))])
    layer = ChannelCoupling(4, ShiftScaleTransform(SigmoidScale()), conditioner=net)
    x = rng.normal(size=(2, 4, 3, 3))
    _check(layer, _random(layer, x, rng, 0.4), x, fd_columns=32)
    nets = Parallel([SequentialCNN([("0", Conv2d(2, 2, 3))]), SequentialCNN([("0", Conv2d(2, 3, 1)), ("1", Act()),
                                                                               ("2", Conv2d(3, 2, 3))])])
    layer = CheckerboardCoupling(2, ShiftScaleTransform(ExpScale()), conditioner=nets, flip=True)
    x = rng.normal(size=(2, 2, 4, 4))
    _check(layer, _random(layer, x, rng, 0.4), x, fd_columns=32)


@pytest.mark.parametrize("blocks", [0, 1, 2])
@pytest.mark.parametrize("activation", ["relu", "tanh", "leaky_relu"])
def test_residual_mlp_conditioner(blocks, activation):
    rng = np.random.default_rng(5)
    net = ResidualMLP(2, 6, hidden=4, blocks=blocks, activation=activation)
    layer = AffineCoupling(5, partition=Partition(np.array([0, 1, 0, 1, 0]) == 1), conditioner=net)
    x = rng.normal(size=(3, 5))
    params = _random(layer, x, rng)
    assert ("blocks" in params["net"]) == (blocks > 0)
    _check(layer, params, x)


def test_residual_mlp_matches_its_definition():
    rng = np.random.default_rng(6)
    net = ResidualMLP(3, 2, hidden=4, blocks=2)
    x = rng.normal(size=(5, 3))
    p = _random(AffineCoupling(6, conditioner=ResidualMLP(3, 6, 4, 2)), np.zeros((1, 6)), rng)["net"]
    p["out"] = {"w": rng.normal(size=(2, 4)), "b": rng.normal(size=2)}
    relu = lambda a: np.maximum(a, 0)  # noqa: E731
    h = x @ p["in"]["w"].T + p["in"]["b"]
    for k in range(2):
        blk = p["blocks"][str(k)]
        h = h + relu(relu(h) @ blk["0"]["w"].T + blk["0"]["b"]) @ blk["1"]["w"].T + blk["1"]["b"]
    np.testing.assert_allclose(net.apply(p, x)[0], h @ p["out"]["w"].T + p["out"]["b"], rtol=1e-14)


def test_parallel_conditioner():
    rng = np.random.default_rng(7)
    net = Parallel([MLP(2, 3, (4,)), MLP(2, 3, (5,), "tanh")])
    assert (net.in_features, net.out_features) == (2, 6)
    layer = AffineCoupling(5, scale="bounded", partition=Partition(np.array([1, 0, 0, 1, 0]) == 1), conditioner=net)
    x = rng.normal(size=(3, 5))
    _check(layer, _random(layer, x, rng), x)
    with pytest.raises(ValueError, match="input width"):
        Parallel([MLP(2, 3), MLP(3, 3)])


@pytest.mark.parametrize("spatial", [0, 2])
def test_factored_lu_linear(spatial):
    rng = np.random.default_rng(8)
    c = 4
    layer = FactoredLULinear(c, perm=[2, 0, 3, 1], sign=[1, -1, -1, 1], spatial=spatial)
    x = rng.normal(size=(2, c) + (3, 2) * (spatial // 2))
    params = layer.init(rng, x)
    w = layer.weight(params)
    np.testing.assert_array_equal(w, np.diag([1.0, -1, -1, 1])[[2, 0, 3, 1]])
    params = {"lower": np.tril(rng.normal(size=(c, c)), -1), "upper": np.triu(rng.normal(size=(c, c)), 1),
              "log_scale": rng.normal(scale=0.3, size=c)}
    _check(layer, params, x)


def test_factored_lu_linear_validation():
    with pytest.raises(ValueError, match="FactoredLULinear: perm"):
        FactoredLULinear(3, perm=[0, 0, 1])
    with pytest.raises(ValueError, match="FactoredLULinear: sign"):
        FactoredLULinear(3, sign=[1, 0.5, 1])
    assert np.array_equal(FactoredLULinear(3).perm, np.arange(3))


def test_scale_map_validation():
    with pytest.raises(ValueError, match="ClampScale"):
        ClampScale(2.0, "RELU")
    with pytest.raises(ValueError, match="SoftclipScale"):
        SoftclipScale(2.0)
    with pytest.raises(ValueError, match="OffsetSigmoidScale"):
        OffsetSigmoidScale(eps=-1)


def test_interop_package_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, rawflow, rawflow.interop, rawflow.interop.maps, rawflow.interop.nets, rawflow.interop.lu; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_verify_without_torch_is_a_clean_exit(monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("no torch")
        return real_import(name, *args, **kwargs)

    from rawflow.interop import run_verify_cli

    monkeypatch.setattr(builtins, "__import__", no_torch)
    assert run_verify_cli(["--peer", "zuko"]) == 2
    assert "needs PyTorch" in capsys.readouterr().err
