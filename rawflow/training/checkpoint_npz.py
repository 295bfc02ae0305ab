"""Version-1 checkpoints (a stored ``.npz``, written by rawflow before version 2), validated like version 2.

Layout: an uncompressed zip of ``.npy`` members ``"<section>/<tree path>.npy"`` and ``__meta__.npy``
(UTF-8 JSON as ``uint8``: format, version 1, step, config, and ``arrays``: name, shape, dtype and
SHA-256 of each member); the zip comment is the SHA-256 of every byte before it.

Before any array is read, every member must be a stored (never compressed) ``.npy`` whose header
declares a plain dtype and exactly the bytes the member holds, all of them within ``max_bytes``:
a deflated member cannot declare a gigabyte and make the reader allocate it. Version-1 files
recorded leaves only: an empty subtree (a ``StandardNormal`` prior's ``{}``) is not in them, and
:mod:`rawflow.app.runs` restores such subtrees from the model when it loads a run.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from typing import IO, Any, Callable

import numpy as np

_DIGEST_LEN = 64


def _npy_header(member: IO[bytes]) -> tuple[np.dtype, tuple, int]:
    """``(dtype, shape, header length)`` of an ``.npy`` stream, without reading its data."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise ValueError(f".npy version {version} is not supported")
    if fortran:
        raise ValueError("Fortran-order arrays are not written by rawflow")
    return dtype, shape, member.tell()


def load_v1(path: str, f: IO[bytes], size: int, max_bytes: int | None, error: type[Exception],
            validate_manifest: Callable) -> dict[str, Any]:
    """The trees of the version-1 file ``f`` (``size`` bytes); ``validate_manifest`` checks the manifest's
    schema as :func:`rawflow.training.checkpoint.validate_manifest` does; problems raise ``error``."""
    def fail(message: str):
        return error(f"checkpoint {path}: {message}")

    raw = f.read()
    if len(raw) != size:
        raise fail("the file changed while it was read")
    members: dict[str, np.ndarray] = {}
    total = 0
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            infos = z.infolist()
            for info in infos:
                if not info.filename.endswith(".npy"):
                    raise fail(f"member {info.filename!r} is not an .npy array")
                if info.compress_type != zipfile.ZIP_STORED:
                    raise fail(f"member {info.filename!r} is compressed; rawflow checkpoints never are")
                if info.file_size > size:
                    raise fail(f"member {info.filename!r} declares {info.file_size} bytes, the file holds {size}")
            bad = z.testzip()  # CRC-32 of every (stored, so bounded by the file) member
            if bad is not None:
                raise fail(f"member {bad!r} fails its CRC check (corrupted)")
            for info in infos:
                with z.open(info) as member:
                    dtype, shape, header_len = _npy_header(member)
                    if dtype.hasobject or dtype.fields is not None:
                        raise fail(f"member {info.filename!r} has dtype {dtype}; only plain arrays are stored")
                    declared = math.prod(shape) * dtype.itemsize
                    if declared != info.file_size - header_len:
                        raise fail(f"member {info.filename!r} declares {dtype}{list(shape)} = {declared} bytes "
                                   f"but holds {info.file_size - header_len}")
                    total += declared
                    if max_bytes is not None and total > max_bytes:
                        raise fail(f"the arrays need more than the limit of {max_bytes} bytes")
                    data = member.read(declared)
                    a = np.frombuffer(bytearray(data), dtype=dtype, count=math.prod(shape)).reshape(shape)
                    members[info.filename[:-4]] = a
    except error:
        raise
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError, SyntaxError) as exc:
        raise fail(f"unreadable, truncated or corrupted ({type(exc).__name__}: {exc})") from None

    if "__meta__" not in members:
        raise fail("no '__meta__' manifest; not a rawflow checkpoint")
    try:
        meta = json.loads(members.pop("__meta__").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise fail(f"the manifest is not valid JSON ({exc})") from None
    step, config = validate_manifest(meta, fail, 1, extra={"arrays": list})
    listed = {}
    for i, entry in enumerate(meta["arrays"]):
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("dtype"), str)
                and isinstance(entry.get("sha256"), str) and isinstance(entry.get("shape"), list)):
            raise fail(f"manifest: arrays[{i}] is not {{name, shape, dtype, sha256}}")
        listed[entry["name"]] = entry
    if set(listed) != set(members):
        missing, extra = sorted(set(listed) - set(members)), sorted(set(members) - set(listed))
        raise fail(f"arrays do not match the manifest (missing {missing[:5]}, unexpected {extra[:5]})")
    out: dict[str, Any] = {"step": step, "config": config}
    for name, a in members.items():
        entry = listed[name]
        if list(a.shape) != entry["shape"] or a.dtype.str != entry["dtype"]:
            raise fail(f"'{name}' is {a.dtype.str}{list(a.shape)}, manifest says {entry['dtype']}{entry['shape']}")
        if hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() != entry["sha256"]:
            raise fail(f"'{name}' fails its SHA-256 check (corrupted)")
        section, _, leaf_path = name.partition("/")
        if not section or not leaf_path or "" in leaf_path.split("/"):
            raise fail(f"manifest: array name {name!r} is not '<section>/<path>'")
        node = out.setdefault(section, {})
        if not isinstance(node, dict) or section in ("step", "config"):
            raise fail(f"manifest: array name {name!r} clashes with '{section}'")
        *parents, leaf = leaf_path.split("/")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise fail(f"manifest: '{name}' lies under a leaf")
        if leaf in node:
            raise fail(f"manifest: '{name}' clashes with a subtree")
        node[leaf] = a
    body, stored = raw[:-_DIGEST_LEN], raw[-_DIGEST_LEN:]
    if hashlib.sha256(body).hexdigest().encode("ascii") != stored:
        raise fail("fails its whole-file SHA-256 check (corrupted or truncated: a byte changed in the zip's "
                   "headers or directory)")
    return out
