"""One array from a ``.npy`` or ``.npz`` file, never through pickle (the data loaders' shared reader)."""

from __future__ import annotations

import os

import numpy as np


def _names(names: list[str], shown: int = 5) -> str:
    """``"arrays 'a', 'b'"`` or, for many, the first few and the count (a file may hold thousands)."""
    if not names:
        return "no arrays"
    listed = ", ".join(repr(n) for n in names[:shown])
    return f"{len(names)} arrays ({listed}, …)" if len(names) > shown else f"arrays {listed}"


def read_array(path: str | os.PathLike, key: str | None = None, *, owner: str, key_option: str = "key=",
               error: type[Exception] = ValueError) -> np.ndarray:
    """The array in a ``.npy`` file, or the one named ``key`` (or the only one) in a ``.npz``.

    Every failure raises ``error`` with a message starting ``"{owner}: "``: a missing file, one
    NumPy cannot read (object arrays need pickle, which is refused), an ``.npz`` with several
    arrays and no ``key`` (the message names ``key_option``), or a ``key`` it does not hold.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise error(f"{owner}: no such file {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise error(f"{owner}: cannot read {path} ({type(exc).__name__}: {exc})") from exc
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            names = loaded.files
            if key is None:
                if len(names) != 1:
                    raise error(f"{owner}: {path} holds {_names(names)}; choose one with {key_option}")
                key = names[0]
            if key not in names:
                raise error(f"{owner}: {path} has no array {key!r} (it has {_names(names)})")
            return loaded[key]
    return loaded
