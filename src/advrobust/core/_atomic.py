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

__all__ = ["atomic_write", "default_file_mode"]

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
