"""Checkpoints: exact round trips (empty subtrees, dtypes), atomic writes, stale temp files swept,
every corruption and every malformed manifest refused before anything is trusted or allocated,
version-1 (.npz) files still loaded, and the files readable by the safetensors package."""

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from rawflow import tree
from rawflow._files import is_temp_name, sweep_stale_temps
from rawflow.training import tensorfile
from rawflow.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from support.checkpoints import members as v1_members
from support.checkpoints import resign, save_v1, serialize


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

    import rawflow._files

    monkeypatch.setattr(rawflow._files.os, "fsync", boom)
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


def test_foreign_files_are_refused(tmp_path):
    path = tmp_path / "foreign.npz"
    np.savez(path, w=np.ones(3))
    with pytest.raises(CheckpointError, match="not a rawflow checkpoint"):
        load_checkpoint(path)
    other = tmp_path / "model.safetensors"  # a valid safetensors file without rawflow's manifest
    with open(other, "wb") as f:
        tensorfile.write(f, {"w": np.ones(3)}, {"format": "pt"})
    with pytest.raises(CheckpointError, match="not a rawflow checkpoint"):
        load_checkpoint(other)
    (tmp_path / "text").write_text("hello, world")
    with pytest.raises(CheckpointError, match="text"):
        load_checkpoint(tmp_path / "text")


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nope.npz")


# ---------------------------------------------------------------- item 8: the exact tree comes back
def test_empty_subtrees_and_every_dtype_survive(tmp_path):
    params = {"prior": {}, "flow": {"0": {}, "1": {"w": np.arange(6.0).reshape(2, 3)}, "2": {"a": {}, "b": {}}},
              "scalars": {"f16": np.float16([1.5]), "i8": np.int8([-3]), "u64": np.array(2**63, np.uint64),
                          "b": np.array([True, False]), "be": np.arange(3, dtype=">f8"), "empty": np.zeros((0, 4))}}
    save_checkpoint(tmp_path / "c", {"params": params, "nothing": {}}, {"k": [1, None]}, step=0)
    loaded = load_checkpoint(tmp_path / "c")
    assert loaded["nothing"] == {} and loaded["params"]["prior"] == {} and loaded["params"]["flow"]["0"] == {}
    assert loaded["params"]["flow"]["2"] == {"a": {}, "b": {}}
    assert loaded["config"] == {"k": [1, None]} and loaded["step"] == 0
    for path, leaf in tree.leaves(params):
        got = tree.get(loaded["params"], path)
        assert got.shape == leaf.shape and got.dtype == leaf.dtype.newbyteorder("=") and np.array_equal(got, leaf)
    loaded["params"]["flow"]["1"]["w"][0, 0] = 7.0  # loaded arrays are ordinary writable arrays


@pytest.mark.parametrize("build", ["glow", "realnvp_multiscale", "realnvp"])
def test_a_loaded_model_evaluates(tmp_path, build):
    """Seen: ``model.log_prob(load_checkpoint(p)["params"], x)`` raised KeyError: 'prior' (or '0')."""
    from rawflow import FlowModel, StandardNormal, glow, realnvp, realnvp_multiscale

    rng = np.random.default_rng(0)
    if build == "realnvp":
        flow, shape = realnvp(2, n_couplings=2, hidden=(4,)), (2,)
    elif build == "glow":
        flow, shape = glow(1, 2, 4, (1, 4, 4)), (1, 4, 4)
    else:
        flow, shape = realnvp_multiscale(2, 4, (1, 4, 4), blocks=1), (1, 4, 4)
    model = FlowModel(flow, StandardNormal((int(np.prod(shape)),)))
    x = rng.uniform(-0.4, 0.4, size=(5, *shape))
    params = model.init(rng, x)
    save_checkpoint(tmp_path / "c", {"params": params}, {}, step=1)
    loaded = load_checkpoint(tmp_path / "c")["params"]
    assert np.array_equal(model.log_prob(loaded, x), model.log_prob(params, x))


def test_bad_trees_are_refused_at_save(tmp_path):
    for trees, match in [({"a/b": {}}, "section"), ({"p": {"x/y": np.ones(1)}}, "without '/'"),
                         ({"p": {"": np.ones(1)}}, "non-empty"), ({"p": np.ones(1)}, "expected a dict"),
                         ({"p": {"z": np.ones(1, complex)}}, "unsupported dtype"),
                         ({"p": {"o": np.array([None])}}, "unsupported dtype")]:
        with pytest.raises(ValueError, match=match):
            save_checkpoint(tmp_path / "c", trees, {}, 1)
    with pytest.raises(ValueError, match="strict JSON"):
        save_checkpoint(tmp_path / "c", {}, {"lr": float("nan")}, 1)
    with pytest.raises(ValueError, match="step"):
        save_checkpoint(tmp_path / "c", {}, {}, -1)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------ item 10: validate before materialising; schema
