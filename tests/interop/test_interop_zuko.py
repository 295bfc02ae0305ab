"""zuko ↔ rawflow: couplings, LU and permutation transforms, imported and exported, in float64
(see rawflow/interop/zuko.py)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
zuko = pytest.importorskip("zuko")

from rawflow import Chain  # noqa: E402
from rawflow.interop import zuko as peer  # noqa: E402
from rawflow.interop.compare import compare_binding, format_table  # noqa: E402
from rawflow.bijectors.linear import LULinear  # noqa: E402

CASES = peer.cases(seed=0)


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_mapped_layer_agrees(case):
    result = case()
    assert result.rows, "nothing compared"
    assert result.passed, format_table([result])


def test_whole_realnvp_flow_transform_and_log_prob():
    torch.manual_seed(0)
    flow = zuko.flows.RealNVP(4, transforms=2, hidden_features=(5,)).double()
    for p in flow.parameters():
        p.data.normal_(std=0.4)
    layer, params = peer.from_peer(flow)
    assert isinstance(layer, Chain) and len(layer) == 2
    x = torch.randn(3, 4, dtype=torch.float64)
    z, ld, _ = layer.forward(params, x.numpy())
    logp = -0.5 * (z**2).sum(1) - 2 * np.log(2 * np.pi) + ld  # zuko's base is N(0, I)
    np.testing.assert_allclose(logp, flow().log_prob(x).detach().numpy(), rtol=1e-13)


def test_lu_with_permutation_exports_as_composed_transform():
    rng = np.random.default_rng(0)
    layer = LULinear(4, seed=3)
    params = layer.init(rng, np.zeros((1, 4)))
    params["log_scale"] = params["log_scale"] + rng.normal(scale=0.3, size=4)
    module = peer.to_peer(layer, params)
    assert isinstance(module, zuko.lazy.LazyComposedTransform)
    x = rng.normal(size=(5, 4))
    z, ld, _ = layer.forward(params, x)
    z_peer, ld_peer = module().call_and_ladj(torch.tensor(x))
    np.testing.assert_allclose(z_peer.detach().numpy(), z, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(ld_peer.detach().numpy(), ld, rtol=1e-13)
    result = compare_binding(peer.bind(module), x, build="import")
    assert result.passed, format_table([result])


def test_lu_sign_is_fixed_at_import():
    lu = torch.eye(3, dtype=torch.float64)
    lu[1, 1] = -2.0
    module = zuko.lazy.UnconditionalTransform(zuko.transforms.LULinearTransform, lu, buffer=False)
    layer, params = peer.from_peer(module)
    assert layer.sign.tolist() == [1.0, -1.0, 1.0]
    np.testing.assert_allclose(params["log_scale"], [0.0, np.log(2.0), 0.0], atol=0)


def test_unmapped_layers_raise():
    with pytest.raises(ValueError, match="context"):
        peer.bind(zuko.flows.coupling.GeneralCouplingTransform(4, context=2))
    with pytest.raises(ValueError, match="zuko"):
        peer.bind(zuko.flows.MAF(3, transforms=1).transform.transforms[0])
