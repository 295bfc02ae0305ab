"""Faults a user meets on the command line (issue 13, items 15–18): divergence of an LU layer,
degenerate data, broken configs, changed or bad evaluation data, strict JSON, non-finite samples,
absurd sizes, finished runs, and options that do nothing. Each ends in a clear message, never a
traceback."""

import json
import math

import numpy as np
import pytest

from rawflow.app import sizes
from rawflow.app.cli import main

from test_cli import run_cli
from test_cli_train import TINY_2D, images_file


@pytest.fixture(scope="module")
def run2d(tmp_path_factory):
    run = tmp_path_factory.mktemp("r2d") / "run"
    assert main(["train", *TINY_2D, "--steps", "4", "--eval-every", "2", "--out", str(run)]) == 0
    return run


def vectors_file(path, x):
    np.save(path, x)
    return str(path)


def strict_json(text):
    def refuse(token):
        raise AssertionError(f"non-strict JSON token {token}")

    return json.loads(text, parse_constant=refuse)


# -------------------------------------------------------------------------------- item 15
def test_glow_whose_lu_layer_goes_singular_stops_cleanly(tmp_path):
    data = images_file(tmp_path)
    proc = run_cli("train", "--model", "glow", "--data", str(data), "--K", "1", "--L", "1", "--width", "4",
                   "--lr", "1e6", "--steps", "20", "--batch-size", "16", "--checkpoint-every", "1",
                   "--eval-every", "1", "--out", "r", "--quiet", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "diverged at step" in proc.stderr and "unusable" in proc.stderr and "last good checkpoint" in proc.stderr


@pytest.mark.parametrize("kind", ["collinear", "constant"])
def test_degenerate_vector_data_reports_a_singular_covariance_and_still_writes(tmp_path, capsys, kind):
    """Seen: a LinAlgError traceback after training, and no metrics.json or loss.png."""
    rng = np.random.default_rng(0)
    u = rng.normal(size=(400, 1))
    x = np.hstack([u, 2 * u + 1]) if kind == "collinear" else np.hstack([u, np.full((400, 1), 3.0)])
    data = vectors_file(tmp_path / "v.npy", x)
    run = tmp_path / "r"
    code = main(["train", "--model", "nice", "--data", data, "--couplings", "2", "--hidden", "4", "--steps", "3",
                 "--batch-size", "50", "--out", str(run), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    metrics = strict_json((run / "metrics.json").read_text())
    assert metrics["test_gaussian_nll"] is None and "singular covariance (rank 1 of 2)" in metrics["test_gaussian_note"]
    assert (run / "loss.png").exists() and "singular covariance" in out


def edit_config(run, tmp_path, edit):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    cfg = json.loads((copy / "config.json").read_text())
    edit(cfg)
    (copy / "config.json").write_text(json.dumps(cfg))
    return copy


BROKEN_CONFIGS = {
    "missing steps": (lambda c: c.pop("steps"), "missing key(s) steps"),
    "missing arch and seed": (lambda c: (c.pop("arch"), c.pop("seed")), "missing key(s) arch, seed"),
    "lr a string": (lambda c: c.update(lr="abc"), "'lr' is 'abc', expected a finite number"),
    "steps a float": (lambda c: c.update(steps=4.5), "'steps' is 4.5, expected an integer"),
    "seed negative": (lambda c: c.update(seed=-1), "'seed' is -1"),
    "split sizes null": (lambda c: c.update(split_sizes=None), "'split_sizes' is None"),
    "hidden a string": (lambda c: c["arch"].update(hidden="8"), "'arch.hidden' is '8'"),
    "unknown arch key": (lambda c: c["arch"].update(bogus=1), "'arch.bogus'"),
    "batch size bool": (lambda c: c.update(batch_size=True), "'batch_size' is True"),
    "optimizer unknown": (lambda c: c.update(optimizer="lbfgs"), "'optimizer' is 'lbfgs'"),
}


@pytest.mark.parametrize("name", list(BROKEN_CONFIGS))
def test_a_broken_config_is_a_clear_error_everywhere(run2d, tmp_path, capsys, name):
    edit, message = BROKEN_CONFIGS[name]
    run = edit_config(run2d, tmp_path, edit)
    for argv in (["train", "--resume", "--out", str(run), "--quiet"], ["sample", "--run", str(run)],
                 ["eval", "--run", str(run)], ["interpolate", "--run", str(run)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "config.json" in err and err.count("\n") == 1, err


# -------------------------------------------------------------------------------- item 16
def test_eval_checks_the_data_digest_like_resume(tmp_path, capsys):
    """Seen: NaN and exit 0 after the .npy changed."""
    x = np.random.default_rng(0).normal(size=(300, 2))
    data = vectors_file(tmp_path / "v.npy", x)
    run = tmp_path / "r"
    assert main(["train", "--model", "nice", "--data", data, "--couplings", "2", "--hidden", "4", "--steps", "2",
                 "--batch-size", "50", "--out", str(run), "--quiet"]) == 0
    np.save(tmp_path / "v.npy", x + 1)
    for argv in (["eval", "--run", str(run)], ["interpolate", "--run", str(run)], ["train", "--resume",
                                                                                    "--out", str(run)]):
        assert main(argv) == 2
        assert "SHA-256 differs" in capsys.readouterr().err


def test_eval_data_with_nan_or_inf_or_no_rows_is_a_clear_error(run2d, tmp_path, capsys):
    bad = np.random.default_rng(0).normal(size=(50, 2))
    bad[[3, 7], 1] = [np.nan, np.inf]
    for array, message in ((bad, "2 of 50 rows hold NaN or Inf (first at row 3)"),
                           (np.zeros((0, 2)), "holds no examples"),
                           (np.array([["a", "b"]]), "need real numbers")):
        path = tmp_path / "e.npy"
        np.save(path, array)
        assert main(["eval", "--run", str(run2d), "--data", str(path)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_eval_output_is_strict_json_even_when_a_value_is_infinite(run2d, tmp_path, capsys):
    far = np.full((20, 2), 1e200)
    np.save(tmp_path / "far.npy", far)
    assert main(["eval", "--run", str(run2d), "--data", str(tmp_path / "far.npy")]) == 0
    report = strict_json(capsys.readouterr().out)  # before: "nll": Infinity
    assert report["nll"] is None and report["n"] == 20


# -------------------------------------------------------------------------------- item 17
def test_non_finite_samples_are_left_out_and_counted(run2d, tmp_path, capsys, monkeypatch):
    """Seen: ``--n 20000`` wrote nothing because 16 samples were non-finite."""
    from rawflow.models.model import FlowModel

    real = FlowModel.sample

    def some_overflow(self, params, rng, n, temperature=1.0):
        x = np.array(real(self, params, rng, n, temperature=temperature))
        x[[2, 5]] = [np.inf, np.nan]
        return x

    monkeypatch.setattr(FlowModel, "sample", some_overflow)
    out = tmp_path / "s.npz"
    assert main(["sample", "--run", str(run2d), "--n", "10", "--out", str(out)]) == 0
    assert "2 of 10 samples are non-finite" in capsys.readouterr().err
    with np.load(out, allow_pickle=False) as f:
        assert f["samples"].shape == (8, 2) and np.isfinite(f["samples"]).all()
        assert int(f["n_requested"]) == 10 and list(f["nonfinite_index"]) == [2, 5]
    monkeypatch.setattr(FlowModel, "sample", lambda self, p, rng, n, temperature=1.0: np.full((n, 2), np.nan))
    assert main(["sample", "--run", str(run2d), "--n", "3", "--out", str(tmp_path / "t.npz")]) == 1
    assert "all 3 samples are non-finite" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["train", *TINY_2D, "--steps", str(10**12)], "at most 1e+08"),
    (["train", *TINY_2D, "--n-samples", str(10**12)], "--n-samples 1000000000000 needs about"),
    (["train", *TINY_2D, "--hidden", str(10**8)], "the model (about"),
])
def test_absurd_training_sizes_are_refused_up_front(tmp_path, capsys, argv, message):
    assert main([*argv, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()


def test_absurd_output_sizes_are_refused_up_front(run2d, tmp_path, capsys, monkeypatch):
    """Seen: ``interpolate --steps 10000`` drew a 550,040-pixel-wide PNG."""
    assert main(["interpolate", "--run", str(run2d), "--steps", "10000", "--out", str(tmp_path / "i.png")]) == 2
    assert "at most 64" in capsys.readouterr().err
    assert main(["sample", "--run", str(run2d), "--n", "100000", "--out", str(tmp_path / "s.png")]) == 2
    assert "at most 4096 samples in one PNG" in capsys.readouterr().err
    monkeypatch.setattr(sizes, "physical_memory", lambda: 2**20)
    assert main(["sample", "--run", str(run2d), "--n", "100000", "--out", str(tmp_path / "s.npz")]) == 2
    assert "--n 100000 samples needs about" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_parameter_count_estimate_is_close(tmp_path):
    from rawflow import tree
    from rawflow.app.runs import build_model, make_config, reference_params

    for options in ({"model": "realnvp", "data": "two_moons", "n_samples": 600, "arch": {"hidden": [16, 16]}},
                    {"model": "glow", "data": str(images_file(tmp_path)), "batch_size": 16,
                     "arch": {"K": 2, "L": 2, "width": 8}}):
        cfg = make_config(options)
        actual = sum(a.size for _, a in tree.leaves(reference_params(cfg, build_model(cfg))))
        assert 0.5 < sizes.parameter_count(cfg) / actual < 2, (sizes.parameter_count(cfg), actual)


# -------------------------------------------------------------------------------- item 18
def test_resuming_a_finished_run_says_so_and_keeps_its_metrics(run2d, capsys):
    before = (run2d / "metrics.json").read_text()
    assert main(["train", "--resume", "--out", str(run2d)]) == 0
    out = capsys.readouterr().out
    assert "already finished at step 4" in out and "nothing to do" in out
    assert (run2d / "metrics.json").read_text() == before  # train_time_s not rewritten


def test_options_that_do_nothing_warn(tmp_path, capsys, run2d):
    assert main(["train", *TINY_2D, "--steps", "3", "--momentum", "0.5", "--warmup", "10",
                 "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "warning: --momentum applies to --optimizer sgd only" in err
    assert "warning: --warmup 10 is longer than the run's 3 steps" in err
    assert main(["eval", "--run", str(run2d), "--n", "100"]) == 0
    assert "warning: --n sets the points drawn for --data NAME" in capsys.readouterr().err
    assert main(["eval", "--run", str(run2d), "--data", "two_moons", "--n", "100"]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err and strict_json(captured.out)["n"] == 100


def test_the_image_loss_plot_is_in_bits_per_dim(tmp_path, monkeypatch):
    from rawflow.app import plots
    from rawflow.data.images import bits_per_dim

    seen = {}

    def capture(path, losses, val_steps=(), val_nll=(), ylabel="NLL (nats)", title=None):
        seen.update(losses=np.asarray(losses), val=np.asarray(val_nll), ylabel=ylabel, title=title)
        return path

    monkeypatch.setattr(plots, "loss_curve", capture)
    data = images_file(tmp_path)
    run = tmp_path / "g"
    assert main(["train", "--model", "glow", "--data", str(data), "--K", "1", "--L", "1", "--width", "4",
                 "--steps", "4", "--eval-every", "2", "--batch-size", "16", "--out", str(run), "--quiet"]) == 0
    from rawflow.training.checkpoint import load_checkpoint

    nats = load_checkpoint(run / "checkpoint.safetensors")["history"]["loss"]
    assert seen["ylabel"] == "bits/dim" and seen["title"] == "Glow on imgs.npz"  # the plot names its system
    assert np.allclose(seen["losses"], [bits_per_dim(v, 16, 4) for v in nats], rtol=1e-12)
    assert math.isfinite(seen["val"][-1]) and 0 < seen["val"][-1] < 10
