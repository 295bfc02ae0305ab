"""What keeps the command line from losing data: run-folder locks, overwrite refusal, output checks.

* :func:`run_lock` — an exclusive ``flock`` on ``DIR/.rawflow.lock`` while a process trains in
  ``DIR``. The kernel releases it when the process exits, however it exits, so a crashed run never
  leaves a stale lock; a second process is refused with :class:`FolderBusy` naming the holder.
* :func:`check_new_output` — ``--out FILE``: writable now (before any long work), not a folder,
  not a special file, not one of a run's own files or its data (never, even with ``--force``), and
  not an existing file unless ``force``.
* :func:`check_fresh_run_folder` — ``train --out DIR`` without ``--resume`` writes only into a
  folder that is absent, empty, or an earlier rawflow run that never wrote a checkpoint.
* Atomic writes (:func:`write_json`, :func:`write_with`) through :mod:`rawflow._files`.

Every refusal is an :class:`OutputError` (an ``OSError`` subclass carrying the path) so the command
line prints it as one line with exit status 2, like any other ``OSError``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
from typing import IO, Callable, Iterator

from .._files import atomic_write, check_writable, is_temp_name

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK = ".rawflow.lock"
#: the files a run folder holds (the checkpoint's legacy name included); ``sample`` and
#: ``interpolate`` add their default outputs
RUN_FILES = ("config.json", "checkpoint.safetensors", "checkpoint.npz", "metrics.json", "loss.png")
RUN_OUTPUTS = ("samples.png", "interpolation.png")


class OutputError(OSError):
    """An output that cannot or must not be written; ``str()`` is one line naming the path."""

    def __init__(self, path: str, message: str, code: int = errno.EEXIST):
        super().__init__(code, message, path)

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


class FolderBusy(OutputError):
    """Another process holds the run folder's lock."""


# ------------------------------------------------------------------------------------ locking
@contextlib.contextmanager
def run_lock(folder: str) -> Iterator[None]:
    """Hold ``folder``'s lock (creating the folder) for the duration of the block."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
                raise FolderBusy(folder, f"another rawflow process (pid {holder}) is using this run folder; "
                                         "wait for it to finish or choose another --out", errno.EBUSY) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (deleting it would race with a new holder)


# ----------------------------------------------------------------------------- output checks
def is_run_folder(folder: str) -> bool:
    """Whether ``folder`` holds a rawflow run config."""
    try:
        with open(os.path.join(folder, "config.json")) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and cfg.get("format") == "rawflow-run"


def _protected(path: str, protect: tuple[str, ...]) -> str | None:
    """Why ``path`` must never be written (a run's own file, or data a run trains on), or ``None``."""
    real = os.path.realpath(path)
    folder, name = os.path.split(real)
    if (name in RUN_FILES or name == LOCK) and is_run_folder(folder):
        return f"it is a file of the run in {folder}; rawflow never writes over a run's own files"
    for p in protect:
        if p and os.path.realpath(p) == real:
            return "it is the run's data; rawflow never writes over it"
    return None


def check_new_output(path: str, *, force: bool, option: str = "--out", protect: tuple[str, ...] = ()) -> None:
    """Refuse (with :class:`OutputError`) an output file that must not or cannot be written now."""
    why = _protected(path, protect) if path else None
    if why:
        raise OutputError(path, f"{option}: {why}", errno.EPERM)
    if os.path.lexists(path):
        if not os.path.isfile(path) or os.path.islink(path):
            raise OutputError(path, f"{option}: exists and is not a regular file", errno.EEXIST)
        if not force:
            raise OutputError(path, f"{option}: exists; pass --force to replace it", errno.EEXIST)
    check_writable(path, option)


def check_fresh_run_folder(folder: str) -> None:
    """A new run may start in ``folder`` only if it is absent, empty, or an unfinished rawflow run
    (``config.json`` but no checkpoint) holding nothing but a run's files."""
    if not os.path.lexists(folder):
        return
    if not os.path.isdir(folder):
        raise OutputError(folder, "--out: exists and is not a folder", errno.ENOTDIR)
    names = [n for n in os.listdir(folder) if n != LOCK and not is_temp_name(n)]
    if not names:
        return
    if any(n.startswith("checkpoint.") for n in names) and is_run_folder(folder):
        raise OutputError(folder, "already holds a run; use --resume to continue it or choose another --out")
    foreign = sorted(set(names) - set(RUN_FILES) - set(RUN_OUTPUTS))
    if foreign or not is_run_folder(folder):
        shown = ", ".join(foreign[:5] or names[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputError(folder, f"--out: holds files rawflow did not write ({shown}); "
                                  "choose an empty or new folder")


def check_output_folder(folder: str, *, force: bool, option: str = "--out") -> None:
    """``demo --out DIR``: refuse a non-empty folder unless ``force``; then check it is writable."""
    if os.path.lexists(folder):
        if not os.path.isdir(folder):
            raise OutputError(folder, f"{option}: exists and is not a folder", errno.ENOTDIR)
        if any(not is_temp_name(n) for n in os.listdir(folder)) and not force:
            raise OutputError(folder, f"{option}: exists and is not empty (an earlier demo?); pass --force to "
                                      "replace its results, or choose another folder")
    else:
        parent = os.path.dirname(os.path.abspath(folder))
        if os.path.exists(parent) and not os.path.isdir(parent):
            raise OutputError(folder, f"{option}: a parent of it is not a folder", errno.ENOTDIR)
        if not os.path.isdir(parent):
            raise OutputError(folder, f"{option}: its parent folder does not exist", errno.ENOENT)
    os.makedirs(folder, exist_ok=True)
    check_writable(os.path.join(folder, "metrics.json"), option)


# ------------------------------------------------------------------------------------ writing
def _json_safe(obj):
    """Non-finite floats become ``null`` (strict JSON has no NaN/Infinity); NumPy scalars → Python."""
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def json_text(obj) -> str:
    """Strict JSON (``allow_nan=False``): NaN/Inf are written as ``null``."""
    return json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n"


def write_json(path: str, obj) -> None:
    """Atomic, strict JSON write (temporary file, then rename)."""
    text = json_text(obj).encode("utf-8")
    atomic_write(path, lambda f: f.write(text))


def write_with(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Atomic write of whatever ``write(f)`` puts in a binary file (an ``.npz``, a PNG)."""
    atomic_write(path, write)
