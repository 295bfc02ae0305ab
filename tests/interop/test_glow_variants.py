"""Glow's conventions pinned against small torch re-implementations of each peer's definitions,
written from the peers' code (float64; the table in docs/glow-variants.md cites each test here).

* openai/glow (TensorFlow, NHWC; re-expressed in NCHW): ``tfops.actnorm``, ``tfops.add_edge_padding``
  + ``conv2d`` / ``conv2d_zeros``, ``model.f``, ``model.revnet2d_step``, ``model.split2d_prior``,
  ``model.prior``, ``model.invertible_1x1_conv`` and the whole encoder's objective;
* rosinality/glow-pytorch ``model.py``: ``ActNorm``, ``AffineCoupling``, ``ZeroConv2d``;
* chaiyujin/glow-pytorch ``glow/modules.py`` and y0ast/Glow-PyTorch ``modules.py`` (the same
  definitions): ``ActNorm2d``, ``Conv2d`` / ``Conv2dZeros``, the ``f`` / ``get_block`` network,
  ``Split2d``, ``learn_top``.
"""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from rawflow import FlowModel, StandardNormal, tree  # noqa: E402
from rawflow.bijectors.actnorm import ActNorm  # noqa: E402
from rawflow.bijectors.openai import (  # noqa: E402
    OpenAIActNorm,
    OpenAIAffineTransform,
    OpenAICoupling,
    OpenAIInvConv,
    OpenAILearnTop,
    OpenAISplit,
)
from rawflow.bijectors.split import GlowTopPrior, Split  # noqa: E402
from rawflow.interop.maps import ShiftScaleTransform  # noqa: E402
from rawflow.models.architectures import glow  # noqa: E402
from rawflow.nets.cnn import GlowCNN, ZeroConv2d  # noqa: E402
from rawflow.nets.openai import EdgeZeroConv2d  # noqa: E402
from support.image_checks import randomize_cnn  # noqa: E402

RTOL = 1e-12
LOG_2PI = math.log(2 * math.pi)


def T(a, grad=False):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)


def params_to_torch(params):
    return tree.map(lambda a: T(a, grad=True), params)


def close(a, b, rtol=RTOL):
    a = np.asarray(a.detach().numpy() if hasattr(a, "detach") else a, dtype=np.float64)
    b = np.asarray(b.detach().numpy() if hasattr(b, "detach") else b, dtype=np.float64)
    scale = max(np.max(np.abs(b), initial=0.0), 1e-300)
    return np.max(np.abs(a - b), initial=0.0) <= rtol * scale


def compare_with_autograd(layer, params, x, reference, rng):
    """rawflow's forward and hand-written VJP against ``reference(tparams, tx) -> (z, logdet)``
    and torch autograd of ``L = Σ g·z + Σ gλ·logdet``, every input and parameter."""
    z, logdet, cache = layer.forward(params, x)
    tp, tx = params_to_torch(params), T(x, grad=True)
    tz, tld = reference(tp, tx)
    assert close(z, tz) and close(logdet, tld)
    g, gl = rng.normal(size=z.shape), rng.normal(size=logdet.shape)
    gx, gp = layer.backward(params, cache, g, gl)
    ((tz * T(g)).sum() + (tld * T(gl)).sum()).backward()
    assert close(gx, tx.grad)
    for path, leaf in tree.leaves(gp):
        assert close(leaf, tree.get(tp, path).grad), path


# ------------------------------------------------------------------------------------ openai/glow
def tf_actnorm(x, b, logs):
    """``tfops.actnorm``: ``actnorm_center`` (x + b) then ``actnorm_scale`` (× exp(logs·3)),
    ``dlogdet = sum(logs·3)·H·W``."""
    logs3 = logs * 3.0
    z = (x + b.view(1, -1, 1, 1)) * torch.exp(logs3).view(1, -1, 1, 1)
    return z, (logs3.sum() * x.shape[2] * x.shape[3]).expand(x.shape[0])


def tf_actnorm_init(x):
    b = -x.mean(dim=(0, 2, 3))
    var = ((x + b.view(1, -1, 1, 1)) ** 2).mean(dim=(0, 2, 3))
    return b, torch.log(1.0 / (torch.sqrt(var) + 1e-6)) / 3.0


def tf_edge_pad(x, k):
    """``tfops.add_edge_padding``: zero padding plus one channel that is 1 on the padded border."""
    if k == 1:
        return x
    p = k // 2
    x = F.pad(x, [p, p, p, p])
    border = torch.ones_like(x[:, :1])
    border[:, :, p:-p, p:-p] = 0.0
    return torch.cat([x, border], dim=1)


