"""One function over parts of a problem, in this process and in forked copies of it.

Branch and bound's searches split across worker processes with no shared state but flags: a
property's open domains (:func:`~advrobust.exact._search.search_dealt`), the refinement's
neuron rows. Each forked copy inherits the network, the bounds, the settings and its part (no
pickling of the inputs), runs one torch thread on its part, and sends its result back through
a pipe (pickled: only this process's own children are read). This process runs the first part
itself, with one torch thread while the copies run, so that ``workers`` processes use
``workers`` cores.

A copy that raises, dies or has not answered by the caller's deadline (or by the end of this
process's own part, if later) gives None for its part (it is killed and reaped): the caller
must treat None as "no result", which for a bound search means "nothing proved", never a wrong
bound. Linux only (``fork`` is unsafe with macOS system frameworks and missing on Windows);
elsewhere every part runs here, one after the other.
"""

from __future__ import annotations

import mmap
import os
import pickle
import select
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from advrobust.core.memory import default_memory_limit

__all__ = ["GRACE", "SharedFlag", "can_fork", "deal", "fork_map", "memory_share"]

P = TypeVar("P")

#: Seconds after a search's own deadline by which its copies must have answered (every process
#: stops at that deadline; the grace covers the last batch and the pickling).
GRACE = 0.5

#: Largest result a copy may send back (bytes) unless the caller says otherwise; a bigger one
#: counts as no answer.
_MAX_BYTES = 1 << 28


class SharedFlag:
    """A flag shared by this process and every copy forked after it was made: one byte of
    anonymous shared memory, so a copy's ``set`` reaches every process. A search sets it when
    it finds what ends the whole problem (a counterexample), and every process's search stops
    at its next check instead of running to the deadline."""

    def __init__(self) -> None:
        self._byte = mmap.mmap(-1, 1)  # MAP_SHARED | MAP_ANONYMOUS: inherited across fork

    def set(self) -> None:
        self._byte[0] = 1

    def is_set(self) -> bool:
        return self._byte[0] != 0


def can_fork() -> bool:
    """Whether :func:`fork_map` runs parts in forked copies on this platform."""
    return sys.platform.startswith("linux") and hasattr(os, "fork")


def deal(n: int, workers: int) -> list[torch.Tensor]:
    """Indices ``0..n-1`` dealt round-robin to ``min(workers, n)`` parts (none empty)."""
    return [torch.arange(i, n, workers) for i in range(min(workers, n))]


def memory_share(limit: int | None, workers: int) -> int | None:
    """Each of ``workers`` processes' part of the memory budget ``limit`` (None: the default
    budget, :func:`~advrobust.core.memory.default_memory_limit`); ``limit`` itself for one."""
    if workers <= 1 or not can_fork():
        return limit
    return (limit or default_memory_limit()) // workers


def fork_map(fn: Callable[[P], Any], parts: Sequence[P], *, until: float,
             max_bytes: int = _MAX_BYTES) -> list[Any]:
    """``[fn(p) for p in parts]``, ``parts[1:]`` each in a forked copy of this process.

    Args:
        fn: the work; must not rely on state it changes in this process (a copy's changes
            stay in the copy) and returns a picklable result.
        parts: its inputs; the first runs here.
        until: ``time.perf_counter()`` value by which a copy must have answered (or by
            which this process's own part ended, if later); a copy that has not is killed
            and its part gives None.
        max_bytes: largest result a copy may send back (pickled); a larger one gives None.

    Returns:
        One result per part, in order; None for a copy that failed, died or ran late, or
        that could not be forked.
        An exception of this process's own part propagates (after the copies are reaped).
    """
    if len(parts) <= 1 or not can_fork():
        return [fn(p) for p in parts]
    children: list[tuple[int, int] | None] = []
    try:
        for part in parts[1:]:
            try:
                children.append(_spawn(fn, part))
            except OSError:  # no process to be had (EAGAIN, ENOMEM): no result for this part
                children.append(None)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            mine = fn(parts[0])
        finally:
            torch.set_num_threads(threads)
        until = max(until, time.perf_counter())
        return [mine] + [None if child is None else _collect(*child, until, max_bytes)
                         for child in children]
    finally:
        for child in children:
            if child is not None:
                _reap(*child)


def _spawn(fn: Callable[[Any], Any], part: Any) -> tuple[int, int]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the copy: never returns into the caller's code
        code = 1
        try:
            os.close(read)
            torch.set_num_threads(1)
            payload = pickle.dumps(fn(part), protocol=pickle.HIGHEST_PROTOCOL)
            with os.fdopen(write, "wb") as pipe:
                pipe.write(payload)
            code = 0
        except BaseException:  # noqa: BLE001 - any failure is "no answer" for the parent
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    return pid, read


def _collect(pid: int, fd: int, until: float, max_bytes: int = _MAX_BYTES) -> Any:
    """The copy's result, or None (failed, died, late or too large)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        # past the deadline, what is already in the pipe is still read (no waiting)
        if not select.select([fd], [], [], max(0.0, until - time.perf_counter()))[0]:
            return None
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            return None
    if not chunks:
        return None
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return None
    if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
        return None
    return pickle.loads(b"".join(chunks))  # noqa: S301 - our own child's result


def _reap(pid: int, fd: int) -> None:
    """Close the pipe, kill the copy if it still runs, and collect its exit status."""
    try:
        os.close(fd)
    except OSError:
        pass
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    except (ChildProcessError, ProcessLookupError):
        pass
