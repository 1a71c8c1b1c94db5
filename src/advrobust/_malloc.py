"""Keep freed memory in the process instead of handing it back to the kernel at every step.

The bound computations and randomized smoothing allocate and free tensors of tens of MB in a
loop. With glibc's defaults each free above the trim threshold returns the pages to the kernel
and the next allocation faults them in again, zero-filled, one page at a time: on the library's
``resnet8`` CROWN spent as much CPU in the kernel as in torch, and a smoothing certification
0.63 of its 1.41 CPU s per image (bench/RESULTS.md). The command-line tool therefore raises
glibc's trim threshold and top pad (``mallopt``; documented, only about when memory goes back to
the kernel) and pins the mmap threshold at its maximum, once at start-up. Library users decide for
their own process (the ``MALLOC_*_`` environment variables do the same). Set
``ADVROBUST_MALLOC=default`` to keep glibc's defaults.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_PAD = 256 << 20
_MMAP_MAX = 32 << 20  # glibc's upper limit on 64-bit systems


def keep_freed_memory() -> bool:
    """Apply the settings (glibc on Linux only); True if they were applied."""
    if not sys.platform.startswith("linux") or os.environ.get("ADVROBUST_MALLOC") == "default":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # this process's C library
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_TRIM_THRESHOLD, _PAD), (_M_TOP_PAD, _PAD), (_M_MMAP_THRESHOLD, _MMAP_MAX)))