GOOD = {"format": "rawflow-checkpoint", "version": 2, "step": 3, "config": {}, "trees": {"p": {"w": None}}}
BAD_MANIFESTS = [
    (None, "expected an object"), ([], "expected an object"), ("x", "expected an object"),
    ({**GOOD, "format": None}, "format"), ({**GOOD, "version": "2"}, "version"), ({**GOOD, "version": 1}, "version"),
    ({k: v for k, v in GOOD.items() if k != "step"}, "no 'step'"),
    ({k: v for k, v in GOOD.items() if k != "config"}, "no 'config'"),
    ({k: v for k, v in GOOD.items() if k != "trees"}, "no 'trees'"),
    ({**GOOD, "step": "abc"}, "'step' is str"), ({**GOOD, "step": None}, "'step' is NoneType"),
    ({**GOOD, "step": 3.0}, "'step' is float"), ({**GOOD, "step": True}, "'step' is bool"),
    ({**GOOD, "step": -1}, "negative"), ({**GOOD, "trees": None}, "'trees' is NoneType"),
    ({**GOOD, "trees": []}, "'trees' is list"), ({**GOOD, "trees": {"p": None}}, "tree 'p' is NoneType"),
    ({**GOOD, "trees": {"p": [1]}}, "tree 'p' is list"), ({**GOOD, "trees": {"p": {"w": 1}}}, "tree 'p/w' is int"),
    ({**GOOD, "trees": {"p": {"w": None, "v": None}}}, "missing"), ({**GOOD, "trees": {"p": {}}}, "unexpected"),
    ({**GOOD, "trees": {"p": {"a/b": None}}}, "contains '/'"),
]


@pytest.mark.parametrize("manifest,match", BAD_MANIFESTS)
def test_malformed_manifests_are_checkpoint_errors(tmp_path, manifest, match):
    resign(tmp_path / "c", {"p/w": np.ones(2)}, manifest)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(tmp_path / "c")
    resign(tmp_path / "ok", {"p/w": np.ones(2)}, GOOD)  # the same file with the good manifest loads
    assert load_checkpoint(tmp_path / "ok")["step"] == 3


def test_the_manifest_string_itself_must_be_json(tmp_path):
    arrays = {"p/w": np.ones(2)}
    entries, _ = tensorfile.layout(arrays)
    for meta in ("{not json", ""):
        h = hashlib.sha256(tensorfile.header_bytes(entries, {"rawflow": meta, "rawflow_sha256": "0" * 64}))
        h.update(arrays["p/w"].tobytes())
        with open(tmp_path / "c", "wb") as f:
            tensorfile.write(f, arrays, {"rawflow": meta, "rawflow_sha256": h.hexdigest()})
        with pytest.raises(CheckpointError, match="not valid JSON"):
            load_checkpoint(tmp_path / "c")


def header_file(path, header: dict, data: bytes = b"") -> None:
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


