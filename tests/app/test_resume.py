"""Checkpoints of ``rawflow train``: resuming reproduces the uninterrupted run bit for bit, a
NaN/Inf stops training without touching the last good checkpoint, and corrupted, truncated or
foreign checkpoints are refused with a clear message and a non-zero exit."""

import hashlib
import io
import json
import os
import tempfile

import numpy as np
import pytest

from rawflow import tree
from rawflow.training.checkpoint import load_checkpoint, save_checkpoint
from rawflow.app.cli import main
from rawflow.app.runs import make_config, run_training

from test_cli import run_cli
from test_cli_train import TINY_2D, images_file

NAN_RUN = [*TINY_2D, "--optimizer", "sgd", "--momentum", "0", "--lr", "1e6", "--checkpoint-every", "1",
           "--eval-every", "1"]


def assert_same_run(a, b):
    ca, cb = load_checkpoint(a / "checkpoint.safetensors"), load_checkpoint(b / "checkpoint.safetensors")
    assert ca["step"] == cb["step"]
    for section in ("params", "optimizer", "best", "history"):
        la, lb = list(tree.leaves(ca[section])), list(tree.leaves(cb[section]))
        assert [p for p, _ in la] == [p for p, _ in lb]
        for (path, x), (_, y) in zip(la, lb):
            assert x.dtype == y.dtype and np.array_equal(x, y), f"{section}/{path}"
    assert ca["config"]["rng"] == cb["config"]["rng"]
    ma = json.loads((a / "metrics.json").read_text())
    mb = json.loads((b / "metrics.json").read_text())
    assert ma["test_nll"] == mb["test_nll"]


def test_extending_a_finished_run_equals_the_longer_run(tmp_path):
    once, twice = tmp_path / "once", tmp_path / "twice"
    # The shorter run stops on an evaluation step (21 = 3·7): a run also validates at its last step,
    # which would otherwise add a validation point (and maybe a best) that the longer run lacks.
    args = [*TINY_2D, "--eval-every", "7"]
    assert main(["train", *args, "--steps", "40", "--out", str(once)]) == 0
    assert main(["train", *args, "--steps", "21", "--out", str(twice)]) == 0
    assert main(["train", "--resume", "--steps", "40", "--out", str(twice), "--quiet"]) == 0
    assert_same_run(once, twice)


def test_a_run_from_before_checkpoint_format_2_still_resumes_bit_for_bit(tmp_path):
    """A run folder with a format-1 ``checkpoint.npz`` (leaves only: the prior's empty subtree is not
    in it) samples, evaluates and resumes; its first format-2 save replaces the old file."""
    from support.checkpoints import save_v1

    data = str(images_file(tmp_path))
    args = ["--model", "glow", "--data", data, "--K", "1", "--L", "2", "--width", "4", "--batch-size", "16",
            "--eval-every", "3", "--quiet"]
    once, old = tmp_path / "once", tmp_path / "old"
    assert main(["train", *args, "--steps", "6", "--out", str(once)]) == 0
    assert main(["train", *args, "--steps", "3", "--out", str(old)]) == 0
    ck = load_checkpoint(old / "checkpoint.safetensors")
    step, config = ck.pop("step"), ck.pop("config")
    assert ck["params"]["prior"] == {}  # what format 1 could not store
    save_v1(old / "checkpoint.npz", ck, config, step)
    (old / "checkpoint.safetensors").unlink()
    assert main(["sample", "--run", str(old), "--n", "4", "--out", str(tmp_path / "s.npz")]) == 0
    assert main(["eval", "--run", str(old)]) == 0
    assert main(["train", "--resume", "--steps", "6", "--out", str(old), "--quiet"]) == 0
    assert sorted(p.name for p in old.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint.safetensors"]
    assert_same_run(once, old)


def test_resuming_after_a_crash_reproduces_the_loss_trajectory(tmp_path):
    """Images (fresh dequantisation noise per batch from the checkpointed generator), a cosine
    schedule with warm-up, Adam, and a crash between checkpoints: the run picks up at step 10 and
    ends exactly where the uninterrupted run ends."""
    data = str(images_file(tmp_path))
    options = {"model": "glow", "data": data, "arch": {"K": 1, "L": 1, "width": 4}, "batch_size": 16, "steps": 20,
               "schedule": "cosine", "warmup": 3, "eval_every": 4, "checkpoint_every": 5}
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    run_training(make_config(options), str(whole), quiet=True)
    seen = []

    def crash(step, loss):
        seen.append(loss)
        if step == 13:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(make_config(options), str(crashed), quiet=True, hook=crash)
    assert load_checkpoint(crashed / "checkpoint.safetensors")["step"] == 10
    assert not (crashed / "metrics.json").exists()
    assert main(["train", "--resume", "--out", str(crashed), "--quiet"]) == 0
    assert_same_run(whole, crashed)
    history = load_checkpoint(whole / "checkpoint.safetensors")["history"]["loss"]
    assert np.array_equal(history[:13], np.array(seen))  # the crashed run had followed it too


def test_ctrl_c_exits_130_and_names_the_way_back(tmp_path, capsys, monkeypatch):
    import rawflow.app.runs

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rawflow.app.runs, "run_training", interrupted)
    assert main(["train", *TINY_2D, "--steps", "3", "--out", str(tmp_path / "r")]) == 130
    assert "--resume" in capsys.readouterr().err


