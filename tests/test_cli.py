"""Command line: ``rawflow demo`` end to end in a subprocess, and argument errors."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rawflow.cli import main


def run_cli(*args, cwd):
    # One BLAS thread: the subprocess shares 2 cores with the test runner (see rawflow.cli.DEMO).
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "rawflow.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_demo_end_to_end(tmp_path):
    proc = run_cli("demo", "--steps", "40", "--out", "tmp", "--seed", "3", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "held-out NLL" in proc.stdout and "Gaussian" in proc.stdout
    metrics = json.loads((tmp_path / "tmp" / "metrics.json").read_text())
    assert metrics["steps"] == 40 and metrics["seed"] == 3 and metrics["dataset"] == "two_moons"
    for key in ("test_nll", "train_nll", "gaussian_test_nll", "final_batch_loss", "train_time_s"):
        assert math.isfinite(metrics[key]), key
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        png = tmp_path / "tmp" / "samples.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_console_script_if_installed(tmp_path):
    script = Path(sys.executable).with_name("rawflow")
    if not script.exists():
        pytest.skip("console script not installed next to this interpreter")
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("rawflow ")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["demo", "--steps", "0"], "--steps: expected a positive integer"),
        (["demo", "--steps", "ten"], "--steps: expected a positive integer"),
        (["demo", "--seed", "-1"], "--seed: expected a non-negative integer"),
        (["demo", "--bogus"], "unrecognized arguments: --bogus"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_arguments_exit_nonzero_with_a_message(argv, message, capsys):
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
    assert main(["demo", "--out", str(target), "--steps", "1", "--quiet"]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_bad_arguments_in_a_subprocess(tmp_path):
    proc = run_cli("demo", "--steps", "-5", cwd=tmp_path)
    assert proc.returncode == 2 and "--steps" in proc.stderr
