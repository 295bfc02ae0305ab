"""Glow as its authors ran it, through ``rawflow train``: ``--variant openai``, ``--n-bits`` and
``--ema``. Runs resume bit for bit (the moving average included), runs from before these options
still resume, every bits/dim report of n-bit data says it is not comparable, ``--params`` chooses
the averaged or the raw parameters, and bad values are one-line errors."""

import json

import numpy as np
import pytest

from rawflow import tree
from rawflow.app.cli import main
from rawflow.app.runs import load_params
from rawflow.training.checkpoint import load_checkpoint, save_checkpoint

from test_cli_train import images_file
from test_resume import assert_same_run

GLOW = ["--model", "glow", "--K", "1", "--L", "2", "--width", "4", "--batch-size", "16", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return str(images_file(tmp_path_factory.mktemp("data"), levels=256, n=80))


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory, data):
    run = tmp_path_factory.mktemp("ema") / "run"
    argv = ["train", *GLOW, "--data", data, "--variant", "openai", "--n-bits", "5", "--ema", "0.9", "--steps", "8",
            "--eval-every", "4", "--out", str(run)]
    assert main(argv) == 0
    return run


def test_an_openai_n_bit_averaged_run_resumes_bit_for_bit(tmp_path, data):
    args = [*GLOW, "--data", data, "--variant", "openai", "--n-bits", "5", "--ema", "0.9", "--eval-every", "4"]
    once, twice = tmp_path / "once", tmp_path / "twice"
    assert main(["train", *args, "--steps", "12", "--out", str(once)]) == 0
    assert main(["train", *args, "--steps", "8", "--out", str(twice)]) == 0
    assert main(["train", "--resume", "--steps", "12", "--out", str(twice), "--quiet"]) == 0
    assert_same_run(once, twice)  # params, optimizer (its "ema" slot too), best, history, generator
    ck = load_checkpoint(once / "checkpoint.safetensors")
    assert set(ck["optimizer"]) == {"m", "v", "step", "ema"}


def test_a_run_from_before_these_options_still_resumes_bit_for_bit(tmp_path, data):
    """A config and checkpoint without the keys ``n_bits``, ``ema`` and ``arch.variant`` (as every
    run written before them): it samples, evaluates and resumes, and equals a run of the full length."""
    args = [*GLOW, "--data", data, "--eval-every", "3"]
    once, old = tmp_path / "once", tmp_path / "old"
    assert main(["train", *args, "--steps", "6", "--out", str(once)]) == 0
    assert main(["train", *args, "--steps", "3", "--out", str(old)]) == 0

    def strip(cfg):
        cfg = {k: v for k, v in cfg.items() if k not in ("n_bits", "ema", "data_n_bins")}
        return {**cfg, "arch": {k: v for k, v in cfg["arch"].items() if k != "variant"}}

    cfg = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps(strip(cfg)))
    ck = load_checkpoint(old / "checkpoint.safetensors")
    step, meta = ck.pop("step"), ck.pop("config")
    save_checkpoint(old / "checkpoint.safetensors", ck, {**meta, "run": strip(meta["run"])}, step)
    assert main(["sample", "--run", str(old), "--n", "4", "--out", str(tmp_path / "s.npz")]) == 0
    assert main(["eval", "--run", str(old)]) == 0
    assert main(["train", "--resume", "--steps", "6", "--out", str(old), "--quiet"]) == 0
    assert_same_run(once, old)


