"""Conditional runs end to end at tiny sizes: ``train --ycond`` (digits' labels, a .npz's 'y'),
``--context`` (a .npz's 'c'), ``sample --class`` and the per-class grid, ``translate``, ``eval``'s
class-conditional figures, resuming, and every bad argument a one-line error."""

import json
import math

import numpy as np
import pytest

from rawflow.app.cli import main
from rawflow.app.runs import load_params
from rawflow.training.checkpoint import load_checkpoint

from test_cli import assert_png

# float64 (images default to float32): the checks below are to float64 round-off
TINY_GLOW = ["--model", "glow", "--data", "digits", "--ycond", "--K", "1", "--L", "2", "--width", "4",
             "--batch-size", "32", "--dtype", "float64", "--quiet"]


@pytest.fixture(scope="module")
def ycond_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ycond") / "run"
    assert main(["train", *TINY_GLOW, "--steps", "12", "--eval-every", "6", "--out", str(run)]) == 0
    return run


def test_train_ycond_records_the_classes_and_reports_class_conditional_figures(ycond_run, capsys):
    cfg = json.loads((ycond_run / "config.json").read_text())
    assert cfg["ycond"] is True and cfg["n_classes"] == 10 and cfg["weight_y"] == 0.01
    metrics = json.loads((ycond_run / "metrics.json").read_text())
    for key in ("test_bits_per_dim", "test_marginal_bits_per_dim", "test_bayes_accuracy", "test_classifier_accuracy"):
        assert math.isfinite(metrics[key]), key
    # with the labels unknown the density is an average over classes: never more than log2(10)/64 bits/dim
    # below the density given the right label, and never above the best label's
    gap = metrics["test_marginal_bits_per_dim"] - metrics["test_bits_per_dim"]
    assert -math.log2(10) / 64 - 1e-12 <= gap
    params, model, _, _ = load_params(str(ycond_run))
    assert set(params) == {"flow", "prior", "classifier"} and model.classes == 10
    capsys.readouterr()
    assert main(["eval", "--run", str(ycond_run)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bayes_accuracy"] == metrics["test_bayes_accuracy"] and report["classes"] == 10
    assert main(["eval", "--run", str(ycond_run), "--data", "digits"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 1797 and 0 <= report["classifier_accuracy"] <= 1


def test_sample_one_class_and_one_row_per_class(ycond_run, tmp_path):
    assert main(["sample", "--run", str(ycond_run), "--class", "3", "--n", "5", "--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz", allow_pickle=False) as f:
        assert f["samples"].shape == (5, 1, 8, 8) and list(f["labels"]) == [3] * 5
    assert main(["sample", "--run", str(ycond_run), "--n", "25", "--out", str(tmp_path / "g.npz")]) == 0
    with np.load(tmp_path / "g.npz", allow_pickle=False) as f:  # 3 per class: ceil(25 / 10)
        assert list(f["labels"]) == list(np.repeat(np.arange(10), 3)) and int(f["n_requested"]) == 30
    assert main(["sample", "--run", str(ycond_run), "--n", "20", "--out", str(tmp_path / "g.png")]) == 0
    assert_png(tmp_path / "g.png")


def test_translate_moves_held_out_images_from_one_class_towards_another(ycond_run, tmp_path):
    out = tmp_path / "t.npz"
    assert main(["translate", "--run", str(ycond_run), "--from", "3", "--to", "8", "--n", "2", "--steps", "4",
                 "--out", str(out)]) == 0
    with np.load(out, allow_pickle=False) as f:
        frames, index, pixels = f["frames"], f["test_index"], f["pixels"]
        direction = f["direction"]
    assert frames.shape == (4, 2, 1, 8, 8) and pixels.shape == frames.shape and len(index) == 2
    from rawflow.app.runs import eval_inputs, load_run_data, read_config

    cfg = read_config(str(ycond_run))
    data = load_run_data(cfg)
    assert list(data.test_y[index]) == [3, 3]
    x = eval_inputs(cfg, data, "test")[index]
    assert np.max(np.abs(frames[0] - x)) <= 1e-12  # t = 0: the images themselves, to round-off
    assert np.linalg.norm(direction) > 0 and not np.allclose(frames[-1], frames[0])
    assert main(["translate", "--run", str(ycond_run), "--from", "1", "--to", "7", "--n", "2", "--steps", "3"]) == 0
    assert_png(ycond_run / "translation_1_to_7.png")


def test_resuming_a_ycond_run_continues_bit_for_bit(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(["train", *TINY_GLOW, "--steps", "8", "--eval-every", "4", "--out", str(whole)]) == 0
    assert main(["train", *TINY_GLOW, "--steps", "4", "--eval-every", "4", "--out", str(split)]) == 0
    assert main(["train", "--resume", "--steps", "8", "--out", str(split), "--quiet"]) == 0
    a, b = load_checkpoint(whole / "checkpoint.safetensors"), load_checkpoint(split / "checkpoint.safetensors")
    assert np.array_equal(a["history"]["loss"], b["history"]["loss"])
    for (path, x), (_, y) in zip(sorted(_leaves(a["params"])), sorted(_leaves(b["params"]))):
        assert np.array_equal(x, y), path


def _leaves(t, prefix=""):
    for k, v in t.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}/")
        else:
            yield f"{prefix}{k}", v


def labelled_images(tmp_path, n=90, bad=None):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    x = np.clip(rng.integers(0, 3, size=(n, 4, 4)) + 2 * y[:, None, None], 0, 7).astype(np.uint8)
    arrays = {"x": x, "y": y}
    if bad:
        arrays.update(bad)
    path = tmp_path / "labelled.npz"
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_ycond_from_a_users_npz(tmp_path, capsys):
    path = labelled_images(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "--model", "glow", "--data", str(path), "--ycond", "--K", "1", "--L", "1", "--width", "4",
                 "--steps", "6", "--batch-size", "16", "--out", str(run), "--quiet", "--weight-y", "0.1"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["n_classes"] == 3 and cfg["weight_y"] == 0.1 and cfg["event_shape"] == [1, 4, 4]
    assert "given the labels" in capsys.readouterr().out


@pytest.mark.parametrize("bad, message", [
    ({"y": None}, "has no array 'y'"),
    ({"y": np.zeros(89, dtype=int)}, "89 labels for 90 examples"),
    ({"y": np.zeros(90)}, "labels 'y' must be a 1-D integer array"),
    ({"y": np.full(90, -1)}, "labels must be non-negative class indices"),
    ({"y": np.zeros(90, dtype=int)}, "--ycond needs at least 2 classes"),
])
def test_bad_labels_in_a_npz_are_one_line_errors(tmp_path, capsys, bad, message):
    path = labelled_images(tmp_path, bad=bad)
    assert main(["train", "--model", "glow", "--data", str(path), "--ycond", "--batch-size", "16",
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_vector_runs_conditioned_on_labels_and_on_a_context(tmp_path, capsys):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    x = rng.normal(scale=0.3, size=(400, 2)) + np.stack([4.0 * y - 2, np.zeros(400)], axis=1)
    np.savez(tmp_path / "v.npz", x=x, y=y, c=np.stack([y - 0.5, rng.normal(size=400)], axis=1))
    common = ["--model", "realnvp", "--data", str(tmp_path / "v.npz"), "--couplings", "2", "--hidden", "8",
              "--steps", "20", "--batch-size", "32", "--quiet"]
    assert main(["train", *common, "--ycond", "--out", str(tmp_path / "ry")]) == 0
    metrics = json.loads((tmp_path / "ry" / "metrics.json").read_text())
    assert "test_bayes_accuracy" in metrics and "test_classifier_accuracy" not in metrics
    assert main(["train", *common, "--context", "--out", str(tmp_path / "rc")]) == 0
    cfg = json.loads((tmp_path / "rc" / "config.json").read_text())
    assert cfg["context"] is True and cfg["context_features"] == 2
    assert main(["sample", "--run", str(tmp_path / "rc"), "--n", "6", "--out", str(tmp_path / "c.npz")]) == 0
    with np.load(tmp_path / "c.npz", allow_pickle=False) as f:
        assert f["samples"].shape == (6, 2) and f["context"].shape == (6, 2)
    capsys.readouterr()
    assert main(["train", *common, "--ycond", "--weight-y", "0.1", "--out", str(tmp_path / "bad")]) == 2
    assert "--weight-y weighs the classifier head of a class-conditional Glow" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "--model", "glow", "--data", "digits", "--ycond", "--context"], "exclude each other"),
    (["train", "--model", "glow", "--data", "digits", "--ycond-splits"], "--ycond-splits conditions the split priors"),
    (["train", "--model", "realnvp", "--data", "two_moons", "--ycond"], "--ycond needs labels with the data"),
    (["train", "--model", "realnvp", "--data", "digits", "--ycond"], "use --model glow, not realnvp"),
    (["train", "--model", "glow", "--data", "digits", "--context"], "--context needs context with the data: a .npz holding 'c'"),
    (["train", "--model", "glow", "--data", "digits", "--ycond", "--variant", "openai"],
     "--variant openai with --ycond: the class-conditional Glow is built from rawflow's layers"),
])
def test_bad_conditional_training_options(tmp_path, capsys, argv, message):
    assert main([*argv, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_glow_on_vectors_refuses_labels_and_context(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "v.npz", x=rng.normal(size=(400, 2)), y=np.arange(400) % 2, c=rng.normal(size=(400, 3)))
    for flag in ("--ycond", "--context"):
        assert main(["train", "--model", "glow", "--data", str(tmp_path / "v.npz"), flag,
                     "--out", str(tmp_path / flag[2:])]) == 2
        err = capsys.readouterr().err
        assert f"{flag} on vectors conditions the couplings of realnvp or nice" in err and err.count("\n") == 1
        assert not (tmp_path / flag[2:]).exists()


def test_bad_sample_and_translate_arguments(ycond_run, tmp_path, capsys):
    plain = tmp_path / "plain"
    assert main(["train", "--model", "realnvp", "--data", "two_moons", "--n-samples", "300", "--couplings", "1",
                 "--hidden", "4", "--steps", "2", "--batch-size", "16", "--quiet", "--out", str(plain)]) == 0
    cases = [
        (["sample", "--run", str(plain), "--class", "1"], "--class needs a class-conditional run"),
        (["sample", "--run", str(ycond_run), "--class", "10"], "--class 10: the run has classes 0…9"),
        (["translate", "--run", str(plain), "--from", "0", "--to", "1"], "is not a class-conditional image run"),
        (["translate", "--run", str(ycond_run), "--from", "2", "--to", "2"], "--from and --to are both 2"),
        (["translate", "--run", str(ycond_run), "--from", "11", "--to", "2"], "--from 11: the run has classes 0…9"),
        (["translate", "--run", str(ycond_run), "--from", "1", "--to", "2", "--steps", "1"], "--steps must be at least 2"),
        (["translate", "--run", str(ycond_run), "--from", "1", "--to", "2", "--out", "x.txt"], "--out must end in .png or .npz"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    capsys.readouterr()  # translate takes --params like sample/interpolate/eval; this run keeps no average
    assert main(["translate", "--run", str(ycond_run), "--from", "1", "--to", "2", "--params", "ema"]) == 2
    err = capsys.readouterr().err
    assert "keeps no moving average" in err and err.count("\n") == 1, err
    existing = tmp_path / "exists.png"
    existing.write_bytes(b"x")
    assert main(["translate", "--run", str(ycond_run), "--from", "1", "--to", "2", "--out", str(existing)]) == 2
    assert existing.read_bytes() == b"x"


def test_interpolate_works_on_class_conditional_runs(ycond_run, tmp_path):
    assert main(["interpolate", "--run", str(ycond_run), "--steps", "3", "--pairs", "2",
                 "--out", str(tmp_path / "i.npz")]) == 0
    with np.load(tmp_path / "i.npz", allow_pickle=False) as f:
        assert f["frames"].shape == (3, 2, 1, 8, 8)


def test_ycond_splits_runs_pass_the_labels_wherever_the_flow_needs_them(tmp_path):
    run = tmp_path / "split"
    assert main(["train", *TINY_GLOW, "--ycond-splits", "--steps", "4", "--eval-every", "4", "--out", str(run)]) == 0
    params, model, cfg, _ = load_params(str(run))
    assert model.bijector.context_shape == (10,) and cfg["arch"]["split_prior"] is True
    for argv in (["interpolate", "--steps", "3", "--pairs", "1", "--out", str(tmp_path / "i.npz")],
                 ["translate", "--from", "0", "--to", "1", "--n", "1", "--steps", "3", "--out", str(tmp_path / "t.npz")],
                 ["sample", "--n", "10", "--out", str(tmp_path / "s.npz")], ["eval"]):
        assert main([argv[0], "--run", str(run), *argv[1:]]) == 0, argv