def tf_conv(x, w):  # tfops.conv2d's convolution with edge_bias=True, pad SAME → VALID on the edge frame
    return F.conv2d(tf_edge_pad(x, w.shape[-1]), w)


def tf_conv_zeros(x, p):  # tfops.conv2d_zeros
    return (tf_conv(x, p["w"]) + p["b"].view(1, -1, 1, 1)) * torch.exp(p["logs"] * 3.0).view(1, -1, 1, 1)


def tf_f(x, p):
    """``model.f``: conv2d (actnorm inside) → relu → conv2d 1×1 (actnorm) → relu → conv2d_zeros."""
    h = F.relu(tf_actnorm(tf_conv(x, p["conv1"]["w"]), p["norm1"]["b"], p["norm1"]["logs"])[0])
    h = F.relu(tf_actnorm(tf_conv(h, p["conv2"]["w"]), p["norm2"]["b"], p["norm2"]["logs"])[0])
    return tf_conv_zeros(h, p["out"])


def tf_affine_coupling(z, p):
    """``revnet2d_step`` with ``flow_coupling == 1``: shift = h[0::2], scale = sigmoid(h[1::2] + 2)."""
    c = z.shape[1]
    z1, z2 = z[:, :c // 2], z[:, c // 2:]
    h = tf_f(z1, p["net"])
    shift, scale = h[:, 0::2], torch.sigmoid(h[:, 1::2] + 2.0)
    z2 = (z2 + shift) * scale
    return torch.cat([z1, z2], dim=1), torch.log(scale).sum(dim=(1, 2, 3))


def tf_gaussian_logp(x, mean, logsd):  # tfops.gaussian_diag(...).logp
    return (-0.5 * (LOG_2PI + 2.0 * logsd + (x - mean) ** 2 / torch.exp(2.0 * logsd))).sum(dim=(1, 2, 3))


def tf_split_logp(z, p):
    """``split2d`` / ``split2d_prior``: h = conv2d_zeros(z1), mean = h[0::2], logs = h[1::2]."""
    c = z.shape[1]
    h = tf_conv_zeros(z[:, :c // 2], p["prior"])
    return z[:, :c // 2], tf_gaussian_logp(z[:, c // 2:], h[:, 0::2], h[:, 1::2])


def tf_top_logp(z, p):
    """``model.prior`` with ``--learntop``: h = conv2d_zeros(zeros), mean = h[:, :C], logsd = h[:, C:]."""
    c = z.shape[1]
    h = tf_conv_zeros(torch.zeros(z.shape[0], 2 * c, z.shape[2], z.shape[3], dtype=z.dtype), p)
    return tf_gaussian_logp(z, h[:, :c], h[:, c:])


def tf_squeeze(x):  # tfops.squeeze2d, NHWC reshape [.., H/2, 2, W/2, 2, C] → channel index c·4 + 2i + j
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, h // 2, w // 2)


def tf_invconv(z, weight_tf):
    """``invertible_1x1_conv`` (dense): NHWC conv with ``w[in, out]`` (z ↦ Wᵀ z per pixel),
    ``dlogdet = cast(log|det(cast(w, float64))|, dtype)·H·W``."""
    out = torch.einsum("io,nihw->nohw", weight_tf, z)
    lad = torch.log(torch.abs(torch.det(weight_tf.to(torch.float64)))).to(z.dtype)
    return out, (lad * (z.shape[2] * z.shape[3])).expand(z.shape[0])


def openai_params(layer, shape, seed, scale=0.5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape)
    params = layer.init(rng, x)
    return randomize_cnn(params, rng, scale), x, rng


def test_openai_actnorm_matches_the_reference_definition_and_init():
    rng = np.random.default_rng(0)
    x = 2 + 3 * rng.normal(size=(4, 3, 3, 2))
    layer = OpenAIActNorm(3, spatial=2)
    p = layer.init(None, x)
    b, logs = tf_actnorm_init(T(x))
    assert close(p["b"], b) and close(p["logs"], logs)
    p = {"b": p["b"] + 0.1, "logs": p["logs"] - 0.2}
    compare_with_autograd(layer, p, x, lambda tp, tx: tf_actnorm(tx, tp["b"], tp["logs"]), rng)


def test_openai_coupling_matches_the_reference_step():
    layer = OpenAICoupling(4, width=3)
    params, x, rng = openai_params(layer, (2, 4, 3, 3), 1)
    compare_with_autograd(layer, params, x, lambda tp, tx: tf_affine_coupling(tx, tp), rng)


def test_openai_additive_coupling_matches_the_reference_step():
    layer = OpenAICoupling(4, "additive", width=3)
    params, x, rng = openai_params(layer, (2, 4, 3, 3), 2)

    def reference(tp, tx):
        z1, z2 = tx[:, :2], tx[:, 2:]
        return torch.cat([z1, z2 + tf_f(z1, tp["net"])], dim=1), torch.zeros(tx.shape[0], dtype=tx.dtype)

    compare_with_autograd(layer, params, x, reference, rng)


def test_openai_split_and_learned_top_score_what_the_reference_scores():
    for layer, shape, seed in ((OpenAISplit(4), (2, 4, 3, 3), 3), (OpenAILearnTop(2), (2, 2, 3, 3), 4)):
        params, x, rng = openai_params(layer, shape, seed)
        model = FlowModel(layer, StandardNormal(shape[1:]))
        mp = {"flow": params, "prior": {}}
        lp = model.log_prob(mp, x)
        loss, grads = model.nll_and_grad(mp, x)
        tp = params_to_torch(params)
        if isinstance(layer, OpenAISplit):
            z1, logp2 = tf_split_logp(T(x), tp)
            # the kept half leaves the layer unchanged and is scored here by the standard normal
            ref = logp2 + tf_gaussian_logp(z1, torch.zeros_like(z1), torch.zeros_like(z1))
        else:
            ref = tf_top_logp(T(x), tp)
        assert close(lp, ref)
        (-ref.mean()).backward()
        for path, leaf in tree.leaves(grads["flow"]):
            assert close(leaf, tree.get(tp, path).grad), path


def test_openai_invconv_matches_the_reference_with_a_transposed_weight():
    rng = np.random.default_rng(5)
    layer = OpenAIInvConv(4, spatial=2, seed=1)
    x = rng.normal(size=(2, 4, 2, 3))
    params = tree.map(lambda a: a + 0.2 * rng.normal(size=a.shape), layer.init(None, x))
    compare_with_autograd(layer, params, x, lambda tp, tx: tf_invconv(tx, tp["weight"].T), rng)
    # float32: the log-det is the float64 one cast, then multiplied by H·W in float32, as in the reference
    x32, w32 = x.astype(np.float32), params["weight"].astype(np.float32)
    _, ld, _ = layer.forward({"weight": w32}, x32)
    _, tld = tf_invconv(torch.tensor(x32), torch.tensor(w32).T)
    assert np.array_equal(ld, tld.numpy())


def test_openai_glow_log_likelihood_is_the_reference_encoders_objective():
    """A two-level model (K = 2, learned top): ``glow(..., variant="openai")`` under N(0, I) gives
    the log-density ``codec.encoder`` + ``prior`` accumulate in ``objective`` (without the
    dequantisation term), and the same gradient for every parameter."""
    flow = glow(2, 2, 3, (1, 4, 4), variant="openai")
    model = FlowModel(flow, StandardNormal((16,)))
    rng = np.random.default_rng(6)
    x = rng.uniform(size=(3, 1, 4, 4)) - 0.5
    params = model.init(rng, x)
    params = {"flow": randomize_cnn(params["flow"], rng, 0.3), "prior": {}}
    for level in params["flow"].values():  # keep the 1×1 convolutions invertible rotations, moved a little
        for layer in level.values():
            if "weight" in layer:
                layer["weight"] = np.linalg.qr(rng.normal(size=layer["weight"].shape))[0] + 0.1 * rng.normal(
                    size=layer["weight"].shape)
    lp = model.log_prob(params, x)
    _, grads = model.nll_and_grad(params, x)
    tp = params_to_torch(params["flow"])

    def revnet(z, level):
        objective = 0.0
        for k in range(2):
            a, m, c = (level[str(1 + 3 * k + i)] for i in range(3))
            z, ld = tf_actnorm(z, a["b"], a["logs"])
            objective = objective + ld
            z, ld = tf_invconv(z, m["weight"].T)
            objective = objective + ld
            z, ld = tf_affine_coupling(z, c)
            objective = objective + ld
        return z, objective

    z = tf_squeeze(T(x))
    z, objective = revnet(z, tp["0"])
    z, logp = tf_split_logp(z, tp["0"]["7"])
    objective = objective + logp
    z, ld = revnet(tf_squeeze(z), tp["1"])
    objective = objective + ld + tf_top_logp(z, tp["1"]["7"])
    assert close(lp, objective, rtol=1e-11)
    (-objective.mean()).backward()
    for path, leaf in tree.leaves(grads["flow"]):
        assert close(leaf, tree.get(tp, path).grad, rtol=1e-10), path


# ------------------------------------------------------------------------------- rosinality
def rosinality_actnorm_init(x):
    """``ActNorm.initialize``: loc = −mean, scale = 1/(std + 1e-6) with torch's *unbiased* std."""
    flat = x.permute(1, 0, 2, 3).reshape(x.shape[1], -1)
    return -flat.mean(1), 1.0 / (flat.std(1) + 1e-6)


def test_rosinality_actnorm_is_scale_times_shift_initialised_with_the_unbiased_std():
    rng = np.random.default_rng(7)
    x = 1 + 2 * rng.normal(size=(3, 2, 2, 2))
    loc, scale = rosinality_actnorm_init(T(x))
    std1 = x.transpose(1, 0, 2, 3).reshape(2, -1).std(axis=1, ddof=1)
    assert close(scale, 1 / (std1 + 1e-6))
    # its map s·(x + loc), log-det H·W·Σ log|s|, is rawflow's ActNorm at log_scale = log s:
    layer = ActNorm(2, spatial=2)
    p = {"bias": loc.numpy(), "log_scale": np.log(scale.numpy())}
    z, ld, _ = layer.forward(p, x)
    assert close(z, scale.view(1, -1, 1, 1) * (T(x) + loc.view(1, -1, 1, 1)))
    assert close(ld, np.full(3, 4 * np.log(scale.numpy()).sum()))
    # but its init differs from rawflow's (population std) by the factor √(M/(M−1)) at M = 12 values
    ours = np.exp(layer.init(None, x)["log_scale"])
    assert np.allclose(ours / scale.numpy(), np.sqrt(12 / 11), rtol=1e-6)


def test_rosinality_coupling_is_shift_then_scale_on_chunked_channels():
    """``AffineCoupling.forward``: ``log_s, t = net(in_a).chunk(2)``, ``s = sigmoid(log_s + 2)``,
    ``out_b = (in_b + t)·s``: the openai transform with ``h`` in halves instead of interleaved, i.e.
    :class:`~rawflow.interop.maps.ShiftScaleTransform` with the sigmoid map."""
    rng = np.random.default_rng(8)
    xb, h = rng.normal(size=(2, 2, 3, 3)), rng.normal(size=(2, 4, 3, 3))
    log_s, t = T(h).chunk(2, 1)
    s = torch.sigmoid(log_s + 2)
    out_b, ld = (T(xb) + t) * s, torch.log(s).sum(dim=(1, 2, 3))
    y, logdet, _ = ShiftScaleTransform("sigmoid").forward(xb, h)
    assert close(y, out_b) and close(logdet, ld)
    interleaved = np.stack([h[:, 2:], h[:, :2]], axis=2).reshape(h.shape)  # [t₀, log_s₀, t₁, log_s₁]
    y2, logdet2, _ = OpenAIAffineTransform().forward(xb, interleaved)
    assert close(y2, out_b) and close(logdet2, ld)


def test_rosinality_zero_conv_pads_every_channel_with_ones():
    """``ZeroConv2d``: ``F.pad(x, value=1)`` on all channels, then a 3×3 conv, × exp(3·scale): the
    reference's edge channel with its weight tied to the sum of the others, ``w_E = Σ_c w[:, c]``."""
    rng = np.random.default_rng(9)
    x = rng.normal(size=(2, 3, 3, 4))
    w, b, logs = 0.3 * rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4), 0.2 * rng.normal(size=4)
    ref = (F.conv2d(F.pad(T(x), [1, 1, 1, 1], value=1.0), T(w), T(b))) * torch.exp(T(logs) * 3).view(1, -1, 1, 1)
    tied = {"w": np.concatenate([w, w.sum(axis=1, keepdims=True)], axis=1), "b": b, "logs": logs}
    y, _ = EdgeZeroConv2d(3, 4).apply(tied, x)
    assert close(y, ref)
    y_zero, _ = ZeroConv2d(3, 4).apply({"w": w, "b": b, "logs": logs}, x)
    assert not close(y_zero, ref, rtol=1e-3)  # and it is not zero padding


# ------------------------------------------------------------------- chaiyujin / y0ast (same code)
def port_actnorm(x, bias, logs):
    """``_ActNorm`` (both ports): ``(x + bias)·exp(logs)``, no factor; init as the reference's
    without the division by 3."""
    return (x + bias.view(1, -1, 1, 1)) * torch.exp(logs).view(1, -1, 1, 1)


def port_f(x, p):
    """``f`` (chaiyujin ``models.py``) / ``get_block`` (y0ast ``model.py``): zero-padded ``Conv2d``
    with ActNorm, ReLU, 1×1 ``Conv2d`` with ActNorm, ReLU, zero-padded ``Conv2dZeros`` (factor 3)."""
    h = F.relu(port_actnorm(F.conv2d(x, p["conv1"]["w"], padding=1), p["norm1"]["b"], p["norm1"]["logs"]))
    h = F.relu(port_actnorm(F.conv2d(h, p["conv2"]["w"]), p["norm2"]["b"], p["norm2"]["logs"]))
    return (F.conv2d(h, p["out"]["w"], p["out"]["b"], padding=1)) * torch.exp(p["out"]["logs"] * 3).view(1, -1, 1, 1)


def test_port_network_is_rawflows_glow_cnn():
    rng = np.random.default_rng(10)
    net = GlowCNN(2, 4, 3)
    x = rng.normal(size=(2, 2, 3, 3))
    params = randomize_cnn(net.init(rng, x), rng, 0.5)
    y, cache = net.apply(params, x)
    tp, tx = params_to_torch(params), T(x, grad=True)
    ty = port_f(tx, tp)
    assert close(y, ty)
    gy = rng.normal(size=y.shape)
    gx, gp = net.backward(params, cache, gy)
    (ty * T(gy)).sum().backward()
    assert close(gx, tx.grad) and all(close(leaf, tree.get(tp, path).grad) for path, leaf in tree.leaves(gp))


def test_port_actnorm_init_is_three_times_the_references_stored_logs():
    rng = np.random.default_rng(11)
    x = 2 + rng.normal(size=(4, 3, 2, 2))
    tx = T(x)
    bias = -tx.mean(dim=(0, 2, 3))
    logs_port = torch.log(1.0 / (torch.sqrt(((tx + bias.view(1, -1, 1, 1)) ** 2).mean(dim=(0, 2, 3))) + 1e-6))
    logs_openai = OpenAIActNorm(3, spatial=2).init(None, x)["logs"]
    assert close(3 * logs_openai, logs_port, rtol=1e-14)
    z_port = port_actnorm(tx, bias, logs_port)
    z, _, _ = OpenAIActNorm(3, spatial=2).forward({"b": bias.numpy(), "logs": logs_port.numpy() / 3}, x)
    assert close(z, z_port, rtol=1e-14)


def test_port_split_and_learn_top_are_rawflows_split_and_glow_top_prior():
    """``Split2d`` (cross split of a zero-padded ``Conv2dZeros``) is :class:`Split`; ``learn_top``
    (``Conv2dZeros(2C, 2C)`` of zeros, zero padding, ``split_feature(h, "split")``) is
    :class:`GlowTopPrior`: a per-channel Gaussian, no border effect."""
    rng = np.random.default_rng(12)
    split = Split(4)
    x = rng.normal(size=(2, 4, 3, 3))
    params = randomize_cnn(split.init(rng, x), rng, 0.5)
    kept, logp, _, _ = split.factor(params, x)
    p = params["prior"]
    h = F.conv2d(T(x[:, :2]), T(p["w"]), T(p["b"]), padding=1) * torch.exp(T(p["logs"]) * 3).view(1, -1, 1, 1)
    assert close(logp, tf_gaussian_logp(T(x[:, 2:]), h[:, 0::2], h[:, 1::2]))
    top = GlowTopPrior(2)
    z = rng.normal(size=(2, 2, 3, 3))
    tp = {"b": 0.3 * rng.normal(size=4), "logs": 0.1 * rng.normal(size=4)}
    w = rng.normal(size=(4, 4, 3, 3))  # the port's conv weights: they see only zeros and zero padding
    h = (F.conv2d(torch.zeros(2, 4, 3, 3, dtype=torch.float64), T(w), T(tp["b"]), padding=1)
         * torch.exp(T(tp["logs"]) * 3).view(1, -1, 1, 1))
    lp, _ = top.log_prob(tp, z)
    assert close(lp, tf_gaussian_logp(T(z), h[:, :2], h[:, 2:]))


def test_every_test_the_variant_table_cites_exists():
    """docs/glow-variants.md names the test pinning each convention: each must exist."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[2]
    table = (root / "docs" / "glow-variants.md").read_text()
    cited = set(re.findall(r"`(test_[a-z0-9_]+)`", table))
    defined = set()
    for path in (root / "tests").rglob("test_*.py"):
        defined |= set(re.findall(r"^def (test_[a-z0-9_]+)", path.read_text(), flags=re.M))
    assert len(cited) >= 25 and not cited - defined, sorted(cited - defined)
