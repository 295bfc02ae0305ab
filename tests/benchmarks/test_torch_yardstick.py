"""The PyTorch yardstick (``benchmarks/torch_train.py``), fast version: tiny NICE, RealNVP and Glow on
the digits and a 2-D density, trained in float64 by rawflow's hand-written loop and by torch autograd
with ``torch.optim.Adam`` from the same start on the same batches. The losses agree to 1e-9 relative
at every one of 50 steps, and every parameter after them (measured: ~1e-14; the bar leaves room for
another BLAS's summation order, not for a defect: an optimiser or gradient that is off by 1e-6 fails).
The full-size check is ``python -m benchmarks quality``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]
if importlib.util.find_spec("rawflow.benchmarks") is not None:
    from rawflow.benchmarks import suite_quality, torch_train
else:
    sys.path.insert(0, str(REPO))
    from benchmarks import suite_quality, torch_train

from rawflow.app import runs

TOL = 1e-9
STEPS = 50


@pytest.fixture(autouse=True)
def _one_thread():
    """One BLAS and one torch thread, as the CLI and the quality suite run: these GEMMs are tiny, and
    threads spinning against the rest of the suite cost more than they give."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(threads)


def tiny(system: str, data: str, **extra) -> dict:
    """A tiny run of ``system`` on ``data`` (the quality suite's quick sizes), float64."""
    opts = suite_quality.options(system, data, 0, quick=True, dtype="float64", **extra)
    return runs.make_config(opts)


@pytest.mark.parametrize("data", ["digits", "eight_gaussians"])
@pytest.mark.parametrize("system", ["nice", "realnvp", "glow"])
def test_float64_training_trajectories_agree_with_torch_autograd(system, data):
    r = torch_train.trajectories(tiny(system, data), STEPS)
    assert len(r["loss_rawflow"]) == STEPS and np.all(np.isfinite(r["loss_rawflow"]))
    # the run moved: a trajectory that stands still would agree trivially
    assert abs(r["loss_rawflow"][-1] - r["loss_rawflow"][0]) > 1e-3 * abs(r["loss_rawflow"][0])
    assert r["loss_rel"].max() <= TOL, (int(r["loss_rel"].argmax()), r["loss_rel"].max())
    assert r["param_rel"] <= TOL, (r["param_leaf"], r["param_rel"])


def test_a_defect_in_the_optimiser_is_caught(monkeypatch):
    """Adam's second-moment decay 0.99 instead of 0.999 on rawflow's side only: the check fails."""
    from rawflow.training.optim import Adam

    original = runs.make_optimizer

    def off(cfg):
        return Adam(original(cfg).lr, betas=(0.9, 0.99))

    monkeypatch.setattr(runs, "make_optimizer", off)
    r = torch_train.trajectories(tiny("realnvp", "eight_gaussians"), STEPS)
    assert r["param_rel"] > 1e-4


def test_a_gradient_off_by_one_part_in_a_million_is_caught(monkeypatch):
    """NICE's diagonal-scaling gradient shifted by 1e-6 of its size on rawflow's side: the parameters
    part. (A shift, not a factor: Adam's step m/√v does not see a constant factor on a gradient.)"""
    from rawflow.bijectors.scaling import DiagonalScaling

    backward = DiagonalScaling._backward

    def off(self, params, cache, gz, glogdet):
        gx, g = backward(self, params, cache, gz, glogdet)
        return gx, {"log_scale": g["log_scale"] + 1e-6 * np.abs(g["log_scale"]).max()}

    monkeypatch.setattr(DiagonalScaling, "_backward", off)
    r = torch_train.trajectories(tiny("nice", "eight_gaussians"), STEPS)
    assert r["param_rel"] > TOL


def test_the_torch_run_mirrors_run_training(tmp_path):
    """Validation, best parameters and early stopping as ``run_training`` does them: same steps, same
    best step, the same held-out NLL (float64)."""
    cfg = tiny("realnvp", "eight_gaussians", steps=40, eval_every=4, patience=2, lr=0.05)
    ours = runs.run_training(cfg, str(tmp_path / "run"), quiet=True)
    theirs = torch_train.train_torch(cfg)
    assert (theirs["steps"], theirs["best_step"]) == (ours["steps"], ours["best_step"])
    assert abs(theirs["test_nll"] - ours["test_nll"]) <= TOL * abs(ours["test_nll"])


