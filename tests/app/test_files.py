"""Files and runs never lose data (issue 13, items 12–14): run folders locked against concurrent
processes, nothing overwritten without --force (a run's own files and data never), outputs checked
before the work, and every OSError one line naming the path with exit status 2."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import rawflow._files
from rawflow.app import files
from rawflow.app.cli import main

from test_cli import run_cli
from test_cli_train import TINY_2D

ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
LONG_RUN = [*TINY_2D, "--steps", "100000", "--eval-every", "100000"]


def start(*args, cwd):
    return subprocess.Popen([sys.executable, "-m", "rawflow", *args], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_lock(folder, proc, timeout=120):
    """Until ``proc`` holds ``folder``'s lock (its pid is written there after it is taken)."""
    path = os.path.join(folder, files.LOCK)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            with open(path) as f:
                if f.read().strip() == str(proc.pid):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("the training never took the lock")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("fin") / "run"
    assert main(["train", *TINY_2D, "--steps", "4", "--eval-every", "2", "--out", str(run)]) == 0
    return run


# ----------------------------------------------------------------------------- item 12: locks
def test_a_second_training_in_a_locked_folder_is_refused_and_a_killed_one_releases_it(tmp_path, finished_run):
    run = tmp_path / "r"
    first = start("train", *LONG_RUN, "--out", "r", cwd=tmp_path)
    try:
        wait_for_lock(run, first)
        for argv in (["train", *TINY_2D, "--steps", "3", "--out", "r"], ["train", "--resume", "--out", "r"]):
            proc = run_cli(*argv, cwd=tmp_path)
            if argv[1] == "--resume" and "no checkpoint" in proc.stderr:
                continue  # the first run has not checkpointed yet: refused before the lock, also exit 2
            assert proc.returncode == 2, proc.stderr
            assert f"another rawflow process (pid {first.pid}) is using this run folder" in proc.stderr
            assert "Traceback" not in proc.stderr
        assert first.poll() is None  # the first run goes on untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    # The kernel released the lock when the process died: no stale lock blocks a new holder.
    with files.run_lock(str(run)):
        pass


def test_concurrent_trainings_into_one_folder_exactly_one_runs(tmp_path):
    """Seen: in 3 of 5 trials 2–4 of 4 concurrent trainings into one folder exited 0, and the folder
    mixed one run's config with another's checkpoint."""
    procs = [start("train", *TINY_2D, "--steps", "40", "--seed", str(seed), "--out", "r", cwd=tmp_path)
             for seed in range(4)]
    outcomes = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in outcomes)
    assert codes == [0, 2, 2, 2], outcomes
    for code, err in outcomes:
        assert "Traceback" not in err
        if code == 2:
            assert "another rawflow process" in err or "already holds a run" in err, err
    winner = [seed for seed, (code, _) in enumerate(outcomes) if code == 0][0]
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    from rawflow.training.checkpoint import load_checkpoint

    ck = load_checkpoint(tmp_path / "r" / "checkpoint.safetensors")
    assert cfg["seed"] == winner and ck["config"]["run"]["seed"] == winner and ck["step"] == 40


def test_the_demo_is_locked_too(tmp_path):
    with files.run_lock(str(tmp_path / "d")):
        assert main(["demo", "--quick", "--quiet", "--force", "--out", str(tmp_path / "d")]) == 2


# ----------------------------------------------------------------- item 13: nothing overwritten
def test_sample_and_interpolate_refuse_existing_outputs_without_force(finished_run, tmp_path, capsys):
    target = tmp_path / "mine.npz"
    target.write_bytes(b"the user's file")
    for command in ("sample", "interpolate"):
        assert main([command, "--run", str(finished_run), "--out", str(target)]) == 2
        assert "exists; pass --force to replace it" in capsys.readouterr().err
        assert target.read_bytes() == b"the user's file"
    assert main(["sample", "--run", str(finished_run), "--out", str(target), "--force", "--n", "3"]) == 0
    with np.load(target, allow_pickle=False) as f:
        assert f["samples"].shape == (3, 2)
    assert main(["interpolate", "--run", str(finished_run), "--out", str(target), "--force", "--steps", "3"]) == 0


