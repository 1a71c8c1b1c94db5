"""A call in a process of its own: its value, its exception, its death and its overrun all come
back as an answer, and nothing it started outlives a kill."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from advrobust.evaluation._isolated import run_isolated

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="process groups and /proc")


def test_value_and_exception_come_back() -> None:
    done = run_isolated(os.getpid, limit=30)
    assert done.ok and not done.killed
    assert isinstance(done.value, int) and done.value != os.getpid()  # another process
    bad = run_isolated(int, ("seven",), limit=30)
    assert not bad.ok and bad.value is None and not bad.killed
    assert bad.error.startswith("ValueError:") and "seven" in bad.error


def test_a_dying_child_is_an_answer() -> None:
    exited = run_isolated(os._exit, (3,), limit=30)
    assert not exited.ok and "exit code 3" in exited.error
    # the child signals its own process group: it dies of SIGKILL
    killed = run_isolated(os.kill, (0, signal.SIGKILL), limit=30)
    assert not killed.ok and "SIGKILL" in killed.error and not killed.killed


def test_an_overrun_is_killed_with_what_it_started(tmp_path: Path) -> None:
    marker = f"{time.time_ns() % 10**9}.5"  # a unique argument to find the grandchild by
    began = time.perf_counter()
    done = run_isolated(subprocess.run, (["sleep", marker],), limit=1.0, grace=0.5)
    took = time.perf_counter() - began
    assert done.killed and not done.ok and "no answer" in done.error
    assert done.seconds >= 1.5 and took < 60  # killed at limit + grace, not after the sleep
    time.sleep(0.2)
    alive = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd[:2] == [b"sleep", marker.encode()]:
            alive.append(proc.name)
    assert not alive  # the grandchild went with its group


class _Stop(Exception):
    pass


def test_an_interrupted_parent_takes_the_child_along() -> None:
    pids: list[int] = []

    def stop(*_: object) -> None:
        pids.extend(p.pid for p in multiprocessing.active_children() if p.pid is not None)
        raise _Stop

    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, 2.0)
    try:
        with pytest.raises(_Stop):
            run_isolated(time.sleep, (60,), limit=120)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert pids  # the child was running when the parent was interrupted
    time.sleep(0.2)
    for pid in pids:  # killed (and reaped by its parent, the process server)
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] in "ZX"