def test_resume_refuses_options_that_contradict_the_run(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", *TINY_2D, "--steps", "4", "--schedule", "cosine", "--out", str(run)]) == 0
    assert main(["train", "--resume", "--lr", "0.5", "--out", str(run)]) == 2
    assert "--lr 0.5 (run has 0.001)" in capsys.readouterr().err
    assert main(["train", "--resume", "--hidden", "4", "--out", str(run)]) == 2
    assert "--hidden [4] (run has [8])" in capsys.readouterr().err
    assert main(["train", "--resume", "--steps", "8", "--out", str(run)]) == 2
    assert "cosine schedule" in capsys.readouterr().err
    assert main(["train", "--resume", "--data", "circles", "--out", str(run)]) == 2
    assert "differs from the run's data" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- divergence
def test_a_nan_stops_training_and_the_last_good_checkpoint_stays_intact(tmp_path):
    proc = run_cli("train", *NAN_RUN, "--steps", "50", "--out", "r", cwd=tmp_path)
    assert proc.returncode == 1
    assert "diverged at step 2: non-finite loss" in proc.stderr and "last good checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr and "RuntimeWarning" not in proc.stderr
    run = tmp_path / "r"
    ck = load_checkpoint(run / "checkpoint.safetensors")
    assert ck["step"] == 1 and all(np.isfinite(a).all() for _, a in tree.leaves(ck["params"]))
    assert not (run / "metrics.json").exists()
    # The same run stopped after step 1 by design writes the identical checkpoint.
    assert main(["train", *NAN_RUN, "--steps", "1", "--out", str(tmp_path / "one")]) == 0
    one = load_checkpoint(tmp_path / "one" / "checkpoint.safetensors")
    for (_, a), (_, b) in zip(tree.leaves(ck["params"]), tree.leaves(one["params"])):
        assert np.array_equal(a, b)
    # Resuming diverges again at step 2 and leaves the file byte for byte as it was.
    before = hashlib.sha256((run / "checkpoint.safetensors").read_bytes()).hexdigest()
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 1
    assert hashlib.sha256((run / "checkpoint.safetensors").read_bytes()).hexdigest() == before


# ------------------------------------------------------------------------------ bad checkpoints
@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("good") / "run"
    assert main(["train", *TINY_2D, "--steps", "6", "--eval-every", "3", "--out", str(run)]) == 0
    return run


def copy_run(good_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "checkpoint.safetensors"):
        (run / name).write_bytes((good_run / name).read_bytes())
    return run


def truncate(raw):
    return raw[: len(raw) // 2]


def flip_at(raw, i):
    return raw[:i] + bytes([raw[i] ^ 0x5A]) + raw[i + 1:]


def flip_in(member, where=0.5):
    """Flip one byte of a tensor's data (``where``: fraction into it), or of the header: ``member``
    ``"__metadata__"`` flips a byte inside the manifest, ``"header:<name>"`` inside a tensor's entry."""
    def corrupt(raw):
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        if member == "__metadata__":
            return flip_at(raw, raw.index(b"step", 8))
        if member.startswith("header:"):
            return flip_at(raw, raw.index(member[7:].encode(), 8) + len(member) - 5)
        begin, end = header[member]["data_offsets"]
        return flip_at(raw, 8 + n + begin + min(int((end - begin) * where), end - begin - 1))
    return corrupt


def drop_member(raw):
    """The same arrays and manifest less one tensor, with a correct digest: only the manifest check sees it."""
    from support.checkpoints import resign
    from rawflow.training import tensorfile

    c = tensorfile.read(io.BytesIO(raw), len(raw))
    arrays = {k: v for k, v in c.arrays.items() if k != "optimizer/m/flow/0/net/0/w"}
    with tempfile.TemporaryDirectory() as d:
        resign(os.path.join(d, "c"), arrays, json.loads(c.metadata["rawflow"]))
        with open(os.path.join(d, "c"), "rb") as f:
            return f.read()


CORRUPTIONS = {
    "empty": (lambda raw: b"", "checkpoint"),
    "truncated": (truncate, "truncated"),
    "flipped byte in the manifest": (flip_in("__metadata__"), "checkpoint"),
    "flipped byte in a parameter": (flip_in("params/flow/1/net/0/w", 0.7), "checkpoint"),
    "flipped byte in a tensor's header entry": (flip_in("header:params/flow/0/net/0/b"), "checkpoint"),
    "flipped byte in the optimiser state": (flip_in("optimizer/v/flow/0/net/1/w", 0.9), "checkpoint"),
    "flipped byte in the loader order": (flip_in("loader/order", 0.5), "checkpoint"),
    "flipped byte in the loss history": (flip_in("history/loss", 0.99), "checkpoint"),
    "flipped byte at 90%": (lambda raw: flip_at(raw, int(len(raw) * 0.9)), "checkpoint"),
    "flipped byte in the header's length": (lambda raw: flip_at(raw, 1), "checkpoint"),
    "member removed": (drop_member, "do not match the manifest"),
    "not a checkpoint": (lambda raw: b"print('hello')\n" * 50, "checkpoint"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupted_checkpoints_are_refused(good_run, tmp_path, capsys, name):
    corrupt, message = CORRUPTIONS[name]
    run = copy_run(good_run, tmp_path)
    path = run / "checkpoint.safetensors"
    path.write_bytes(corrupt(path.read_bytes()))
    for argv in (["train", "--resume", "--out", str(run), "--quiet"], ["sample", "--run", str(run)],
                 ["eval", "--run", str(run)]):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert "error: checkpoint" in err and message in err, err


def test_a_flip_anywhere_in_the_file_is_refused(good_run, tmp_path):
    """Every 97th byte position: the header's length, the header (tensor entries, the manifest,
    the padding) and the data."""
    from rawflow.training.checkpoint import CheckpointError

    raw = (good_run / "checkpoint.safetensors").read_bytes()
    path = tmp_path / "checkpoint.safetensors"
    undetected = []
    for i in range(0, len(raw), 97):
        path.write_bytes(flip_at(raw, i))
        try:
            load_checkpoint(path)
        except CheckpointError:
            continue
        undetected.append(i)
    assert not undetected, f"flips at byte offsets {undetected[:10]} of {len(raw)} were not detected"


def rewrite(run, edit):
    """Re-save the checkpoint (valid file, digests and all) with its trees/meta edited."""
    path = run / "checkpoint.safetensors"
    ck = load_checkpoint(path)
    step, meta = ck.pop("step"), ck.pop("config")
    trees, meta, step = edit(ck, meta, step)
    save_checkpoint(path, trees, meta, step)


WRONG_KEYS = {
    "renamed parameter": (lambda t, m, s: ({**t, "params": {"flow": {"0": t["params"]["flow"]["0"],
                                                                  "9": t["params"]["flow"]["1"]}}}, m, s),
                          "'params' does not match the model"),
    "missing optimizer": (lambda t, m, s: ({k: v for k, v in t.items() if k != "optimizer"}, m, s),
                          "not a training checkpoint"),
    "wrong shape": (lambda t, m, s: ({**t, "best": tree.map(lambda a: a[..., :1] if a.ndim else a, t["best"])}, m, s),
                    "does not match the model"),
    "other run's config": (lambda t, m, s: (t, {**m, "run": {**m["run"], "seed": 7}}, s),
                           "configuration"),
    "step mismatch": (lambda t, m, s: (t, m, s + 1), "step"),
    "not a rawflow checkpoint": (lambda t, m, s: ({"weights": {"w": np.zeros(3)}}, {"hello": 1}, s),
                                 "checkpoint"),
}


@pytest.mark.parametrize("name", list(WRONG_KEYS))
def test_checkpoints_with_wrong_contents_are_refused(good_run, tmp_path, capsys, name):
    edit, message = WRONG_KEYS[name]
    run = copy_run(good_run, tmp_path)
    rewrite(run, edit)
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "error: checkpoint" in err and message in err, err


def test_a_checkpoint_from_another_architecture_is_refused(good_run, tmp_path, capsys):
    run = copy_run(good_run, tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    cfg["arch"]["hidden"] = [9]
    (run / "config.json").write_text(json.dumps(cfg))
    for argv in (["train", "--resume", "--out", str(run)], ["sample", "--run", str(run)]):
        assert main(argv) == 1
        assert "error: checkpoint" in capsys.readouterr().err


def test_a_corrupted_checkpoint_fails_in_a_subprocess_without_a_traceback(good_run, tmp_path):
    run = copy_run(good_run, tmp_path)
    path = run / "checkpoint.safetensors"
    path.write_bytes(truncate(path.read_bytes()))
    proc = run_cli("train", "--resume", "--out", str(run), cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "refusing to resume" in proc.stderr and os.path.basename(path) in proc.stderr
