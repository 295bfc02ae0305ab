"""The safetensors container, written and read without a third-party package, validated before use.

Layout (the format of Hugging Face's ``safetensors``, which PyTorch, JAX/Flax and NumPy users load
with ``safetensors.<framework>.load_file``)::

    8 bytes     N, the header's length (unsigned, little-endian)
    N bytes     UTF-8 JSON: {"__metadata__": {str: str, ...},
                             "<name>": {"dtype": "F64", "shape": [...], "data_offsets": [begin, end]}, ...}
                padded with spaces so that the data starts at a multiple of 8
    the rest    every array's bytes, little-endian, C order, back to back (offsets relative to here)

:func:`read` checks everything the header declares before it reads a byte of data or allocates an
array: the header's length against the file's and :data:`HEADER_LIMIT`; the JSON (no duplicate
keys); every entry's dtype, shape and offsets; that the offsets tile the data exactly
(``begin`` of each = ``end`` of the previous, sizes = ``prod(shape) · itemsize``, the last ``end``
= the bytes the file holds); and the total against the caller's ``max_bytes``. An uncompressed
format cannot declare more than it holds, so a file can never make the reader allocate more
than its own size. Arrays are then views of one buffer read from the file.

:func:`header_bytes` is canonical (sorted keys, no spaces, ASCII), so a reader can require a
header to be byte-identical to the one its content would produce: no two files with the same
content differ, which is what lets :mod:`rawflow.training.checkpoint` hash the content.
"""

from __future__ import annotations

import json
import math
from typing import IO, NamedTuple

import numpy as np

HEADER_LIMIT = 100 * 2**20  # bytes; the safetensors reference implementation's own limit
ALIGN = 8

#: safetensors dtype codes ↔ NumPy dtypes (little-endian). Complex and object arrays are not stored.
CODES = {"BOOL": "|b1", "U8": "|u1", "I8": "|i1", "U16": "<u2", "I16": "<i2", "U32": "<u4", "I32": "<i4",
         "U64": "<u8", "I64": "<i8", "F16": "<f2", "F32": "<f4", "F64": "<f8"}
_CODE_OF = {np.dtype(v): k for k, v in CODES.items()}


class Entry(NamedTuple):
    dtype: str          # safetensors code, e.g. "F64"
    shape: tuple
    begin: int
    end: int


def dtype_code(dtype) -> str | None:
    """The safetensors code of a NumPy dtype (either byte order), or ``None`` if it has none."""
    return _CODE_OF.get(np.dtype(dtype).newbyteorder("<"))


def layout(arrays: dict[str, np.ndarray]) -> tuple[dict[str, Entry], int]:
    """Entries for ``arrays`` (the widest dtypes first, so every array is aligned) and the data size."""
    entries, offset = {}, 0
    for name in sorted(arrays, key=lambda k: (-arrays[k].dtype.itemsize, k)):
        a = arrays[name]
        code = dtype_code(a.dtype)
        if code is None:
            raise ValueError(f"'{name}' has dtype {a.dtype}, which the format does not store")
        entries[name] = Entry(code, tuple(int(n) for n in a.shape), offset, offset + a.nbytes)
        offset += a.nbytes
    return entries, offset


def header_bytes(entries: dict[str, Entry], metadata: dict[str, str]) -> bytes:
    """The canonical length prefix and header for ``entries`` and ``metadata``."""
    obj: dict = {name: {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [e.begin, e.end]}
                 for name, e in entries.items()}
    obj["__metadata__"] = dict(metadata)
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()
    text += b" " * (-(8 + len(text)) % ALIGN)
    return len(text).to_bytes(8, "little") + text


def write(f: IO[bytes], arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write ``arrays`` (names → arrays) and ``metadata`` (str → str) to ``f``."""
    entries, _ = layout(arrays)
    f.write(header_bytes(entries, metadata))
    for name in entries:
        a = np.asarray(arrays[name], dtype=np.dtype(CODES[entries[name].dtype]), order="C")
        f.write(a.reshape(-1).view(np.uint8))


class Contents(NamedTuple):
    entries: dict[str, Entry]
    metadata: dict[str, str]
    header: bytes       # the length prefix and header as read
    data: bytearray     # the data buffer
    arrays: dict[str, np.ndarray]


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the header repeats the key {key!r}")
        out[key] = value
    return out


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _entry(name: str, spec) -> Entry:
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(f"header entry {name!r} is not {{dtype, shape, data_offsets}}")
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if dtype not in CODES:
        raise ValueError(f"'{name}': dtype {dtype!r} is not one of {', '.join(CODES)}")
    if not isinstance(shape, list) or not all(_is_int(n) and n >= 0 for n in shape):
        raise ValueError(f"'{name}': shape {shape!r} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(v) for v in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise ValueError(f"'{name}': data_offsets {offsets!r} are not [begin, end] with 0 ≤ begin ≤ end")
    size = math.prod(shape) * np.dtype(CODES[dtype]).itemsize
    if offsets[1] - offsets[0] != size:
        raise ValueError(f"'{name}': {dtype}{shape} needs {size} bytes, data_offsets span {offsets[1] - offsets[0]}")
    return Entry(dtype, tuple(shape), offsets[0], offsets[1])


def read(f: IO[bytes], file_size: int, *, max_bytes: int | None = None) -> Contents:
    """Read and validate a file of ``file_size`` bytes open at its start; :class:`ValueError` says why not."""
    prefix = f.read(8)
    if len(prefix) < 8:
        raise ValueError(f"{file_size} bytes: too short for a header (truncated)")
    n = int.from_bytes(prefix, "little")
    if n > HEADER_LIMIT or 8 + n > file_size:
        raise ValueError(f"the header declares {n} bytes; the file holds {file_size - 8} after its length "
                         f"(limit {HEADER_LIMIT}): truncated or not this format")
    raw = f.read(n)
    if len(raw) != n:
        raise ValueError("the header is truncated")
    try:
        header = json.loads(raw.decode("utf-8").rstrip(" "), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"the header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError("__metadata__ is not an object of strings")
    entries = {name: _entry(name, spec) for name, spec in header.items()}
    end = 0
    for name, e in sorted(entries.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if e.begin != end:
            raise ValueError(f"'{name}' starts at byte {e.begin} of the data, expected {end} (gaps or overlaps)")
        end = e.end
    held = file_size - 8 - n
    if end != held:
        raise ValueError(f"the header declares {end} bytes of data, the file holds {held} (truncated or padded)")
    if max_bytes is not None and end > max_bytes:
        raise ValueError(f"the arrays need {end} bytes, more than the limit of {max_bytes}")
    data = bytearray(end)
    if f.readinto(data) != end:
        raise ValueError("the data is shorter than the header declares (the file changed while read)")
    arrays = {name: np.frombuffer(data, dtype=CODES[e.dtype], count=math.prod(e.shape), offset=e.begin)
              .reshape(e.shape) for name, e in entries.items()}
    return Contents(entries, metadata, prefix + raw, data, arrays)
