"""Ctrl-C held back while a block runs, delivered when it ends.

Two places need it: keeping a finished batch (its rows and the in-memory results must not
disagree) and a HiGHS solve (a KeyboardInterrupt raised while the solver runs, or while it
starts, either escapes with the solver still running or is lost). The Python SIGINT handler
runs in the main thread whichever thread the signal hits, so swapping it is reliable; outside
the main thread, and where SIGINT is ignored, nothing is held.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

__all__ = ["held_interrupt"]


@contextlib.contextmanager
def held_interrupt(on_press: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold Ctrl-C back while the block runs; it takes effect when the block ends.

    ``on_press`` (if given) is called, in the main thread, when a Ctrl-C arrives during the
    block (a long computation uses it to stop early). After the block the handler that was in
    place gets the signal as if it had just arrived (the default one raises KeyboardInterrupt).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is None or previous == signal.SIG_IGN:  # ignored, or not ours to handle
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: object) -> None:
        caught.append(signum)
        if on_press is not None:
            on_press()

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        # a SIGINT pending here is handled by ``hold`` before the swap (CPython checks first)
        signal.signal(signal.SIGINT, previous)
        if caught:
            signal.raise_signal(signal.SIGINT)  # the restored handler's turn
