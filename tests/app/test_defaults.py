"""``rawflow train``'s defaults: which ones a run gets for images and vectors, how the user overrides
them, that they are written into ``config.json`` (so a run keeps them when resumed), and that a run
written before they changed (null preprocess, no early stopping, float64) still resumes bit for bit
and keeps its centring."""

import json
import math

import pytest

from rawflow.app.cli import main
from rawflow.app.runs import build_model, make_config, preprocess, run_training

from test_cli_train import images_file
from test_resume import assert_same_run


def test_image_defaults_logit_float32_and_early_stopping(tmp_path):
    data = str(images_file(tmp_path))
    for model in ("nice", "realnvp", "glow"):
        cfg = make_config({"model": model, "data": data, "batch_size": 16})
        assert (cfg["preprocess"], cfg["dtype"], cfg["patience"], cfg["steps"]) == ("logit", "float32", 5, 2000)
        assert type(build_model(cfg).bijector.layers[0]).__name__ == "Logit"


def test_vector_defaults_float64_and_more_steps():
    cfg = make_config({"model": "glow", "data": "two_moons", "n_samples": 600})
    assert (cfg["preprocess"], cfg["dtype"], cfg["patience"], cfg["steps"]) == (None, "float64", 5, 6000)
    assert cfg["arch"] == {"K": 8, "hidden": [64, 64], "scale": "sigmoid", "activation": "relu"}
    assert cfg["eval_every"] == 300 and cfg["checkpoint_every"] == 300  # steps // 20


def test_the_user_overrides_every_default(tmp_path):
    data = str(images_file(tmp_path))
    cfg = make_config({"model": "nice", "data": data, "preprocess": "center", "dtype": "float64", "patience": 0,
                       "steps": 30, "batch_size": 16})
    assert (cfg["preprocess"], cfg["dtype"], cfg["patience"], cfg["steps"], cfg["eval_every"]) == \
        ("center", "float64", None, 30, 1)
    # without a validation split there is nothing to stop on: the default patience lapses quietly ...
    assert make_config({"model": "realnvp", "data": "two_moons", "n_samples": 600,
                        "val_fraction": 0})["patience"] is None
    # ... while an explicit one is an error
    with pytest.raises(ValueError, match="validation split"):
        make_config({"model": "realnvp", "data": "two_moons", "n_samples": 600, "val_fraction": 0, "patience": 3})


def test_patience_0_on_the_command_line_means_never(tmp_path, capsys):
    run = tmp_path / "r"
    args = ["--model", "realnvp", "--data", "two_moons", "--n-samples", "600", "--couplings", "2", "--hidden", "8",
            "--batch-size", "32", "--quiet", "--patience", "0", "--optimizer", "sgd", "--momentum", "0",
            "--lr", "1e-300", "--steps", "12", "--eval-every", "2"]
    assert main(["train", *args, "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["patience"] is None
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 12 and metrics["stopped"] is None and metrics["best_step"] == 2
    out = capsys.readouterr().out
    assert "best validation NLL at step 2 of 12; its parameters are restored" in out
    # --patience 0 agrees with the run's null on --resume
    assert main(["train", "--resume", "--patience", "0", "--steps", "14", "--out", str(run)]) == 0


def test_a_run_from_before_these_defaults_resumes_bit_for_bit_with_its_centring(tmp_path):
    """Its config has ``preprocess: null`` (centring for nice), ``patience: null`` and float64."""
    data = str(images_file(tmp_path))
    options = {"model": "nice", "data": data, "arch": {"n_couplings": 2, "hidden": [8]}, "batch_size": 16,
               "steps": 8, "eval_every": 2, "dtype": "float64"}
    once, twice = tmp_path / "once", tmp_path / "twice"
    for out, steps in ((once, 8), (twice, 4)):
        cfg = make_config({**options, "steps": steps})
        cfg.update(preprocess=None, patience=None)  # what make_config wrote before these defaults
        run_training(cfg, str(out), quiet=True)
    old = json.loads((twice / "config.json").read_text())
    assert old["preprocess"] is None and old["patience"] is None and preprocess(old) == "center"
    assert "Logit" not in [type(layer).__name__ for layer in build_model(old).bijector.layers]
    assert main(["train", "--resume", "--steps", "8", "--out", str(twice), "--quiet"]) == 0
    assert_same_run(once, twice)


def test_glow_trains_on_vectors_and_reports_the_true_density(tmp_path):
    run = tmp_path / "g"
    assert main(["train", "--model", "glow", "--data", "checkerboard", "--n-samples", "600", "--K", "2",
                 "--hidden", "8", "--batch-size", "32", "--steps", "6", "--out", str(run), "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_true_nll"] == pytest.approx(math.log(32), rel=1e-15)
    assert metrics["test_nll"] > metrics["test_true_nll"]  # six steps from the start: far from the truth
    assert main(["sample", "--run", str(run), "--n", "5", "--out", str(tmp_path / "s.npz")]) == 0
