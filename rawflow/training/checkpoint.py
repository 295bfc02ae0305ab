"""Checkpoints: the exact trees, pickle-free, written atomically, validated before they are trusted.

Format (version 2): a safetensors file (:mod:`.tensorfile`), so PyTorch, JAX and NumPy users load
the arrays directly (``safetensors.numpy.load_file(path)``), named ``"<section>/<tree path>"``
(e.g. ``params/flow/0/net/1/w``). Its ``__metadata__`` holds two strings:

* ``"rawflow"`` — JSON: format and version, the step, the JSON config, and each section's tree
  *skeleton* (nested objects, ``null`` at the leaves), so empty subtrees (a ``StandardNormal``
  prior's ``{}``, a ``Squeeze``'s) come back exactly as they were saved;
* ``"rawflow_sha256"`` — the SHA-256 of the header (with this digest written as 64 zeros) and the
  whole data buffer.

The header must be byte-identical to the one its content gives (canonical JSON), so a byte flip
anywhere — length prefix, header, data — is refused: it breaks the header's parse or validation,
or changes the content and with it the digest.

Loading validates before it materialises: the header's declared sizes against the bytes the file
holds and against ``max_bytes`` before anything is allocated (:func:`.tensorfile.read`), then the
manifest's schema (every key, type and value; :class:`CheckpointError` for anything else), then
the digest. Version-1 files (a stored ``.npz``, which this module wrote before) still load
(:mod:`.checkpoint_npz`), with the same validation; they recorded leaves only, so their empty
subtrees are not restored.

Writing goes through :func:`rawflow._files.atomic_write`: a locked temporary file in the target's
folder, ``fsync``, rename over the target, so a crash leaves the previous checkpoint intact; the
temporary files of killed writers in that folder are swept at the next save.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np

from .. import tree
from .._array import to_numpy
from .._files import atomic_write
from . import tensorfile

FORMAT = "rawflow-checkpoint"
VERSION = 2
_ZERO_DIGEST = "0" * 64


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted, too large or not a rawflow checkpoint."""


def _skeleton(t: dict, where: str) -> dict:
    """``t`` with ``None`` at the leaves; keys must be non-empty strings without ``/``."""
    if not isinstance(t, dict):
        raise ValueError(f"checkpoint: '{where}' is a {type(t).__name__}, expected a dict (a parameter tree)")
    out = {}
    for key, value in t.items():
        if not isinstance(key, str) or not key or "/" in key:
            raise ValueError(f"checkpoint: key {key!r} under '{where}' must be a non-empty string without '/'")
        out[key] = _skeleton(value, f"{where}/{key}") if isinstance(value, dict) else None
    return out


def _skeleton_leaves(s: dict, prefix: str) -> list[str]:
    out = []
    for key, value in s.items():
        path = f"{prefix}/{key}"
        out.extend(_skeleton_leaves(value, path) if isinstance(value, dict) else [path])
    return out


def _fill(s: dict, prefix: str, arrays: dict[str, np.ndarray]) -> dict:
    return {k: _fill(v, f"{prefix}/{k}", arrays) if isinstance(v, dict) else arrays[f"{prefix}/{k}"]
            for k, v in s.items()}


def _digest(header: bytes, data) -> str:
    h = hashlib.sha256(header)
    h.update(data)
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, trees: dict[str, dict], config: Any, step: int) -> None:
    """Atomically write ``trees`` (e.g. ``{"params": ..., "optimizer": ...}``), ``config`` (JSON) and ``step``.

    Leaves may be NumPy or CuPy arrays of bool, integer or float dtypes (stored little-endian).
    """
    path = os.fspath(path)
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"checkpoint: step must be a non-negative integer, got {step!r}")
    skeletons, arrays = {}, {}
    for section, t in trees.items():
        if not isinstance(section, str) or not section or "/" in section:
            raise ValueError(f"checkpoint: invalid section name {section!r}")
        skeletons[section] = _skeleton(t, section)
        for leaf_path, leaf in tree.leaves(t):
            a = np.asarray(to_numpy(leaf))
            if tensorfile.dtype_code(a.dtype) is None:
                raise ValueError(f"checkpoint: leaf '{section}/{leaf_path}' has unsupported dtype {a.dtype} "
                                 f"(stored: {', '.join(np.dtype(v).name for v in tensorfile.CODES.values())})")
            arrays[f"{section}/{leaf_path}"] = np.asarray(a, dtype=a.dtype.newbyteorder("<"), order="C")
    manifest = {"format": FORMAT, "version": VERSION, "step": int(step), "config": config, "trees": skeletons}
    try:
        meta = json.dumps(manifest, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint: the config is not strict JSON ({exc})") from exc
    entries, _ = tensorfile.layout(arrays)
    h = hashlib.sha256(tensorfile.header_bytes(entries, {"rawflow": meta, "rawflow_sha256": _ZERO_DIGEST}))
    for name in entries:
        h.update(arrays[name].reshape(-1).view(np.uint8))
    metadata = {"rawflow": meta, "rawflow_sha256": h.hexdigest()}

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: tensorfile.write(f, arrays, metadata))


