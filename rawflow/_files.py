"""Atomic file writes whose temporary files are swept when a writer was killed.

:func:`atomic_write` writes a file next to its target under a name only this module uses
(``.<target>.<pid>.<random>.rawflow-tmp``), holds an exclusive ``flock`` on it while it writes,
``fsync``-s it, renames it over the target (``os.replace`` is atomic on POSIX) and ``fsync``-s the
folder. A crash leaves the previous target intact and, at worst, one temporary file.

Before each write, :func:`sweep_stale_temps` removes the temporary files of writers that died in
that folder. A file is removed only when it is provably ours and provably dead:

* its name has this module's pattern, it is a regular file, not a link;
* nobody holds its lock: the kernel drops an ``flock`` when its holder exits, however it exits
  (``kill -9`` included), so a live writer in any process keeps its file;
* it has not changed for :data:`STALE_AFTER_S` seconds, which covers the instant between a writer
  creating the file and locking it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import time
from typing import Callable, IO

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; temp files are then never swept
    fcntl = None

TEMP_SUFFIX = ".rawflow-tmp"
_TEMP_NAME = re.compile(r"^\..+\.\d+\.[0-9a-f]{16}" + re.escape(TEMP_SUFFIX) + r"$")
STALE_AFTER_S = 10.0


def temp_name(target: str) -> str:
    """A fresh temporary path next to ``target`` with this module's pattern."""
    folder, base = os.path.split(os.path.abspath(target))
    return os.path.join(folder, f".{base}.{os.getpid()}.{secrets.token_hex(8)}{TEMP_SUFFIX}")


def is_temp_name(name: str) -> bool:
    return bool(_TEMP_NAME.match(name))


def _try_lock(fd: int) -> bool:
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def sweep_stale_temps(folder: str, *, stale_after_s: float = STALE_AFTER_S) -> list[str]:
    """Remove the temporary files of dead writers in ``folder``; returns the paths removed."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        if not is_temp_name(name):
            continue
        path = os.path.join(folder, name)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:  # gone already, a link, or unreadable: not ours to judge
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < stale_after_s or not _try_lock(fd):
                continue
            # Locked by us now: no writer holds it. Remove it only if the name still names this file.
            try:
                same = os.stat(path, follow_symlinks=False)
            except OSError:
                continue
            if (same.st_dev, same.st_ino) == (st.st_dev, st.st_ino):
                os.unlink(path)
                removed.append(path)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


def fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None], *, sweep: bool = True) -> None:
    """Write ``path`` atomically: ``write(f)`` fills a locked temporary file that then replaces it.

    The folder must exist. ``sweep`` first removes stale temporary files of killed writers there.
    On any error the temporary file is removed and the target is left as it was.
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if sweep:
        sweep_stale_temps(folder)
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None
    try:
        _try_lock(fd)
        with os.fdopen(os.dup(fd), "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:  # a write's ENOSPC/EIO names no file
            raise OSError(exc.errno, exc.strerror, path) from exc
        raise
    finally:
        os.close(fd)  # releases the lock, after the rename
    fsync_folder(folder)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, sweep: bool = True) -> None:
    atomic_write(path, lambda f: f.write(data), sweep=sweep)


def atomic_write_text(path: str | os.PathLike, text: str, *, sweep: bool = True) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), sweep=sweep)


def check_writable(path: str | os.PathLike, what: str = "output") -> None:
    """Raise :class:`OSError` (naming ``path``) unless a file can be created at ``path`` now.

    Run before long work so that a result is never computed only to be lost: the folder must
    exist and accept a new file (permissions, read-only filesystems, ``FILE/sub``, ``''``), and
    ``path`` must not be a folder. The probe is a temporary file, removed at once.
    """
    path = os.fspath(path)
    if path == "":
        raise OSError(errno.ENOENT, f"empty {what} path", path)
    if os.path.isdir(path):
        raise OSError(errno.EISDIR, f"{what} is a folder", path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OSError(errno.ENOTDIR if os.path.exists(folder) else errno.ENOENT,
                      "a parent of it is not a folder" if os.path.exists(folder) else "its folder does not exist", path)
    probe = temp_name(path)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None
    os.close(fd)
    os.unlink(probe)
