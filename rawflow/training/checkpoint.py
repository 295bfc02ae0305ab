"""Checkpoints that load without pickle, are written atomically, and refuse corrupt files.

Format: one ``.npz`` (uncompressed zip of ``.npy`` members), read with ``allow_pickle=False``, so
nothing in a file is ever executed. Members:

* ``"<section>/<tree path>"`` — one array per leaf of each saved tree (e.g. ``params/flow/0/net/1/w``);
* ``"__meta__"`` — UTF-8 JSON as a ``uint8`` array: format version, the JSON config, the step, the
  tree structure (path, shape, dtype) and the SHA-256 of every member's bytes.

The zip's comment is the SHA-256 (hex) of every byte before it, so a flip anywhere — array data,
``.npy`` headers, or the zip's own bookkeeping (local-header copies of CRCs and sizes, timestamps,
the central directory) — is caught, not only flips inside members.

Writing goes to a temporary file in the target directory, is flushed and ``fsync``-ed, then renamed
over the target (``os.replace`` is atomic on POSIX), so a crash mid-write leaves the previous
checkpoint intact. Loading checks the zip CRCs, the manifest, every member's digest, shapes and dtypes,
then the whole-file digest, and raises :class:`CheckpointError` (a ``ValueError``) naming the file and
the problem.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from typing import Any

import numpy as np

from .. import tree
from .._array import to_numpy

FORMAT = "rawflow-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted or not a rawflow checkpoint."""


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _unflatten(items: dict[str, np.ndarray]) -> dict:
    out: dict = {}
    for path, value in items.items():
        node = out
        *parents, leaf = path.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


_DIGEST_LEN = 64  # hex SHA-256 in the zip comment


def _serialize(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` (stored, ``.npy`` members) whose zip comment is the SHA-256 of all bytes before it."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, a in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(a), allow_pickle=False)
        zf.comment = b"0" * _DIGEST_LEN
    raw = buf.getvalue()
    body = raw[:-_DIGEST_LEN]
    return body + hashlib.sha256(body).hexdigest().encode("ascii")


def save_checkpoint(path: str | os.PathLike, trees: dict[str, dict], config: dict, step: int) -> None:
    """Atomically write ``trees`` (e.g. ``{"params": ..., "optimizer": ...}``), ``config`` and ``step``."""
    path = os.fspath(path)
    arrays: dict[str, np.ndarray] = {}
    manifest = []
    for section, t in trees.items():
        if "/" in section or section == "__meta__":
            raise ValueError(f"checkpoint: invalid section name {section!r}")
        for leaf_path, leaf in tree.leaves(t):
            a = to_numpy(leaf)
            if a.dtype.kind not in "fciub":
                raise ValueError(f"checkpoint: leaf '{section}/{leaf_path}' has unsupported dtype {a.dtype}")
            name = f"{section}/{leaf_path}"
            arrays[name] = a
            manifest.append({"name": name, "shape": list(a.shape), "dtype": a.dtype.str, "sha256": _digest(a)})
    meta = {"format": FORMAT, "version": VERSION, "step": int(step), "config": config, "arrays": manifest}
    meta_bytes = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8)

    raw = _serialize({"__meta__": meta_bytes, **arrays})

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and verify a checkpoint: ``{"step", "config", <section>: tree, ...}``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        with open(path, "rb") as f:
            raw = f.read()
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            bad = z.testzip()  # checks every member's CRC-32
            if bad is not None:
                raise CheckpointError(f"checkpoint {path}: member {bad!r} fails its CRC check (corrupted)")
        with np.load(io.BytesIO(raw), allow_pickle=False) as data:
            members = {name: data[name] for name in data.files}
    except CheckpointError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError (pickled object), EOFError, OSError...
        raise CheckpointError(f"checkpoint {path}: unreadable, truncated or corrupted ({type(exc).__name__}: {exc})") from exc

    if "__meta__" not in members:
        raise CheckpointError(f"checkpoint {path}: no '__meta__' manifest; not a rawflow checkpoint")
    try:
        meta = json.loads(members.pop("__meta__").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path}: manifest is not valid JSON ({exc})") from exc
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {path}: format {meta.get('format')!r} version {meta.get('version')!r}, "
            f"expected {FORMAT!r} version {VERSION}"
        )
    listed = {entry["name"]: entry for entry in meta["arrays"]}
    if set(listed) != set(members):
        missing = sorted(set(listed) - set(members))
        extra = sorted(set(members) - set(listed))
        raise CheckpointError(f"checkpoint {path}: arrays do not match the manifest (missing {missing}, unexpected {extra})")
    sections: dict[str, dict[str, np.ndarray]] = {}
    for name, a in members.items():
        entry = listed[name]
        if list(a.shape) != entry["shape"] or a.dtype.str != entry["dtype"]:
            raise CheckpointError(
                f"checkpoint {path}: '{name}' is {a.dtype.str}{list(a.shape)}, manifest says "
                f"{entry['dtype']}{entry['shape']}"
            )
        if _digest(a) != entry["sha256"]:
            raise CheckpointError(f"checkpoint {path}: '{name}' fails its SHA-256 check (corrupted)")
        section, _, leaf_path = name.partition("/")
        sections.setdefault(section, {})[leaf_path] = a
    body, stored = raw[:-_DIGEST_LEN], raw[-_DIGEST_LEN:]
    if hashlib.sha256(body).hexdigest().encode("ascii") != stored:
        raise CheckpointError(
            f"checkpoint {path}: fails its whole-file SHA-256 check (corrupted or truncated: a byte changed "
            "in the zip's headers or directory)"
        )
    out: dict[str, Any] = {"step": meta["step"], "config": meta["config"]}
    for section, items in sections.items():
        out[section] = _unflatten(items)
    return out