def load_checkpoint(path: str | os.PathLike, *, max_bytes: int | None = None) -> dict[str, Any]:
    """Read and verify a checkpoint: ``{"step", "config", <section>: tree, ...}``.

    ``max_bytes`` bounds the arrays' total size: a file declaring more is refused before anything
    is allocated (the file's own size always bounds it). Every problem raises :class:`CheckpointError`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            magic = f.read(4)
            f.seek(0)
            if magic == b"PK\x03\x04":
                from .checkpoint_npz import load_v1

                return load_v1(path, f, size, max_bytes, CheckpointError, validate_manifest)
            contents = tensorfile.read(f, size, max_bytes=max_bytes)
    except CheckpointError:
        raise
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path}: unreadable ({exc.strerror or exc})") from None
    return _from_contents(path, contents)


def _from_contents(path: str, c: tensorfile.Contents) -> dict[str, Any]:
    def fail(message: str):
        return CheckpointError(f"checkpoint {path}: {message}")

    if set(c.metadata) != {"rawflow", "rawflow_sha256"}:
        raise fail(f"no rawflow manifest in the metadata (keys {sorted(c.metadata)}); not a rawflow checkpoint")
    if tensorfile.header_bytes(c.entries, c.metadata) != c.header:
        raise fail("the header is not in canonical form (edited or corrupted)")
    zeroed = tensorfile.header_bytes(c.entries, {**c.metadata, "rawflow_sha256": _ZERO_DIGEST})
    if _digest(zeroed, c.data) != c.metadata["rawflow_sha256"]:
        raise fail("fails its SHA-256 check (corrupted)")
    try:
        meta = json.loads(c.metadata["rawflow"])
    except ValueError as exc:
        raise fail(f"the manifest is not valid JSON ({exc})") from None
    step, config = validate_manifest(meta, fail, VERSION, extra={"trees": dict})
    out: dict[str, Any] = {"step": step, "config": config}
    listed = []
    for section, skeleton in meta["trees"].items():
        _check_skeleton(skeleton, section, fail)
        listed.extend(_skeleton_leaves(skeleton, section))
    if sorted(listed) != sorted(c.arrays):
        missing, extra = sorted(set(listed) - set(c.arrays)), sorted(set(c.arrays) - set(listed))
        raise fail(f"arrays do not match the manifest (missing {missing[:5]}, unexpected {extra[:5]})")
    for section, skeleton in meta["trees"].items():
        out[section] = _fill(skeleton, section, c.arrays)
    return out


def _check_skeleton(s, where: str, fail) -> None:
    if not isinstance(s, dict):
        raise fail(f"manifest: tree '{where}' is {type(s).__name__}, expected an object")
    for key, value in s.items():
        if not key or "/" in key:
            raise fail(f"manifest: key {key!r} under '{where}' is empty or contains '/'")
        if value is not None:
            _check_skeleton(value, f"{where}/{key}", fail)


def validate_manifest(meta, fail, version: int, extra: dict) -> tuple[int, Any]:
    """``(step, config)`` from a manifest after checking its schema; ``fail(message)`` makes the error."""
    if not isinstance(meta, dict):
        raise fail(f"the manifest is {type(meta).__name__}, expected an object")
    if meta.get("format") != FORMAT or meta.get("version") != version:
        raise fail(f"format {meta.get('format')!r} version {meta.get('version')!r}, expected {FORMAT!r} "
                   f"version {version}")
    for key, kind in {"step": int, "config": object, **extra}.items():
        if key not in meta:
            raise fail(f"the manifest has no {key!r}")
        if not isinstance(meta[key], kind) or (kind is int and isinstance(meta[key], bool)):
            raise fail(f"manifest: {key!r} is {type(meta[key]).__name__} {meta[key]!r:.40}, expected {kind.__name__}")
    if meta["step"] < 0:
        raise fail(f"manifest: step {meta['step']} is negative")
    return meta["step"], meta["config"]
