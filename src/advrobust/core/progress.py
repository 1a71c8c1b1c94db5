"""One progress helper for every long loop: a tqdm bar on a terminal, a status line otherwise.

:func:`progress_bar` takes tqdm's common arguments (``iterable``, ``total``, ``desc``,
``disable``, ``leave``, ``unit``) and returns

- nothing visible for a disabled bar or an empty stage (no ``bab: 0it`` lines);
- a tqdm bar (with ETA) when stderr is a terminal;
- otherwise (a log file, CI, a pipe) a :class:`StatusLine` that writes one short line such as
  ``ADiL: 40/100 (40%), 12s elapsed, ETA 18s`` at most every ``interval`` seconds (10 by
  default, ``$ADVROBUST_PROGRESS_INTERVAL`` overrides it), instead of a flood of carriage
  returns.

All three support iteration, ``update``, ``set_postfix_str``, ``set_postfix``,
``set_description``, ``close`` and ``with``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["Forecast", "StatusLine", "progress_bar"]


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("ADVROBUST_PROGRESS_INTERVAL", "10")))
    except ValueError:
        return 10.0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class _Silent:
    """The bar of a disabled or empty stage: iterates, prints nothing."""

    def __init__(self, iterable: Iterable[Any] | None = None, total: float | None = None,
                 desc: str | None = None) -> None:
        self.iterable, self.total, self.desc, self.n = iterable, total, desc, 0

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.n += 1

    def update(self, n: float = 1) -> None:
        self.n += int(n)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in {**dict(ordered_dict or {}),
                                                         **kwargs}.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc

    def refresh(self) -> None:
        """Nothing to redraw."""

    def close(self) -> None:
        """Nothing to close."""

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StatusLine(_Silent):
    """A progress report for a non-terminal stderr: one line at most every ``interval`` s."""

    def __init__(self, iterable: Iterable[Any] | None = None, total: float | None = None,
                 desc: str | None = None, unit: str = "it", interval: float | None = None,
                 file: Any = None) -> None:
        super().__init__(iterable, _length(iterable, total), desc)
        self.unit, self.postfix = unit, ""
        self.interval = _interval() if interval is None else interval
        self.file = file
        self.start = self.last = time.monotonic()
        self.printed = False

    def update(self, n: float = 1) -> None:
        self.n += int(n)
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._emit(now)

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)

    def _emit(self, now: float, final: bool = False) -> None:
        elapsed = now - self.start
        done = f"{self.n}" if self.total is None else f"{self.n}/{int(self.total)}"
        parts = [f"{self.desc or 'progress'}: {done} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{_duration(elapsed)} elapsed")
        if self.total and 0 < self.n < self.total and not final:
            parts.append(f"ETA {_duration(elapsed * (self.total - self.n) / self.n)}")
        if self.postfix:
            parts.append(str(self.postfix))
        print(", ".join(parts) + (" (done)" if final else ""),
              file=self.file or sys.stderr, flush=True)
        self.printed = True

    def close(self) -> None:
        """Say the stage ended if it was long enough to have reported on the way."""
        if self.printed:
            self._emit(time.monotonic(), final=True)
            self.printed = False


def _length(iterable: Any, total: float | None) -> float | None:
    if total is not None:
        return total
    try:
        return len(iterable)
    except TypeError:
        return None


def progress_bar(iterable: Iterable[Any] | None = None, *, total: float | None = None,
                 desc: str | None = None, disable: bool = False, leave: bool = True,
                 unit: str = "it", **tqdm_kwargs: Any) -> Any:
    """A progress bar over ``iterable`` (or ``total`` steps): tqdm, status line or nothing.

    Args:
        iterable: what to iterate over (or None and call ``update``).
        total: number of steps (default ``len(iterable)``).
        desc: name of the stage, printed first.
        disable: show nothing.
        leave: keep the tqdm bar on screen when it ends.
        unit: what one step is (``"batch"``, ``"sample"``).
        **tqdm_kwargs: passed on to tqdm on a terminal.

    Returns:
        An object with tqdm's iteration / ``update`` / ``set_postfix_str`` / ``close`` API.
    """
    total = _length(iterable, total)
    if disable or total == 0:
        return _Silent(iterable, total, desc)
    stream = sys.stderr
    if stream is not None and hasattr(stream, "isatty") and stream.isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=leave, unit=unit,
                    dynamic_ncols=True, **tqdm_kwargs)
    return StatusLine(iterable, total, desc, unit)


class Forecast:
    """Says, once the first batch of a long run is done, roughly how long the whole run takes.

    The first batch's time is extrapolated linearly to ``total`` samples; the line is printed
    once (``advrobust attack: the first 100 of 10000 samples took 3.1s: about 5m10s for all
    of them (Ctrl-C keeps the finished batches)``), before the bulk of the work.

    Args:
        total: samples the run processes.
        who: the line's prefix (``"advrobust attack"``).
        enabled: print anything at all (the CLI enables it for whole large splits).
        file: where to print (default: stderr).
    """

    def __init__(self, total: int, who: str, enabled: bool = True, file: Any = None) -> None:
        self.total, self.who, self.enabled, self.file = total, who, enabled, file
        self.start = time.monotonic()
        self.said = False

    def update(self, done: int) -> None:
        """Call after each finished batch with the number of samples done so far."""
        if not self.enabled or self.said or done <= 0 or done >= self.total:
            return
        self.said = True
        spent = time.monotonic() - self.start
        print(f"{self.who}: the first {done} of {self.total} samples took {_duration(spent)}: "
              f"about {_duration(spent * self.total / done)} for all of them (Ctrl-C keeps "
              "the finished batches)", file=self.file or sys.stderr, flush=True)
