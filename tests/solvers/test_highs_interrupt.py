"""Ctrl-C during a HiGHS solve stops it within about a second and reaches the caller, once
the solver has returned (never lost, never with a solve still running)."""

from __future__ import annotations

import signal
import threading
import time
import traceback
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from advrobust import LpBall
from advrobust.exact import MILP
from advrobust.solvers.highs import HighsSolver
from advrobust.solvers.program import Program, SolveStatus

pytest.importorskip("highspy")


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs POSIX timers")
def test_ctrl_c_stops_a_long_milp() -> None:
    assert threading.current_thread() is threading.main_thread()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 120), nn.ReLU(), nn.Linear(120, 120),
                              nn.ReLU(), nn.Linear(120, 10)).eval()
        x = torch.rand(1, 1, 8, 8)
    y = model(x).argmax(1)
    fired: list[float] = []

    def ctrl_c(*_: object) -> None:
        fired.append(time.monotonic())
        signal.raise_signal(signal.SIGINT)

    old = signal.signal(signal.SIGALRM, ctrl_c)
    signal.setitimer(signal.ITIMER_REAL, 2.0)  # the MILP (40 s limit) is running by then
    try:
        with pytest.raises(KeyboardInterrupt) as caught:
            MILP(time_limit=40)(model, x, y, LpBall("linf", 0.2))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    latency = time.monotonic() - fired[0]
    assert latency < 10.0  # ~0.3 s measured; generous for a loaded CI machine
    frames = [f.name for f in traceback.extract_tb(caught.value.__traceback__)]
    assert "_run" in frames  # it came through the solver, not before it


def _random_lp(n: int = 60, m: int = 80, seed: int = 0) -> Program:
    """A feasible, bounded LP with a few hundred simplex iterations."""
    rng = np.random.default_rng(seed)
    prog = Program()
    cols = prog.add_vars(np.zeros(n), np.full(n, 10.0))
    prog.add_rows(rng.uniform(0.0, 1.0, (m, n)), cols, -np.inf, rng.uniform(5.0, 20.0, m))
    return prog


class _RunFirst:
    """The HiGHS object, with ``before`` called at the start of ``run`` (where highspy's own
    threaded solve let a Ctrl-C escape while its solver thread was running, or lost it)."""

    def __init__(self, h: object, before: Callable[[], None]) -> None:
        self._h, self._before = h, before

    def run(self) -> object:
        self._before()
        return self._h.run()  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._h, name)


def test_a_ctrl_c_as_the_solve_starts_waits_for_the_solver_then_is_raised() -> None:
    solver = HighsSolver(_random_lp())
    h = solver._h
    solver._h = _RunFirst(h, lambda: signal.raise_signal(signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        solver.minimize(-np.ones(60))
    # the solve had returned (stopped by the held Ctrl-C, or finished) before the interrupt
    # reached the caller: nothing of HiGHS still runs, and the handler is the default again
    assert h.modelStatusToString(h.getModelStatus()) in ("Interrupted by user", "Optimal")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    solver._h = h  # the same solver solves again afterwards
    assert solver.minimize(-np.ones(60)).status is SolveStatus.OPTIMAL


def test_a_ctrl_c_during_the_solve_stops_it_at_its_next_check() -> None:
    """The Ctrl-C comes from inside a simplex iteration (a callback HiGHS calls in this
    thread): the held signal tells the solve to stop, and the caller gets KeyboardInterrupt."""
    solver = HighsSolver(_random_lp())
    calls: list[int] = []

    def press(event: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)

    solver._h.cbSimplexInterrupt.subscribe(press)
    with pytest.raises(KeyboardInterrupt):
        solver.minimize(-np.ones(60))
    h = solver._h
    assert h.modelStatusToString(h.getModelStatus()) == "Interrupted by user"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_ctrl_c_stays_ignored_during_a_solve() -> None:
    """A process that ignores SIGINT (a background job of a script) keeps ignoring it."""
    solver = HighsSolver(_random_lp())
    h = solver._h
    solver._h = _RunFirst(h, lambda: signal.raise_signal(signal.SIGINT))
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        sol = solver.minimize(-np.ones(60))
    finally:
        signal.signal(signal.SIGINT, old)
    assert sol.status is SolveStatus.OPTIMAL


def test_a_solve_stopped_early_leaves_the_next_one_free() -> None:
    """HiGHS keeps its interrupt flag across runs: a MIP stopped once its incumbent crossed
    ``stop_below`` made every later solve of the same model stop at once, with no bound."""
    rng = np.random.default_rng(1)
    prog = Program()
    cols = prog.add_vars(np.zeros(40), np.full(40, 3.0), integer=True)
    prog.add_rows(rng.uniform(0.0, 1.0, (30, 40)), cols, -np.inf, rng.uniform(5.0, 20.0, 30))
    solver = HighsSolver(prog)
    cost = -rng.uniform(0.0, 1.0, 40)
    first = solver.minimize(cost, stop_below=-1.0)
    assert first.status is SolveStatus.INTERRUPTED and first.objective < -1.0
    again = solver.minimize(cost)
    assert again.status is SolveStatus.OPTIMAL
    assert again.bound <= again.objective <= first.objective
