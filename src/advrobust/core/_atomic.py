"""Atomic file writes that honour the user's umask and name the user's path on failure.

A file is written to a hidden temporary file beside the target and renamed over it, so a reader
(or a process killed mid-write) never sees half a file. ``tempfile.mkstemp`` creates the
temporary file with mode 0600 whatever the umask; :func:`atomic_write` gives it the mode a plain
``open(path, "w")`` would have (``0666 & ~umask``) before the rename. Errors name the target
the caller asked for, never the hidden temporary file.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["FileClaim", "atomic_write", "default_file_mode"]

_UMASK_LOCK = threading.Lock()


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666`` without the process umask."""
    with _UMASK_LOCK:  # reading the umask means setting it; keep other threads out meanwhile
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def _renamed(exc: OSError, target: Path) -> OSError:
    """The same error, naming ``target`` instead of the temporary file."""
    reason = exc.strerror or type(exc).__name__
    if target.is_dir():
        return IsADirectoryError(exc.errno, "Cannot write a file over a directory", str(target))
    return type(exc)(exc.errno, f"Cannot write the file ({reason})", str(target))


def atomic_write(target: str | os.PathLike[str], write: Callable[[IO[bytes]], Any],
                 suffix: str = ".tmp") -> Path:
    """Write ``target`` atomically: ``write(handle)`` fills a temporary file that replaces it.

    Parent folders are created. The file gets the user's umask (not mkstemp's 0600).

    Raises:
        OSError: the same type as the failure (``PermissionError``, ``IsADirectoryError`` ...),
            with ``filename`` set to ``target`` and a message naming it.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    except OSError as exc:
        raise _renamed(exc, target) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, target)
    except OSError as exc:
        raise _renamed(exc, target) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


class FileClaim:
    """Exclusive claim of ``path`` by this process, for as long as the ``with`` block runs.

    A lock file ``.NAME.lock`` beside ``path`` is held with ``flock`` and holds the owner's PID.
    A second process claiming the same path meanwhile gets :class:`FileInUseError` naming that
    PID at once, instead of both writing and both reporting success. The kernel drops the lock
    when its process dies (kill -9), so a stale lock file never blocks a later run. Without
    ``fcntl`` (Windows) no lock is taken.

    Args:
        path: the file claimed (its folder must exist).
        what: how the error names it (``"--out 'm.pt'"``, ``"the store 'r.db'"``).
    """

    def __init__(self, path: str | os.PathLike[str], what: str) -> None:
        self.path, self.what = Path(path), what
        self.lock = self.path.parent / f".{self.path.name}.lock"
        self.fd: int | None = None

    def __enter__(self) -> FileClaim:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        for _ in range(20):
            fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_pid(fd)
                os.close(fd)
                from advrobust.errors import FileInUseError

                by = f"PID {owner}" if owner else "another process"
                raise FileInUseError(
                    f"{self.what} is in use by {by} (lock {self.lock}); wait for it to finish "
                    "or choose another file.") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.lock))
            except FileNotFoundError:
                same = False  # the previous holder removed it between our open and lock
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self.fd = fd
                return self
            os.close(fd)
        raise RuntimeError(f"could not lock {self.lock}")  # pragma: no cover

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Give the claim up (idempotent)."""
        if self.fd is None:
            return
        try:
            os.unlink(self.lock)  # while still held: a waiter re-checks the inode it locked
        except FileNotFoundError:  # pragma: no cover
            pass
        os.close(self.fd)
        self.fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:  # pragma: no cover
        return None
    return int(text) if text.isdigit() else None