@pytest.mark.parametrize("system,data,extra", [
    ("nice", "digits", {}), ("nice", "digits", {"preprocess": "center"}), ("realnvp", "digits", {}),
    ("glow", "digits", {}), ("nice", "checkerboard", {}), ("realnvp", "checkerboard", {}),
    ("glow", "checkerboard", {})])
def test_the_torch_model_is_the_same_function_away_from_the_identity(system, data, extra):
    """Every layer the three systems use (Logit, DiagonalScaling, CheckerboardCoupling with a ResNet,
    vector ActNorm and LU, ...) at random parameters: loss, every gradient and the inverse."""
    import torch

    from rawflow import tree

    tf = torch_train.torch_flows
    cfg = tiny(system, data, **extra)
    model, data_, state, *_ = torch_train.setup(cfg)
    rng = np.random.default_rng(1)
    params = tree.map(lambda a: a + 0.05 * rng.standard_normal(a.shape), state.params)
    x = np.asarray(runs.eval_inputs(cfg, data_, "val"))[:16]
    same = tf.check_same(model, params, x)
    assert same["loss_rel"] < 1e-12 and same["grad_rel"] < 1e-12, same
    z = model.encode(params, x)
    back = tf.inverse(model.bijector, tf.to_torch(params["flow"]), torch.from_numpy(z)).numpy()
    assert np.max(np.abs(back - x)) < 1e-9 * max(1.0, float(np.max(np.abs(x))))


@pytest.fixture(scope="module")
def quality_quick(tmp_path_factory):
    package = sys.modules[suite_quality.__name__.rsplit(".", 1)[0]]
    tmp = tmp_path_factory.mktemp("quality")
    js, md = tmp / "q.json", tmp / "q.md"
    rc = package.main(["quality", "--quick", "--quiet", "--json", str(js), "--markdown", str(md)])
    return package, rc, js, md


def test_quality_suite_quick_rows_and_tables(quality_quick, capsys):
    import json

    package, rc, js, md = quality_quick
    assert rc == 0
    results = json.loads(js.read_text())
    assert {"date", "cpu", "versions", "git_commit", "runtime"} <= set(results["meta"])
    rows = results["suites"]["quality"]["rows"]
    assert all(r["status"] == "ok" and r["repeats"] >= 1 and 0 < r["min_s"] <= r["median_s"] <= r["max_s"]
               for r in rows)
    # the rawflow rows are the time baseline of their (data, system); the yardstick's ratio is against them
    assert all(r["ratio"] == 1.0 for r in rows if r["impl"] == "rawflow")
    have = {(r["case"], r["op"], r["impl"].split(",")[0]) for r in rows}
    for data in suite_quality.DATASETS:
        for system in suite_quality.SYSTEMS:
            assert {(data, system, "rawflow"), (data, system, "torch yardstick"),
                    (data, system, "float64 trajectory")} <= have
    for r in rows:
        if r["impl"].startswith("float64 trajectory"):
            assert r["ok"] is True and r["err"] <= TOL
        else:
            e = r["extra"]
            assert np.isfinite(e["mean"]) and e["unit"] == ("bits/dim" if r["case"] == "digits" else "nats")
            assert e["baseline"] is not None and (e["true"] is None) == (r["case"] == "digits")
    text = md.read_text()
    assert "### quality" in text and "| data | system | impl |" in text and "torch yardstick (float32)" in text
    again = md.with_name("again.md")
    assert package.main(["--render", str(js), "--markdown", str(again)]) == 0
    assert again.read_text() == text


def test_a_failing_run_is_a_row_and_the_others_still_run(quality_quick, monkeypatch, tmp_path):
    import json

    package = quality_quick[0]
    real = suite_quality._rawflow_run

    def flaky(opts):
        if opts["model"] == "nice":
            raise FloatingPointError("diverged on purpose")
        return real(opts)

    monkeypatch.setattr(suite_quality, "DATASETS", ("eight_gaussians",))
    monkeypatch.setattr(suite_quality, "SYSTEMS", ("nice", "glow"))
    monkeypatch.setattr(suite_quality, "_rawflow_run", flaky)
    js = tmp_path / "q.json"
    assert package.main(["quality", "--quick", "--quiet", "--json", str(js)]) == 1  # a failure is a failure
    rows = json.loads(js.read_text())["suites"]["quality"]["rows"]
    bad = [r for r in rows if r["status"] == "error"]
    assert [(r["op"], r["note"]) for r in bad] == [("nice", "FloatingPointError: diverged on purpose")]
    assert {r["impl"].split(",")[0] for r in rows if r["op"] == "glow"} == {"rawflow", "torch yardstick",
                                                                            "float64 trajectory"}