BAD_HEADERS = [  # (header, data, message): each refused before any array is allocated
    ({"w": {"dtype": "F64", "shape": [2**27], "data_offsets": [0, 2**30]}}, b"\0" * 64, "the file holds 64"),
    ({"w": {"dtype": "F64", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, b"\0" * 8, "needs"),
    ({"w": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]},
      "v": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 16, "gaps or overlaps"),
    ({"w": {"dtype": "F64", "shape": [1], "data_offsets": [8, 16]}}, b"\0" * 16, "expected 0"),
    ({"w": {"dtype": "O", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8, "dtype 'O'"),
    ({"w": {"dtype": "F64", "shape": [-1], "data_offsets": [0, 8]}}, b"\0" * 8, "non-negative"),
    ({"w": {"dtype": "F64", "shape": "3", "data_offsets": [0, 8]}}, b"\0" * 8, "non-negative"),
    ({"w": {"dtype": "F64", "shape": [1], "data_offsets": [0]}}, b"\0" * 8, "data_offsets"),
    ({"w": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8], "x": 1}}, b"\0" * 8, "is not"),
    ({"w": [1]}, b"", "is not"), ({"__metadata__": {"a": 1}}, b"", "strings"),
]


@pytest.mark.parametrize("header,data,match", BAD_HEADERS)
def test_headers_are_validated_before_anything_is_allocated(tmp_path, header, data, match):
    header_file(tmp_path / "c", header, data)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=match):
            load_checkpoint(tmp_path / "c")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_header_length_and_limits(tmp_path):
    path = tmp_path / "c"
    path.write_bytes((2**62).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match="header declares"):
        load_checkpoint(path)
    path.write_bytes(b"\x02\0\0\0\0\0\0\0{x")
    with pytest.raises(CheckpointError, match="JSON"):
        load_checkpoint(path)
    path.write_bytes(b"\x02\0\0\0\0\0\0\0[]")
    with pytest.raises(CheckpointError, match="not a JSON object"):
        load_checkpoint(path)
    text = b'{"__metadata__":{"x":"1"},"__metadata__":{"x":"2"}}'
    path.write_bytes(len(text).to_bytes(8, "little") + text)
    with pytest.raises(CheckpointError, match="repeats the key"):
        load_checkpoint(path)
    save_checkpoint(path, {"p": {"w": np.zeros(1000)}}, {}, 1)
    assert load_checkpoint(path, max_bytes=8000)["p"]["w"].shape == (1000,)
    with pytest.raises(CheckpointError, match="limit of 7999"):
        load_checkpoint(path, max_bytes=7999)


def test_a_deflated_bomb_in_a_version_1_file_is_refused_before_allocation(tmp_path):
    """Seen: a 1 MB deflated member declaring 1 GiB reached 1 GiB of resident memory before the error."""
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("params/w.npy", "w", force_zip64=True) as member:
            header = {"descr": "<f8", "fortran_order": False, "shape": (2**27,)}
            np.lib.format.write_array_header_1_0(member, header)
            chunk = bytes(1 << 20)
            for _ in range(64):  # 64 MiB of zeros deflate to ~64 KB (the test keeps it small)
                member.write(chunk)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="compressed"):
            load_checkpoint(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak


def test_a_stored_npy_declaring_more_than_it_holds_is_refused(tmp_path):
    trees, config = example()
    m = v1_members(trees, config, 1)
    raw = bytearray(serialize(m))
    path = tmp_path / "c.npz"
    # rewrite one member's .npy header shape (8 bytes of data declared as 2**27 elements)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, a in m.items():
            with zf.open(name + ".npy", "w") as member:
                if name == "params/prior/mean":
                    np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False,
                                                                  "shape": (2**27,)})
                    member.write(a.tobytes())
                else:
                    np.lib.format.write_array(member, a, allow_pickle=False)
    path.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="declares"):
        load_checkpoint(path)
    assert raw  # the intact file of the same trees loads
    path.write_bytes(bytes(raw))
    assert load_checkpoint(path)["step"] == 1


# ------------------------------------------------------------------ version 1 (.npz) still loads
def test_version_1_checkpoints_still_load(tmp_path):
    trees, config = example()
    save_v1(tmp_path / "old.npz", trees, config, 5)
    loaded = load_checkpoint(tmp_path / "old.npz")
    assert loaded["step"] == 5 and loaded["config"] == config
    for section in trees:
        for p, leaf in tree.leaves(trees[section]):
            assert np.array_equal(tree.get(loaded[section], p), leaf)


V1_BAD = [
    (lambda m: None, "expected an object"),
    (lambda m: {**m, "step": "abc"}, "'step' is str"),
    (lambda m: {k: v for k, v in m.items() if k != "arrays"}, "no 'arrays'"),
    (lambda m: {**m, "arrays": None}, "'arrays' is NoneType"),
    (lambda m: {**m, "arrays": [None]}, r"arrays\[0\]"),
    (lambda m: {**m, "arrays": [{"name": "params/w"}]}, r"arrays\[0\]"),
    (lambda m: {**m, "arrays": [dict(e, shape=None) for e in m["arrays"]]}, r"arrays\[0\]"),
    (lambda m: {k: v for k, v in m.items() if k != "config"}, "no 'config'"),
]


@pytest.mark.parametrize("edit,match", V1_BAD)
def test_version_1_malformed_manifests_are_checkpoint_errors(tmp_path, edit, match):
    trees, config = example()
    save_v1(tmp_path / "c.npz", trees, config, 1, meta_edit=edit)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(tmp_path / "c.npz")


