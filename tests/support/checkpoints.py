"""Crafting checkpoint files: the version-1 writer (a stored ``.npz``, as rawflow shipped it before
version 2), to prove such files still load and to craft malformed ones; and :func:`resign`, a
version-2 file with any manifest and arrays and a correct digest, so only validation can refuse it."""

import hashlib
import io
import json
import zipfile

import numpy as np

from rawflow import tree
from rawflow.training import tensorfile

_DIGEST_LEN = 64


def serialize(arrays: dict) -> bytes:
    """A stored ``.npz`` of ``.npy`` members whose zip comment is the SHA-256 of all bytes before it."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, a in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(a), allow_pickle=False)
        zf.comment = b"0" * _DIGEST_LEN
    body = buf.getvalue()[:-_DIGEST_LEN]
    return body + hashlib.sha256(body).hexdigest().encode("ascii")


def members(trees: dict, config, step: int, meta_edit=None) -> dict:
    """The members of a version-1 file; ``meta_edit(meta)`` may change the manifest first."""
    arrays, manifest = {}, []
    for section, t in trees.items():
        for leaf_path, a in tree.leaves(t):
            name = f"{section}/{leaf_path}"
            arrays[name] = a
            manifest.append({"name": name, "shape": list(a.shape), "dtype": a.dtype.str,
                             "sha256": hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()})
    meta = {"format": "rawflow-checkpoint", "version": 1, "step": step, "config": config, "arrays": manifest}
    if meta_edit is not None:
        meta = meta_edit(meta)
    return {"__meta__": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8), **arrays}


def save_v1(path, trees: dict, config, step: int, meta_edit=None) -> None:
    with open(path, "wb") as f:
        f.write(serialize(members(trees, config, step, meta_edit)))


def resign(path, arrays: dict, manifest) -> None:
    """A version-2 file holding ``arrays`` and ``manifest`` (any JSON value) with a correct digest."""
    meta = json.dumps(manifest)
    entries, _ = tensorfile.layout(arrays)
    h = hashlib.sha256(tensorfile.header_bytes(entries, {"rawflow": meta, "rawflow_sha256": "0" * 64}))
    for name in entries:
        h.update(np.ascontiguousarray(arrays[name]).tobytes())
    with open(path, "wb") as f:
        tensorfile.write(f, arrays, {"rawflow": meta, "rawflow_sha256": h.hexdigest()})


def contents(path):
    """``(entries, metadata, header bytes, data offset)`` of a version-2 file, without validation."""
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    metadata = header.pop("__metadata__")
    return header, metadata, raw[:8 + n], 8 + n
