"""The comparison engine and the `rawflow verify` entry point."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rawflow.interop import compare  # noqa: E402


def test_errors_measure():
    assert compare.errors([1.0, 2.0], [1.0, 2.0]) == (0.0, 0.0)
    assert compare.errors([0.0], [0.0]) == (0.0, 0.0)
    a, r = compare.errors([1.0, 2.0 + 4e-16], [1.0, 2.0])
    assert a == pytest.approx(4.440892098500626e-16) and r == pytest.approx(a / (2.0 + 4e-16))
    assert compare.errors([np.nan], [1.0]) == (np.inf, np.inf)
    assert compare.errors([0.0, 0.0], 3.0)[1] == 1.0  # scalar reference broadcast


def test_engine_catches_a_definitional_mismatch():
    """A deliberately wrong map (rawflow's default exp scale for nflows' sigmoid(h + 2) + 1e-3) fails."""
    pytest.importorskip("nflows")
    from nflows.nn.nets import ResidualNet
    from nflows.transforms import AffineCouplingTransform

    from rawflow import AffineCoupling
    from rawflow.interop import nflows as peer

    module = AffineCouplingTransform(torch.tensor([1, 0, 1]), lambda i, o: ResidualNet(i, o, 4)).double()
    for p in module.parameters():
        p.data.normal_(std=0.5)
    binding = peer.bind(module)
    wrong = AffineCoupling(3, partition=binding.layer.partition, conditioner=binding.layer.net)  # exp scale
    x = np.random.default_rng(0).normal(size=(4, 3))
    good = compare.compare_binding(binding, x)
    bad = compare.compare_binding(binding, x, layer=wrong)
    assert good.passed and not bad.passed
    failed = {r.quantity for r in bad.rows if not r.passed}
    assert {"forward.z", "forward.logdet", "inverse.x"} <= failed
    assert "FAIL" in compare.format_table([bad])


def test_engine_catches_a_wrong_gradient(monkeypatch):
    """A perturbed hand-written VJP fails the gradient rows only."""
    pytest.importorskip("zuko")
    from rawflow.interop import zuko as peer

    case = peer.cases(0)[0]  # affine coupling, import
    from rawflow.bijectors.coupling import AffineTransform

    real = AffineTransform.backward

    def skewed(self, tcache, gyb, glogdet):
        gx, gh = real(self, tcache, gyb, glogdet)
        return gx * (1 + 1e-8), gh

    monkeypatch.setattr(AffineTransform, "backward", skewed)
    result = case()
    failed = {r.quantity for r in result.rows if not r.passed}
    assert failed and all(".grad[" in q and q.startswith("forward.") for q in failed)


def test_verify_cli_json_and_exit_codes(tmp_path, capsys, monkeypatch):
    pytest.importorskip("zuko")
    out = tmp_path / "zuko.json"
    assert compare.run_verify_cli(["--peer", "zuko", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "zuko · GeneralCouplingTransform[affine] · import  [PASS]" in text
    payload = json.loads(out.read_text())
    assert payload["tolerances"] == {"values": 1e-12, "gradients": 1e-10}
    assert payload["rows"] and all(r["passed"] for r in payload["rows"])
    assert {s["build"] for s in payload["summary"]} == {"import", "export"}
    # A failing comparison makes the command exit 1.
    from rawflow.interop import zuko as peer

    all_cases = peer.cases
    monkeypatch.setattr(compare, "VALUE_TOL", 0.0)
    monkeypatch.setattr(peer, "cases", lambda seed=0: all_cases(seed)[:2])
    assert compare.run_verify_cli(["--peer", "zuko"]) == 1


def test_verify_cli_reports_a_missing_peer(monkeypatch, capsys):
    import importlib

    real = importlib.import_module

    def fake(name, *args):
        if name == "rawflow.interop.freia":
            raise ImportError("No module named 'FrEIA'")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake)
    assert compare.run_verify_cli(["--peer", "freia"]) == 2
    assert "not available: freia" in capsys.readouterr().out
