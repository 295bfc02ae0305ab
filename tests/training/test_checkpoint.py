import json
import os
import zipfile

import numpy as np
import pytest

from rawflow import tree
from rawflow.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def example():
    rng = np.random.default_rng(0)
    params = {"flow": {"0": {"net": {"0": {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=3)}}}},
              "prior": {"mean": rng.normal(size=2).astype(np.float32)}}
    opt = {"step": np.array(7, dtype=np.int64), "m": tree.zeros_like(params)}
    return {"params": params, "optimizer": opt}, {"model": "realnvp", "lr": 1e-3}


def test_roundtrip_is_bit_exact(tmp_path):
    trees, config = example()
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, trees, config, step=42)
    loaded = load_checkpoint(path)
    assert loaded["step"] == 42 and loaded["config"] == config
    for section in trees:
        assert tree.structure(loaded[section]) == tree.structure(trees[section])
        for p, leaf in tree.leaves(trees[section]):
            got = tree.get(loaded[section], p)
            assert got.dtype == leaf.dtype and np.array_equal(got, leaf)


def test_overwrite_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    trees, config = example()
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, trees, config, step=1)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, trees, config, step=2)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1  # the previous checkpoint is intact
    assert os.listdir(tmp_path) == ["ckpt.npz"]


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.9, 0.999])
def test_truncated_file_is_refused(tmp_path, keep):
    trees, config = example()
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, trees, config, step=3)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="ckpt.npz"):
        load_checkpoint(path)


def test_every_flipped_byte_is_refused(tmp_path):
    trees, config = example()
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, trees, config, step=3)
    data = bytearray(path.read_bytes())
    # Flip one bit at every offset: headers, array data, the zip's bookkeeping, the digest itself.
    for offset in range(len(data)):
        corrupt = bytearray(data)
        corrupt[offset] ^= 0x10
        path.write_bytes(bytes(corrupt))
        with pytest.raises(CheckpointError):
            load_checkpoint(path)


def test_wrong_keys_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "foreign.npz"
    np.savez(path, w=np.ones(3))
    with pytest.raises(CheckpointError, match="not a rawflow checkpoint"):
        load_checkpoint(path)
    # A valid checkpoint whose manifest lists an array that is not there.
    trees, config = example()
    good = tmp_path / "good.npz"
    save_checkpoint(good, trees, config, step=1)
    with np.load(good, allow_pickle=False) as data:
        members = {k: data[k] for k in data.files}
    members.pop("params/prior/mean")
    np.savez(tmp_path / "missing.npz", **members)
    with pytest.raises(CheckpointError, match=r"missing \['params/prior/mean'\]"):
        load_checkpoint(tmp_path / "missing.npz")
    # A tampered array with an intact zip (re-saved) fails its digest.
    with np.load(good, allow_pickle=False) as data:
        members = {k: data[k] for k in data.files}
    members["params/prior/mean"] = members["params/prior/mean"] + 1
    np.savez(tmp_path / "tampered.npz", **members)
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(tmp_path / "tampered.npz")


def test_pickled_objects_are_never_loaded(tmp_path):
    path = tmp_path / "evil.npz"
    trees, config = example()
    save_checkpoint(tmp_path / "good.npz", trees, config, step=1)
    with np.load(tmp_path / "good.npz", allow_pickle=False) as data:
        members = {k: data[k] for k in data.files}
    members["params/prior/mean"] = np.array([object()], dtype=object)
    np.savez(path, **members)
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)


def test_missing_file_and_bad_manifest(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nope.npz")
    path = tmp_path / "badmeta.npz"
    np.savez(path, __meta__=np.frombuffer(b"{not json", dtype=np.uint8))
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)
    np.savez(path, __meta__=np.frombuffer(json.dumps({"format": "x"}).encode(), dtype=np.uint8))
    with pytest.raises(CheckpointError, match="expected 'rawflow-checkpoint'"):
        load_checkpoint(path)
    assert zipfile.is_zipfile(path)
