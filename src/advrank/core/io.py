"""Files: atomic writes, strict JSON, content hashes and an exclusive lock per output.

Every long job writes through these (via :mod:`advrank.experiments.store` or the checkpoint
code): a crash mid-write leaves the previous file intact, JSON never holds NaN or Infinity,
and two processes never write the same output at once.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from advrank.errors import AdvrankError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers never see a half-written file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise AdvrankError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; results are for everyone
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise AdvrankError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _find_non_finite(obj: Any, where: str = "") -> str | None:
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "(top level)"
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _find_non_finite(v, f"{where}.{k}" if where else str(k))
            if found:
                return found
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = _find_non_finite(v, f"{where}[{i}]")
            if found:
                return found
    return None


def strict_json(obj: Any, indent: int | None = None) -> str:
    """``json.dumps`` that refuses NaN and Infinity (not JSON) with the offending key named."""
    bad = _find_non_finite(obj)
    if bad is not None:
        raise AdvrankError(f"non-finite number at {bad}: the computation produced NaN or "
                           "Infinity, so no result was written")
    return json.dumps(obj, indent=indent, allow_nan=False)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, strict_json(obj, indent=2) + "\n")


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def strict_loads(text: str) -> Any:
    """``json.loads`` that refuses NaN and Infinity (which Python's json accepts by default)."""
    return json.loads(text, parse_constant=_no_constant)


def read_json(path: str | Path, what: str = "file") -> Any:
    """Parse a JSON file strictly, with one readable error for unreadable or invalid content."""
    path = Path(path)
    try:
        return strict_loads(path.read_text())
    except OSError as exc:
        raise AdvrankError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise AdvrankError(f"{what} {path} is not valid JSON: {exc}") from None


def file_sha256(path: str | Path, length: int | None = None) -> str:
    """Hex SHA-256 of a file (identifies a checkpoint by content, whatever its path);
    ``length`` truncates the hex digest."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length]


_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | \
    getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def _open_lock(folder_fd: int, name: str, lock_path: Path, what: str) -> int:
    """Open (creating if needed) the lock file ``name`` inside the open folder ``folder_fd``.

    Never follows a symlink (``O_NOFOLLOW``: whoever can write a shared output folder could
    otherwise point the lock at any file this process may write, which would be truncated)
    and never blocks on a FIFO (``O_NONBLOCK``). Anything but a plain file with one link is
    refused, so a hard link to someone's file is left as it is too."""
    try:
        fd = os.open(name, _LOCK_FLAGS, 0o666, dir_fd=folder_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENXIO, errno.EISDIR):
            raise AdvrankError(f"{what}: the lock path {lock_path} is not a plain file (a "
                               "symlink, folder or special file); remove it") from None
        raise AdvrankError(f"cannot write {what} ({lock_path}): {exc.strerror or exc}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise AdvrankError(f"{what}: the lock path {lock_path} is not a plain file of its own "
                           "(a special file or a hard link to another file); remove it")
    return fd


def _same_file(fd: int, folder_fd: int, name: str) -> bool:
    """Whether ``name`` in the folder is still the file open as ``fd`` (not removed or
    replaced by the writer that held the lock before us)."""
    try:
        now = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)


def _take_lock(folder_fd: int, name: str, lock_path: Path, what: str) -> int:
    """The fd of the lock file, flock-ed by this process (see :func:`exclusive`)."""
    import fcntl

    for _ in range(100):  # each retry means a writer finished in between: bounded, not a spin
        fd = _open_lock(folder_fd, name, lock_path, what)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise AdvrankError(f"{what} is being written by another advrank process "
                                   f"(lock {lock_path}); wait for it or use another output "
                                   "path") from None
            raise AdvrankError(f"cannot lock {what} ({lock_path}): "
                               f"{exc.strerror or exc}") from None
        if _same_file(fd, folder_fd, name):
            return fd
        os.close(fd)  # we locked a file its holder removed on leaving: lock the current one
    raise AdvrankError(f"cannot lock {what} ({lock_path}): it keeps being replaced")


@contextlib.contextmanager
def exclusive(lock_path: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (created if needed) for the ``with`` block.

    A second process asking for the same lock is refused at once with a clear error, instead
    of both writing the same output. The lock is the kernel's (``flock``): it goes away with
    the process, so a killed run never leaves a stale lock behind (only a harmless empty-ish
    file, which the next run reuses). The lock file is created inside its folder only and never
    through a symlink (see :func:`_open_lock`); a finished run removes it.

    Removing a flock-ed file is safe here because the holder removes it *before* releasing,
    and whoever takes a lock checks afterwards that the path still names the file it locked
    (retrying otherwise): a process that opened the old file just before its removal cannot
    end up holding a lock on a file no one else can see.
    """
    lock_path = Path(lock_path)
    folder = lock_path.parent if str(lock_path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        folder_fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        raise AdvrankError(f"cannot write {what} ({lock_path}): {exc.strerror or exc}") from None
    try:
        fd = _take_lock(folder_fd, lock_path.name, lock_path, what)
        try:
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError:
                pass  # the pid is only informative
            yield
        finally:
            with contextlib.suppress(OSError):  # still ours: we hold the lock on this very file
                os.unlink(lock_path.name, dir_fd=folder_fd)
            os.close(fd)  # closing releases the flock, after the removal (see above)
    finally:
        os.close(folder_fd)


def first_missing(folder: Path) -> Path | None:
    """The outermost of ``folder`` and its parents that does not exist yet (None: it does):
    what a run creates, and removes again with :func:`remove_empty_tree` when it is refused."""
    missing = None
    for path in (folder, *folder.parents):
        if path.exists() or path.is_symlink():
            return missing
        missing = path
    return missing


def remove_empty_tree(root: Path) -> None:
    """Remove ``root`` and the folders below it that hold no file at all (links are not
    followed; a folder that holds anything stays)."""
    for path, _folders, files in os.walk(root, topdown=False):
        if not files:
            with contextlib.suppress(OSError):  # not empty (a folder kept below): keep it
                os.rmdir(path)


def check_writable_dir(path: str | Path, what: str = "output folder") -> Path:
    """Refuse an output folder that is a file or cannot be created/written, before any work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AdvrankError(f"{what} {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AdvrankError(f"cannot create {what} {path}: {exc.strerror or exc}") from None
    try:  # really create a file: permissions, read-only mounts and /proc-like folders alike
        fd, probe = tempfile.mkstemp(dir=path, prefix=".advrank-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise AdvrankError(f"{what} {path} is not writable: {exc.strerror or exc}") from None
    return path


def check_writable_file(path: str | Path, what: str = "output file") -> Path:
    """Refuse an output file path that is a folder or whose folder cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise AdvrankError(f"{what} {path} is a folder; give a file path")
    parent = path.parent if str(path.parent) else Path(".")
    check_writable_dir(parent, f"folder of {what}")
    if path.exists() and not os.access(path, os.W_OK):
        raise AdvrankError(f"{what} {path} is not writable")
    return path