@pytest.mark.parametrize("name", ["checkpoint.safetensors", "config.json", "metrics.json", "loss.png"])
def test_a_runs_own_files_are_never_written_even_with_force(finished_run, capsys, name):
    """Seen: ``rawflow sample --run R --out R/checkpoint.npz`` exited 0 and destroyed the run."""
    path = finished_run / name
    before = path.read_bytes()
    target = str(path.with_suffix(".npz")) if name.endswith(".safetensors") else str(path)
    for command in ("sample", "interpolate"):
        for force in ([], ["--force"]):
            out = str(path) if name.endswith((".png",)) else target
            code = main([command, "--run", str(finished_run), "--out", out, *force])
            assert code == 2
            capsys.readouterr()
    assert path.read_bytes() == before
    # the checkpoint under an .npz name (its format-1 name) is protected as well
    legacy = finished_run / "checkpoint.npz"
    assert main(["sample", "--run", str(finished_run), "--out", str(legacy), "--force"]) == 2
    assert "never writes over a run's own files" in capsys.readouterr().err and not legacy.exists()


def test_the_runs_data_is_never_written(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(300, 2))
    np.save(tmp_path / "v.npy", x)
    run = tmp_path / "run"
    assert main(["train", "--model", "nice", "--data", str(tmp_path / "v.npy"), "--couplings", "2", "--hidden", "4",
                 "--steps", "2", "--batch-size", "50", "--out", str(run), "--quiet"]) == 0
    data = tmp_path / "v.npz"
    np.savez(data, x=x)
    run2 = tmp_path / "run2"
    assert main(["train", "--model", "nice", "--data", str(data), "--couplings", "2", "--hidden", "4",
                 "--steps", "2", "--batch-size", "50", "--out", str(run2), "--quiet"]) == 0
    before = data.read_bytes()
    assert main(["sample", "--run", str(run2), "--out", str(data), "--force"]) == 2
    assert "it is the run's data" in capsys.readouterr().err and data.read_bytes() == before