def test_averaged_runs_report_and_select_the_averaged_parameters(ema_run, capsys):
    metrics = json.loads((ema_run / "metrics.json").read_text())
    assert metrics["evaluated"] == "ema" and metrics["ema"] == 0.9
    assert np.isfinite(metrics["raw_test_bits_per_dim"])
    ck = load_checkpoint(ema_run / "checkpoint.safetensors")
    best, _, _, best_step = load_params(str(ema_run))  # the default: what the run selected
    ema, _, _, step = load_params(str(ema_run), which="ema")
    raw, _, _, _ = load_params(str(ema_run), which="raw")
    assert step == ck["step"] == 8 and best_step == metrics["best_step"]
    same = lambda a, b: all(np.array_equal(x, y) for (_, x), (_, y) in zip(tree.leaves(a), tree.leaves(b)))  # noqa: E731
    assert same(ema, ck["optimizer"]["ema"]) and same(raw, ck["params"]) and not same(ema, raw)
    assert best_step == 8 and same(best, ema)  # this run's best is its last average (validated at 4 and 8)
    for which, key in (("best", "test_bits_per_dim"), ("raw", "raw_test_bits_per_dim")):
        assert main(["eval", "--run", str(ema_run), "--params", which]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["params"] == which
        assert report["bits_per_dim"] == pytest.approx(metrics[key], rel=1e-12)


def test_every_report_of_n_bit_bits_per_dim_says_it_is_not_comparable(ema_run, data, tmp_path, capsys):
    note = "5-bit data (n_bins = 2^5 = 32): bits/dim are not comparable with figures for the 8-bit data"
    metrics = json.loads((ema_run / "metrics.json").read_text())
    assert metrics["test_n_bins"] == 32 and metrics["test_n_bits"] == 5 and metrics["test_bits_per_dim_note"] == note
    cfg = json.loads((ema_run / "config.json").read_text())
    assert cfg["n_bits"] == 5 and cfg["n_bins"] == 32 and cfg["data_n_bins"] == 256
    assert main(["eval", "--run", str(ema_run), "--data", data]) == 0  # other data arrive at 8 bits and are reduced
    report = json.loads(capsys.readouterr().out)
    assert report["n_bins"] == 32 and report["bits_per_dim_note"] == note
    run = tmp_path / "r"
    assert main(["train", *GLOW, "--data", "digits", "--n-bits", "3", "--steps", "2", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "note: 3-bit data (n_bins = 2^3 = 8): bits/dim are not comparable with figures for the 17-level data" in out
    px = np.load(tmp_path / "s.npz")["pixels"] if main(["sample", "--run", str(run), "--n", "8", "--out",
                                                        str(tmp_path / "s.npz")]) == 0 else None
    assert px is not None and px.min() >= 0 and px.max() <= 7


def test_params_ema_needs_a_run_that_keeps_an_average(tmp_path, data, capsys):
    run = tmp_path / "plain"
    assert main(["train", *GLOW, "--data", data, "--steps", "2", "--out", str(run)]) == 0
    capsys.readouterr()
    for command in (["eval"], ["sample", "--out", str(tmp_path / "s.npz")], ["interpolate"]):
        assert main([*command, "--run", str(run), "--params", "ema"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "keeps no moving average" in err and "--ema" in err


@pytest.mark.parametrize("argv,message", [
    (["--data", "digits", "--n-bits", "5"], "n_bits 5: the digits have 17 grey levels, fewer than 2^5 = 32"),
    (["--data", "two_moons", "--n-bits", "3"], "n_bits applies to image data"),
    (["--data", "digits", "--variant", "openai", "--backend", "numba"], "no fused kernels"),
    (["--data", "digits", "--variant", "openai", "--scale", "exp"], "scale map sigmoid"),
    (["--data", "two_moons", "--variant", "openai"], "--variant do(es) not apply to realnvp"),
])
def test_bad_combinations_are_one_line_errors(argv, message, tmp_path, capsys):
    model = ["--model", "realnvp"] if "two_moons" in argv and "--variant" in argv else ["--model", "glow"]
    assert main(["train", *model, *argv, "--steps", "2", "--quiet", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("option,value", [("--n-bits", "0"), ("--n-bits", "17"), ("--n-bits", "x"),
                                          ("--ema", "1"), ("--ema", "0"), ("--ema", "nan"), ("--variant", "tf")])
def test_bad_values_are_refused_by_the_parser(option, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", *GLOW, "--data", "digits", option, value, "--out", str(tmp_path / "r")])
    assert exc.value.code == 2 and option in capsys.readouterr().err


def test_resume_refuses_to_add_an_average_or_change_the_bits(ema_run, tmp_path, capsys):
    for option, value in (("--ema", "0.5"), ("--n-bits", "4"), ("--variant", "rawflow")):
        assert main(["train", "--resume", option, value, "--out", str(ema_run), "--quiet"]) == 2
        assert f"{option} {value}" in capsys.readouterr().err


def test_a_config_whose_n_bits_do_not_fit_is_refused(ema_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    cfg = json.loads((ema_run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "n_bins": 256}))
    (run / "checkpoint.safetensors").write_bytes((ema_run / "checkpoint.safetensors").read_bytes())
    assert main(["eval", "--run", str(run)]) == 2
    assert "'n_bits' 5 does not fit 'n_bins' 256" in capsys.readouterr().err
