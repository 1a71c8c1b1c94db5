"""One call in a process of its own, with a hard deadline.

A benchmark of many verification instances run one after another in one process lets them
reach each other: the heap an instance leaves behind, a stage that overruns its deadline
inside a solver, a crash in native code (HiGHS, torch) or the kernel's out-of-memory killer
ending the whole run. VNN-COMP itself starts a new process per instance. :func:`run_isolated`
does the same for one call: the function runs in a child process started from a clean server
(``forkserver`` with torch and the caller's modules preloaded, so a start costs milliseconds,
not an interpreter importing torch; ``spawn`` where there is no fork), in a process group of
its own, and comes back as an :class:`Isolated` whatever happens to it:

- it returns: its value;
- it raises: the exception's type and message (the child's traceback is printed on its
  stderr);
- it does not answer within ``limit`` seconds of starting (``grace`` more for the answer to
  arrive): the child and every process it forked are killed;
- the child dies (a signal, the out-of-memory killer, ``os._exit``): how it ended;
- no child can be started: why.

The clock starts when the function starts in the child (the child's start-up is not counted,
as an interpreter's start-up is not counted for one instance). Ctrl-C in the parent kills the
child's group and propagates; the child itself ignores SIGINT.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Isolated", "isolated_context", "run_isolated"]

#: Seconds a child may take to start (fork from the server, or a new interpreter importing
#: torch with ``spawn`` on a loaded machine) before the call counts as failed.
START_LIMIT = 120.0


@dataclass(frozen=True)
class Isolated:
    """What became of one isolated call.

    Attributes:
        value: the function's return value (None if it did not return).
        error: "" if it returned, else what happened (exception, death, kill), one line.
        killed: True if it was killed for running past its limit.
        seconds: from the function's start in the child (or the child's start, if the
            function never started) to the answer, or to the kill.
    """

    value: Any = None
    error: str = ""
    killed: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.error


def isolated_context(preload: Sequence[str] = ()) -> Any:
    """The start method of isolated calls: ``forkserver`` (its server imports torch and
    ``preload`` once) where the platform has it, else ``spawn``. Never plain ``fork``: the
    child would start from this process's heap and threads, which is what isolation avoids."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", __name__, *preload])
    return ctx


def run_isolated(fn: Callable[..., Any], args: Sequence[Any] = (), *, limit: float | None,
                 grace: float = 2.0, context: Any = None) -> Isolated:
    """``fn(*args)`` in a child process, killed if it has not answered ``limit + grace``
    seconds after it started (None: no limit).

    ``fn`` and ``args`` must be picklable (a module-level function), and so must the value.
    ``context``: a :mod:`multiprocessing` context (default :func:`isolated_context`).
    """
    ctx = isolated_context() if context is None else context
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(send, fn, tuple(args)), daemon=True,
                        name=f"advrobust-isolated-{getattr(fn, '__name__', 'call')}")
    began = time.perf_counter()
    try:
        child.start()
    except OSError as exc:  # no process to be had (EAGAIN, ENOMEM): this call fails alone
        recv.close()
        send.close()
        return Isolated(error=f"no process could be started: {exc}")
    send.close()
    started = False
    try:
        msg = _receive(recv, START_LIMIT)
        if msg[0] == "start":
            started, began = True, time.perf_counter()
            msg = _receive(recv, None if limit is None else limit + grace)
    except BaseException:  # Ctrl-C (or anything) in the parent: the child goes too
        _kill(child)
        raise
    finally:
        recv.close()
    seconds = time.perf_counter() - began
    killed = msg[0] == "late"
    if not killed:
        child.join(5.0)  # it exits right after answering (or has died)
    _kill(child)
    if msg[0] == "value":
        return Isolated(value=msg[1], seconds=seconds)
    if msg[0] == "error":
        return Isolated(error=str(msg[1]), seconds=seconds)
    if killed:
        what = "answer" if started else "start"
        return Isolated(error=f"killed: no {what} within its limit", killed=True,
                        seconds=seconds)
    return Isolated(error=f"the process ended without an answer ({_how(child.exitcode)})",
                    seconds=seconds)


def _receive(conn: Any, timeout: float | None) -> tuple[str, Any]:
    """The next message; ``("late", None)`` if none came within ``timeout``, ``("gone",
    None)`` if the child hung up without one."""
    try:
        if not conn.poll(timeout):
            return ("late", None)
        msg: tuple[str, Any] = conn.recv()
        return msg
    except (EOFError, OSError):
        return ("gone", None)


def _kill(child: Any) -> None:
    """Kill the child's process group (it and what it forked), then the child; reap it."""
    if child.pid is not None and hasattr(os, "killpg"):
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except OSError:  # no such group (already gone, or setsid did not run yet)
            pass
    if child.is_alive():
        child.kill()
    child.join()


def _how(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (the out-of-memory killer?)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}"


def _child(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """The child: a process group of its own, SIGINT ignored; ``start``, then the value or
    the error; ends with ``os._exit`` (no interpreter shutdown under running torch / HiGHS
    threads, which aborts)."""
    code = 0
    try:
        if hasattr(os, "setsid"):
            os.setsid()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        conn.send(("start", None))
        try:
            msg: tuple[str, Any] = ("value", fn(*args))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            traceback.print_exc()
            msg = ("error", f"{type(exc).__name__}: {exc}")
        try:
            conn.send(msg)
        except Exception as exc:  # noqa: BLE001 - e.g. a value that does not pickle
            conn.send(("error", f"the answer could not be sent back: {type(exc).__name__}: "
                                f"{exc}"))
    except BaseException:  # noqa: BLE001 - the parent sees the hang-up
        code = 1
    finally:
        try:
            conn.close()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