def test_train_refuses_a_folder_with_files_it_did_not_write(tmp_path, capsys):
    """Seen: with no checkpoint present, train overwrote the user's config.json, metrics.json and loss.png."""
    folder = tmp_path / "mine"
    folder.mkdir()
    for name, text in (("config.json", '{"mine": true}'), ("metrics.json", "{}"), ("notes.txt", "notes")):
        (folder / name).write_text(text)
    assert main(["train", *TINY_2D, "--steps", "2", "--out", str(folder)]) == 2
    assert "holds files rawflow did not write (notes.txt)" in capsys.readouterr().err
    (folder / "notes.txt").unlink()
    assert main(["train", *TINY_2D, "--steps", "2", "--out", str(folder)]) == 2  # config.json is not a run's
    assert "holds files rawflow did not write" in capsys.readouterr().err
    assert (folder / "config.json").read_text() == '{"mine": true}'
    # an unfinished run of rawflow's own (config, no checkpoint) may start over
    run = tmp_path / "r"
    assert main(["train", *TINY_2D, "--steps", "2", "--out", str(run)]) == 0
    (run / "checkpoint.safetensors").unlink()
    assert main(["train", *TINY_2D, "--steps", "2", "--out", str(run)]) == 0
    assert main(["train", *TINY_2D, "--steps", "2", "--out", str(run)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_demo_refuses_an_existing_folder_without_force(tmp_path, capsys):
    """Seen: ``--quick`` silently replaced a full four-minute run."""
    out = tmp_path / "demo"
    out.mkdir()
    (out / "metrics.json").write_text('{"a full run": true}')
    assert main(["demo", "--quick", "--quiet", "--out", str(out)]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == '{"a full run": true}'


# -------------------------------------------------------- item 14: output errors, one line, exit 2
@pytest.mark.parametrize("out,reason", [
    ("/sys/rawflow-test.npz", "Permission denied"),
    ("", "--out must end in .png or .npz, got ''"),
    ("{file}/sub.npz", "a parent of it is not a folder"),
    ("{tmp}/no/such/folder/x.npz", "its folder does not exist"),
    ("{tmp}", "must end in .png or .npz"),
])
def test_unwritable_outputs_are_one_line_before_any_work(finished_run, tmp_path, capsys, out, reason):
    (tmp_path / "file").write_text("x")
    out = out.format(file=tmp_path / "file", tmp=tmp_path)
    for command in ("sample", "interpolate"):
        assert main([command, "--run", str(finished_run), "--out", out]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and reason in err and f"rawflow {command}: error:" in err, err


def test_delegated_commands_check_their_outputs_before_working(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    cases = [
        (["check", "--case", "squeeze", "--json", "/sys/x.json"], "/sys/x.json: Permission denied"),
        (["check", "--case", "squeeze", "--json", str(tmp_path / "file" / "x.json")], "not a folder"),
        (["vectors", "verify", str(tmp_path), "--json", "/sys/x.json"], "not found"),  # no manifest: first
        (["bench", "--quick", "--json", "/sys/x.json"], "/sys/x.json: Permission denied"),
        (["bench", "--quick", "--markdown", str(tmp_path / "nope" / "x.md")], "its folder does not exist"),
    ]
    for argv, message in cases:
        start_t = time.perf_counter()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert time.perf_counter() - start_t < 30  # refused up front, not after the work


def test_verify_checks_its_json_before_comparing(capsys):
    pytest.importorskip("torch")
    start_t = time.perf_counter()
    assert main(["verify", "--peer", "all", "--json", "/sys/x.json"]) == 2
    assert "/sys/x.json: Permission denied" in capsys.readouterr().err
    assert time.perf_counter() - start_t < 30


def test_a_full_disk_or_a_read_only_filesystem_is_one_line_and_loses_nothing(finished_run, tmp_path, capsys,
                                                                            monkeypatch):
    out = tmp_path / "s.npz"

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(rawflow._files.os, "fsync", full)
    assert main(["sample", "--run", str(finished_run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"rawflow sample: error: {out}: No space left on device\n"
    assert os.listdir(tmp_path) == []  # no partial file, no temporary file
    monkeypatch.undo()

    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(rawflow._files.os, "open", read_only)
    assert main(["sample", "--run", str(finished_run), "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"rawflow sample: error: {out}: Read-only file system\n"


def test_train_and_demo_into_unwritable_folders_are_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    for command in (["train", *TINY_2D, "--steps", "2"], ["demo", "--quick", "--quiet"]):
        for out, reason in (("/sys/rawflow-run", "/sys/rawflow-run: (Permission denied|Operation not permitted)"),
                            ("", "--out must name a folder"), ("file/sub", "file/sub: .*not a (folder|directory)")):
            proc = run_cli(*command, "--out", out, cwd=tmp_path)
            assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
            assert proc.stderr.strip().count("\n") == 0 and re.search(reason, proc.stderr, re.I), proc.stderr


def test_unexpected_errors_are_one_line_with_a_way_to_the_traceback(monkeypatch, capsys, tmp_path):
    import rawflow.app.cli as cli

    def bug(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "run_eval", bug)
    monkeypatch.setattr(cli, "_add_eval", lambda commands: commands.add_parser("eval").set_defaults(handler=bug))
    assert main(["eval"]) == cli.EXIT_BUG
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected ZeroDivisionError: a bug" in err and "--debug" in err
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "eval"])
    monkeypatch.setenv("RAWFLOW_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["eval"])
