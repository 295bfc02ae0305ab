"""nflows ↔ rawflow: every mapped layer, imported and exported, in float64 (see rawflow/interop/nflows.py)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nflows")

from nflows.nn.nets import ResidualNet  # noqa: E402
from nflows.transforms import (  # noqa: E402
    ActNorm as NfActNorm,
    AffineCouplingTransform,
    LULinear as NfLULinear,
    NaiveLinear,
    PiecewiseRationalQuadraticCouplingTransform,
)

from rawflow import AffineCoupling  # noqa: E402
from rawflow.bijectors.actnorm import ActNorm  # noqa: E402
from rawflow.interop import nflows as peer  # noqa: E402
from rawflow.interop.compare import format_table  # noqa: E402

CASES = peer.cases(seed=0)


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_mapped_layer_agrees(case):
    result = case()
    assert result.rows, "nothing compared"
    assert result.passed, format_table([result])


def _coupling(d=4):
    return AffineCouplingTransform(torch.tensor([1, 0, 1, 0]),
                                   lambda i, o: ResidualNet(i, o, hidden_features=5, num_blocks=1)).double()


def test_from_peer_and_back_reproduce_the_state():
    module = _coupling()
    torch.manual_seed(1)
    for p in module.parameters():
        p.data.normal_()
    layer, params = peer.from_peer(module)
    assert isinstance(layer, AffineCoupling)
    assert layer.partition.mask.tolist() == [False, True, False, True]  # nflows mask > 0 = transformed
    back = peer.to_peer(layer, params)
    for (name, a), (_, b) in zip(module.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name
    x = torch.randn(3, 4, dtype=torch.float64)
    z, ld, _ = layer.forward(params, x.numpy())
    np.testing.assert_allclose(z, module(x)[0].detach().numpy(), rtol=1e-14)


def test_unmapped_layers_raise():
    spline = PiecewiseRationalQuadraticCouplingTransform(torch.tensor([1, 0]), lambda i, o: ResidualNet(i, o, 4))
    with pytest.raises(ValueError, match="nflows"):
        peer.bind(spline)
    ctx = AffineCouplingTransform(torch.tensor([1, 0]), lambda i, o: ResidualNet(i, o, 4, context_features=2))
    with pytest.raises(ValueError, match="context"):
        peer.bind(ctx)
    with pytest.raises(ValueError, match="no nflows counterpart"):
        peer.to_peer(AffineCoupling(4), AffineCoupling(4).init(np.random.default_rng(0), np.zeros((1, 4))))


def test_actnorm_data_init_differs_only_by_bessel_correction():
    """nflows initialises with the unbiased std (ddof 1), rawflow with the population std (ddof 0)."""
    x = torch.randn(7, 3, dtype=torch.float64)
    module = NfActNorm(3).double()
    module(x)  # training mode: data-dependent init
    _, imported = peer.from_peer(module)
    native = ActNorm(3).init(np.random.default_rng(0), x.numpy())
    np.testing.assert_allclose(imported["bias"], native["bias"], rtol=1e-13)
    np.testing.assert_allclose(imported["log_scale"] - native["log_scale"], -0.5 * np.log(7 / 6), rtol=1e-10)


# ---------------------------------------------------------------------- peer findings (docs/peer-findings.md)
def _reproduces(fn, exc=RuntimeError):
    try:
        fn()
    except exc:
        return True
    return False


def test_finding_naive_linear_inverse_uses_removed_torch_solve():
    t = NaiveLinear(3).double()
    if not _reproduces(lambda: t.inverse(torch.randn(2, 3, dtype=torch.float64))):
        pytest.skip("fixed upstream: update docs/peer-findings.md")


def test_finding_lu_cached_inverse_fails_in_float64():
    t = NfLULinear(3, using_cache=True).double().eval()
    if not _reproduces(lambda: t.inverse(torch.randn(2, 3, dtype=torch.float64))):
        pytest.skip("fixed upstream: update docs/peer-findings.md")


def test_finding_actnorm_init_on_constant_feature_is_infinite():
    x = torch.randn(8, 3, dtype=torch.float64)
    x[:, 1] = 0.0
    module = NfActNorm(3).double()
    z, _ = module(x)
    if torch.isfinite(module.log_scale).all():
        pytest.skip("fixed upstream: update docs/peer-findings.md")
    assert not torch.isfinite(z).all()
    # rawflow's init stays finite for the same batch
    assert np.isfinite(ActNorm(3).init(np.random.default_rng(0), x.numpy())["log_scale"]).all()


def test_whole_composite_transform_imports_as_a_chain():
    from nflows.transforms import CompositeTransform, RandomPermutation

    from rawflow import Chain
    from rawflow.interop.compare import compare_binding

    torch.manual_seed(2)
    act = NfActNorm(4).double()
    act.initialized.fill_(True)
    model = CompositeTransform([_coupling(), RandomPermutation(4), act, NfLULinear(4, identity_init=False).double()])
    for p in model.parameters():
        p.data.normal_(std=0.4)
    binding = peer.bind(model)
    assert isinstance(binding.layer, Chain) and len(binding.layer) == 4
    result = compare_binding(binding, np.random.default_rng(0).normal(size=(3, 4)))
    assert result.passed, format_table([result])
