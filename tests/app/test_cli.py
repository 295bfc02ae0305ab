"""Command line: ``rawflow demo --quick`` end to end in a subprocess, help for every command, and
argument errors (clear message, non-zero exit)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rawflow.app.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_cli(*args, cwd):
    # One BLAS thread: the subprocess shares 2 cores with the test runner (see rawflow.app.cli).
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "rawflow", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_png(path):
    """A PNG by signature that matplotlib reads back as a non-empty RGB(A) image."""
    path = Path(path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    from matplotlib.image import imread

    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50 and pixels.shape[2] in (3, 4)
    assert pixels.std() > 0, f"{path} is blank"


def test_demo_quick_end_to_end(tmp_path):
    proc = run_cli("demo", "--quick", "--out", "out", "--seed", "3", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "held-out NLL (8 Gaussians)" in proc.stdout and "bits/dim (digits)" in proc.stdout
    out = tmp_path / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seed"] == 3 and metrics["quick"] is True
    eg, dg, yc = metrics["eight_gaussians"], metrics["digits"], metrics["digits_ycond"]
    for key in ("test_nll", "test_true_nll", "test_gaussian_nll", "nll_minus_true_nll", "train_time_s"):
        assert math.isfinite(eg[key]), key
    for key in ("test_bits_per_dim", "test_baseline_bits_per_dim", "baseline_minus_bits_per_dim"):
        assert math.isfinite(dg[key]), key
    # the class-conditional Glow beside the unconditional one, on the same held-out digits
    for key in ("test_bits_per_dim", "test_marginal_bits_per_dim", "test_bayes_accuracy", "test_classifier_accuracy"):
        assert math.isfinite(yc[key]), key
    assert yc["unconditional_bits_per_dim"] == dg["test_bits_per_dim"] and yc["test_n"] == dg["test_n"]
    assert eg["nll_minus_true_nll"] == pytest.approx(eg["test_nll"] - eg["test_true_nll"])
    claims = metrics["claims"]
    assert set(claims) == {"eight_gaussians_within_0.05_nats_of_true_nll", "glow_beats_independent_pixel_baseline"}
    assert all(isinstance(c["holds"], bool) for c in claims.values())
    for name in ("eight_gaussians_density.png", "digits_samples.png", "digits_interpolation.png",
                 "digits_ycond_samples.png", "digits_translation.png", "eight_gaussians/loss.png", "digits/loss.png"):
        assert_png(out / name)
    assert "class-conditional Glow" in proc.stdout and "argmax_y p(x | y)" in proc.stdout
    for run in ("eight_gaussians", "digits", "digits_ycond"):
        assert {"config.json", "checkpoint.safetensors", "metrics.json"} <= set(os.listdir(out / run))
    # The demo's runs are ordinary run folders.
    assert main(["sample", "--run", str(out / "digits"), "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert_png(tmp_path / "s.png")


def test_console_script_if_installed(tmp_path):
    script = Path(sys.executable).with_name("rawflow")
    if not script.exists():
        pytest.skip("console script not installed next to this interpreter")
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("rawflow ")


@pytest.mark.parametrize("command", ["demo", "train", "sample", "interpolate", "translate", "eval"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: rawflow {command}") and "--threads" in out


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "train", "sample", "interpolate", "translate", "eval", "check", "vectors", "verify",
                    "bench"):
        assert command in out


@pytest.mark.parametrize("command", ["check", "vectors"])
def test_delegated_commands_keep_their_own_parsers(command, capsys):
    try:
        code = main([command, "--help"])
    except SystemExit as exc:
        code = exc.code
    assert code in (0, None)
    assert f"usage: rawflow {command}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["demo", "--seed", "-1"], "--seed: expected a non-negative integer"),
        (["demo", "--bogus"], "unrecognized arguments: --bogus"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["train", "--steps", "0"], "--steps: expected a positive integer"),
        (["train", "--steps", "ten"], "--steps: expected a positive integer"),
        (["train", "--lr", "-1"], "--lr: expected a positive finite number"),
        (["train", "--lr", "nan"], "--lr: expected a positive finite number"),
        (["train", "--val-fraction", "1.5"], "--val-fraction: expected a fraction in [0, 1)"),
        (["train", "--hidden", "64,x"], "--hidden: expected comma-separated positive layer widths"),
        (["train", "--model", "maf"], "--model: invalid choice: 'maf'"),
        (["train", "--device", "tpu"], "--device: invalid choice: 'tpu'"),
        (["train", "--dtype", "float16"], "--dtype: invalid choice: 'float16'"),
        (["sample"], "the following arguments are required: --run"),
        (["sample", "--run", "x", "--temperature", "0"], "--temperature: expected a positive finite number"),
        (["interpolate", "--run", "x", "--index", "1"], "--index: expected 2 arguments"),
        (["eval", "--run", "x", "--split", "dev"], "--split: invalid choice: 'dev'"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "a command is required" in err and "demo" in err


def test_out_must_be_a_folder(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert main(["demo", "--out", str(target), "--quick", "--quiet"]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["train", "--model", "realnvp", "--data", "two_moons", "--out", str(target)]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_bad_arguments_in_a_subprocess(tmp_path):
    proc = run_cli("train", "--steps", "-5", cwd=tmp_path)
    assert proc.returncode == 2 and "--steps" in proc.stderr and "Traceback" not in proc.stderr


def test_verify_help_works_without_torch(tmp_path):
    """Seen: ``rawflow verify --help`` exited 2 without torch instead of showing help."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from rawflow.app.cli import main\n"
            "sys.exit(main(sys.argv[1:]))")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code, "verify", "--help"], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: rawflow verify"), proc.stderr
    proc = subprocess.run([sys.executable, "-c", code, "verify", "--peer", "zuko"], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "needs PyTorch" in proc.stderr and "Traceback" not in proc.stderr


def test_check_shows_progress_on_a_terminal_only(tmp_path):
    """Seen: ``rawflow check`` printed nothing for 60 s."""
    import pty

    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    argv = [sys.executable, "-m", "rawflow", "check", "--case", "squeeze", "permutation", "--dtype", "float64"]
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=secondary, env=env, cwd=tmp_path)
    os.close(secondary)
    seen = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        seen += chunk
    out = proc.stdout.read()
    assert proc.wait(timeout=300) == 0
    os.close(primary)
    assert b"[1/2] permutation" in seen and b"[2/2] squeeze" in seen, seen
    piped = run_cli("check", "--case", "squeeze", "--dtype", "float64", cwd=tmp_path)
    assert piped.returncode == 0 and "[1/1]" not in piped.stderr and b"checks passed" in out