def test_version_1_member_that_is_not_npy_is_refused(tmp_path):
    trees, config = example()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("params/w.txt", b"hello")
    (tmp_path / "c.npz").write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="not an .npy"):
        load_checkpoint(tmp_path / "c.npz")
    m = v1_members(trees, config, 1)
    m["params/prior/mean"] = np.array([object()], dtype=object)
    np.savez(tmp_path / "evil.npz", **m)
    with pytest.raises(CheckpointError, match="object|unreadable"):
        load_checkpoint(tmp_path / "evil.npz")


# ------------------------------------------------------------ item 11: stale temp files are swept
KILLED_SAVE = """
import os, signal, sys
import numpy as np
from rawflow._files import atomic_write
def write(f):
    f.write(b"x" * 100000)
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
atomic_write(sys.argv[1], write)
"""

HELD_SAVE = """
import sys
from rawflow._files import atomic_write
def write(f):
    f.write(b"partial")
    f.flush()
    print("writing", flush=True)
    sys.stdin.readline()
atomic_write(sys.argv[1], write)
"""


def _age(folder, seconds=60):
    for name in os.listdir(folder):
        if is_temp_name(name):
            t = time.time() - seconds
            os.utime(folder / name, (t, t))


def test_killed_saves_leave_temp_files_that_the_next_save_sweeps(tmp_path):
    target = tmp_path / "ckpt"
    for _ in range(3):
        proc = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(target)], timeout=60)
        assert proc.returncode == -signal.SIGKILL
    temps = [n for n in os.listdir(tmp_path) if is_temp_name(n)]
    assert len(temps) == 3 and not target.exists()
    (tmp_path / ".notes.tmp").write_text("a user's file")  # not ours: never touched
    os.symlink(tmp_path / ".notes.tmp", tmp_path / f".x.1.{'0' * 16}.rawflow-tmp")  # our pattern, a link
    save_checkpoint(target, {"p": {"w": np.ones(2)}}, {}, 1)
    link = f".x.1.{'0' * 16}.rawflow-tmp"
    assert sorted(n for n in os.listdir(tmp_path) if is_temp_name(n)) == sorted(temps + [link])  # too fresh yet
    _age(tmp_path)
    save_checkpoint(target, {"p": {"w": np.ones(2)}}, {}, 2)
    assert sorted(os.listdir(tmp_path)) == sorted([".notes.tmp", link, "ckpt"])
    assert load_checkpoint(target)["step"] == 2


def test_a_live_save_in_another_process_is_never_swept(tmp_path):
    target = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, "-c", HELD_SAVE, str(target)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        _age(tmp_path, 3600)  # old as it may be, its writer holds the lock
        assert sweep_stale_temps(str(tmp_path)) == []
        save_checkpoint(tmp_path / "other", {"p": {"w": np.ones(2)}}, {}, 1)
        assert len([n for n in os.listdir(tmp_path) if is_temp_name(n)]) == 1
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert target.read_bytes() == b"partial"
    assert [n for n in os.listdir(tmp_path) if is_temp_name(n)] == []


# ------------------------------------------------------- interoperability with the safetensors package
def test_files_load_with_the_safetensors_package_and_back(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    trees, config = example()
    save_checkpoint(tmp_path / "c.safetensors", trees, config, step=4)
    arrays = st.load_file(str(tmp_path / "c.safetensors"))
    assert set(arrays) == {f"{s}/{p}" for s in trees for p, _ in tree.leaves(trees[s])}
    for s in trees:
        for p, leaf in tree.leaves(trees[s]):
            assert np.array_equal(arrays[f"{s}/{p}"], leaf) and arrays[f"{s}/{p}"].dtype == leaf.dtype
    from safetensors import safe_open

    with safe_open(str(tmp_path / "c.safetensors"), framework="np") as f:
        assert json.loads(f.metadata()["rawflow"])["step"] == 4
    # and the reader takes files the package wrote
    st.save_file({"a": np.arange(5.0), "b": np.ones((2, 0), np.float32), "c": np.array(3, np.int64)},
                 str(tmp_path / "theirs"), metadata={"k": "v"})
    with open(tmp_path / "theirs", "rb") as f:
        c = tensorfile.read(f, os.path.getsize(tmp_path / "theirs"))
    assert c.metadata == {"k": "v"} and np.array_equal(c.arrays["a"], np.arange(5.0))
    assert c.arrays["b"].shape == (2, 0) and c.arrays["c"].shape == () and int(c.arrays["c"]) == 3
