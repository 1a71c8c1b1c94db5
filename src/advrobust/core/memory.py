"""Memory budgets: how much working memory a bound computation may take, and size parsing.

The verifiers estimate a computation's working set before they allocate it and fit it to a
budget (chunking rows, or keeping cheaper bounds for what does not fit) instead of letting the
operating system kill the process. The default budget is half the memory the kernel reports
as available when the computation starts; ``ADVROBUST_MEMORY_LIMIT`` (e.g. ``8G``) or an
explicit ``memory_limit`` overrides it.
"""

from __future__ import annotations

import os
import re

from advrobust.errors import InvalidParameterError

__all__ = ["available_bytes", "default_memory_limit", "parse_size"]

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_FALLBACK = 4 << 30  # when /proc/meminfo cannot be read (not Linux)
ENV = "ADVROBUST_MEMORY_LIMIT"


def parse_size(text: str | int, what: str = "memory limit") -> int:
    """Bytes of ``"512M"``, ``"8G"``, ``"1.5G"``, ``"1000000"`` (binary units, case-insensitive,
    an optional trailing ``B`` / ``iB``); a positive int passes through."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise InvalidParameterError(f"The {what} must be a positive number of bytes. "
                                        f"Got {text} instead.")
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", str(text), re.IGNORECASE)
    if match is None or float(match.group(1)) <= 0:
        raise InvalidParameterError(
            f"The {what} must be a positive size such as 512M, 8G or 1.5G (binary units K, M, "
            f"G, T). Got {text!r} instead.")
    return max(1, int(float(match.group(1)) * _UNITS[match.group(2).upper()]))


def available_bytes() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes, or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def default_memory_limit() -> int:
    """The working-memory budget when the caller states none: ``$ADVROBUST_MEMORY_LIMIT`` if
    set, else half of the available memory (4 GiB where that cannot be read)."""
    env = os.environ.get(ENV)
    if env:
        return parse_size(env, f"${ENV}")
    avail = available_bytes()
    return _FALLBACK if avail is None else max(avail // 2, 1 << 26)
