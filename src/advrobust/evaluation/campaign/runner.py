"""Run a campaign into a store: plan the tasks, skip what is done, retry, stop cleanly.

The driver plans one :class:`~advrobust.evaluation.campaign.cascade.Task` per (model, norm,
slice of ``batch_size`` samples), skips every task whose units all have rows, hands the rest to
a backend and writes each finished task in one transaction. A task that fails (an exception or
a dead worker) is retried once, then its units are recorded as errors with the message: never
lost, never hanging the campaign. Ctrl-C stops handing out tasks, waits for the running ones,
writes them and returns with ``interrupted=True`` (a second Ctrl-C stops at once; the store
stays intact either way, since every write is one transaction).
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from tqdm.auto import tqdm

from advrobust.evaluation.campaign.cascade import Task, stage_progress
from advrobust.evaluation.campaign.config import CampaignConfig
from advrobust.evaluation.campaign.store import ResultStore, UnitRecord
from advrobust.evaluation.campaign.unit_sanity import BLACK_BOX_KEY
from advrobust.evaluation.campaign.workers import Execute, context, execute, make_backend, warm_up

__all__ = ["CampaignRun", "plan", "run_campaign"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CampaignRun:
    """What one ``run_campaign`` call did.

    Attributes:
        total: units of the campaign.
        skipped: units already in the store when the call started.
        written: units written by this call (errors included).
        errors: units recorded as errors by this call.
        interrupted: stopped by Ctrl-C before the end.
        seconds: wall time.
    """

    total: int
    skipped: int
    written: int
    errors: int
    interrupted: bool
    seconds: float


def plan(config: CampaignConfig) -> list[Task]:
    """Every task of the campaign, in a fixed order (model, norm, slice)."""
    indices = list(config.data["indices"])
    size = config.batch_size
    return [Task(model=m.name, norm=t.norm, chunk=c, samples=tuple(indices[s:s + size]))
            for m in config.models for t in config.threats
            for c, s in enumerate(range(0, len(indices), size))]


def _keys(task: Task, config: CampaignConfig) -> list[tuple[str, int, str, int]]:
    grid = next(t.eps for t in config.threats if t.norm == task.norm)
    return [(task.model, s, task.norm, e) for e in range(len(grid)) for s in task.samples]


def _error_records(task: Task, config: CampaignConfig, message: str) -> list[UnitRecord]:
    grid = next(t.eps for t in config.threats if t.norm == task.norm)
    ctx_y = context(config).y
    return [UnitRecord(model=task.model, sample=s, norm=task.norm, eps_index=e, eps=grid[e],
                       label=ctx_y[s], verdict="unknown", status="error", error=message)
            for e in range(len(grid)) for s in task.samples]


class _Interrupt:
    """First Ctrl-C: finish the running tasks; second: stop now (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.requested = False
        self.previous: Any = None

    def __enter__(self) -> _Interrupt:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("interrupt: finishing the running tasks (Ctrl-C again to stop now)")

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _record_sanity(store: ResultStore, config: CampaignConfig) -> None:
    """Gradient-masking and friends, once per model, on the campaign's first samples."""
    from advrobust.evaluation.sanity import sanity_checks

    meta, ctx = store.meta(), context(config)
    for spec in config.models:
        if f"sanity:{spec.name}" in meta:
            continue
        first = tuple(list(ctx.x)[:64])
        x, y = ctx.batch(spec.name, first)
        found = [w.to_dict() for w in sanity_checks(ctx.models[spec.name], x, y)]
        store.set_meta(f"sanity:{spec.name}", json.dumps(found))


def run_campaign(config: CampaignConfig, store_path: str | Path, *, workers: int = 1,
                 backend: str = "serial", address: str | None = None, progress: bool = True,
                 fn: Execute = execute) -> CampaignRun:
    """Run (or resume) ``config`` into the store at ``store_path``.

    Args:
        config: a validated campaign (:func:`~advrobust.evaluation.campaign.load_config`).
        store_path: the SQLite store; created when absent, resumed when it holds this config.
        workers: processes (``pool``) or Ray actors of one CPU each (``ray``; 0: one per CPU
            of the cluster); ``pool`` with 1 worker is serial. With Ray the driver also runs
            tasks while the actors start.
        backend: ``serial``, ``pool`` or ``ray``.
        address: with ``ray``, the cluster to join (default: start a local one).
        progress: show a tqdm bar (units, with ETA) on stderr.
        fn: the task function (a module-level function, so that workers can import it).

    Returns:
        A :class:`CampaignRun`.

    Raises:
        StoreError: the store is corrupt, read-only or holds another config.
        CampaignConfigError: the data selection does not fit the dataset.
        AdvRobustError: Ray asked for but not installed.
    """
    from advrobust import __version__

    start = time.perf_counter()
    warm_up(config)  # load data and models in the driver: errors before any work
    with ResultStore(store_path) as store:
        store.bind(config.to_dict(), config.identity(), __version__)
        journal = Path(store_path).with_name(Path(store_path).name + ".driver-tasks")
        # workers start now (a forked pool worker inherits the loaded driver; Ray starts its
        # driver-side helper), before the driver starts threads of its own (progress bar)
        runner = make_backend(backend, config, workers, fn, address, progress, journal)
        try:
            return _run(config, store, runner, progress, start)
        finally:
            runner.close()


def _run(config: CampaignConfig, store: ResultStore, runner: Any, progress: bool,
         start: float) -> CampaignRun:
    _record_sanity(store, config)
    done, tasks = store.done_keys(), plan(config)
    todo = [t for t in tasks if not set(_keys(t, config)) <= done]
    total = sum(len(_keys(t, config)) for t in tasks)
    skipped = sum(k in done for t in tasks for k in _keys(t, config))
    with tqdm(total=total, initial=skipped, unit="unit", desc="campaign",
              disable=not progress) as bar, _Interrupt() as stop, \
            _stage_mode("bar" if progress else "off"):  # for tasks run in the driver
        written, errors = 0, 0
        black_box = set(json.loads(store.meta().get(BLACK_BOX_KEY, "[]")))
        for result in _drive(config, todo, runner, stop):
            if not set(result.black_box) <= black_box:  # before the units: never lost
                black_box.update(result.black_box)
                store.set_meta(BLACK_BOX_KEY, json.dumps(sorted(black_box)))
            n = store.write_units(result.records, result.inputs)
            written += n
            errors += sum(r.status == "error" for r in result.records)
            bar.update(n)
    return CampaignRun(total=total, skipped=skipped, written=written, errors=errors,
                       interrupted=stop.requested and written + skipped < total,
                       seconds=time.perf_counter() - start)


@contextlib.contextmanager
def _stage_mode(mode: str) -> Iterator[None]:
    before = stage_progress()
    stage_progress(mode)
    try:
        yield
    finally:
        stage_progress(before)


@dataclass(frozen=True)
class _Finished:
    records: list[UnitRecord]
    inputs: dict[int, Any]
    black_box: tuple[str, ...] = ()


def _drive(config: CampaignConfig, todo: list[Task], runner: Any,
           stop: _Interrupt) -> Iterator[_Finished]:
    """Hand tasks to the backend, retry a failure once, yield what finished."""
    queue, attempts = list(reversed(todo)), {t: 0 for t in todo}
    while True:
        while queue and not stop.requested and runner.in_flight() < runner.capacity:
            runner.submit(queue.pop())
        if stop.requested and hasattr(runner, "drop_queued"):
            runner.drop_queued()
        if runner.in_flight() == 0:
            return
        task, outcome = runner.next_done()
        if not isinstance(outcome, BaseException):
            yield _Finished(outcome.records, outcome.inputs,
                            tuple(getattr(outcome, "black_box", ())))
            continue
        attempts[task] += 1
        message = f"{type(outcome).__name__}: {outcome}"
        if attempts[task] < 2:
            logger.warning("task %s failed (%s); retrying once", task, message)
            queue.append(task)
        else:
            yield _Finished(_error_records(task, config, message), {})
