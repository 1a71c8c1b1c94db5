"""Where tasks run: in the driver (serial), a local process pool, or Ray.

Every backend runs the same :func:`execute` (models and data loaded once per process, torch
limited to the config's ``threads``) and hands finished tasks back to the driver, which alone
writes the store. A backend reports a task's failure (an exception, or a worker process that
died) as the exception; the driver decides on retries. The pool attributes a dead worker to a
task precisely: when the pool breaks with several tasks in flight, those tasks are re-run one
at a time before anything is charged to them. The Ray backend (long-lived actors, the driver
working while they start) lives in :mod:`.raybackend`.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import gc
import multiprocessing
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advrobust.evaluation.campaign.cascade import Task, run_task, stage_progress
from advrobust.evaluation.campaign.config import CampaignConfig
from advrobust.evaluation.campaign.store import UnitRecord

__all__ = ["Context", "TaskResult", "execute", "make_backend", "warm_up", "BACKENDS"]

BACKENDS = ("serial", "pool", "ray")


@dataclass(frozen=True)
class TaskResult:
    """A finished task: its unit records, its samples' clean inputs (by index) and the names
    of its attacks that used no gradients."""

    task: Task
    records: list[UnitRecord]
    inputs: dict[int, np.ndarray]
    black_box: tuple[str, ...] = ()


class Context:
    """The models and samples of a campaign, loaded once per process."""

    def __init__(self, config: CampaignConfig) -> None:
        from advrobust.data import load_dataset

        data = config.data
        dataset = load_dataset(str(data["name"]), split=str(data["split"]), root=data["dir"])
        indices = list(data["indices"])
        if max(indices) >= len(dataset):
            from advrobust.evaluation.campaign.config import CampaignConfigError

            raise CampaignConfigError(config.source, [
                f"data selects sample {max(indices)} but the {data['name']} {data['split']} "
                f"split has {len(dataset)} samples (indices 0..{len(dataset) - 1})."])
        self.x = {i: dataset.x[i] for i in indices}
        self.y = {i: int(dataset.y[i]) for i in indices}
        self.models: dict[str, Any] = {}
        self.shapes: dict[str, tuple[int, ...] | None] = {}
        for spec in config.models:
            self.models[spec.name], self.shapes[spec.name] = _load_model(spec.kind, spec.path)

    def batch(self, model: str, samples: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of ``samples`` shaped for ``model``."""
        x = torch.stack([self.x[i] for i in samples])
        shape = self.shapes[model]
        if shape is not None and tuple(x.shape[1:]) != shape:
            x = x.reshape(x.shape[0], *shape)
        return x, torch.tensor([self.y[i] for i in samples], dtype=torch.long)


def _load_model(kind: str, path: str) -> tuple[Any, tuple[int, ...] | None]:
    if kind == "onnx":
        from advrobust.network.onnx import import_onnx

        net = import_onnx(path)
        return net.model.eval(), tuple(net.input_shape)
    from advrobust.models import load_checkpoint

    ckpt = load_checkpoint(path)
    shape = ckpt.arch_kwargs.get("input_shape")
    return ckpt.model.eval(), tuple(int(s) for s in shape) if shape is not None else None


_CONTEXTS: dict[str, Context] = {}


def context(config: CampaignConfig) -> Context:
    """This process's :class:`Context` for ``config`` (built on first use)."""
    key = config.identity()
    if key not in _CONTEXTS:
        _CONTEXTS.clear()
        _CONTEXTS[key] = Context(config)
    return _CONTEXTS[key]


def execute(config: CampaignConfig, task: Task) -> TaskResult:
    """Run one task in this process (torch limited to ``config.threads`` meanwhile)."""
    ctx = context(config)
    x, y = ctx.batch(task.model, task.samples)
    before = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    black_box: set[str] = set()
    try:
        records = run_task(ctx.models[task.model], x, y, task, config, black_box)
    finally:
        torch.set_num_threads(before)
    inputs = {i: ctx.x[i].numpy() for i in task.samples}
    return TaskResult(task, records, inputs, tuple(sorted(black_box)))


Execute = Callable[[CampaignConfig, Task], TaskResult]
Outcome = tuple[Task, "TaskResult | BaseException"]


class _Serial:
    """Tasks run one by one in the driver process."""

    def __init__(self, config: CampaignConfig, fn: Execute) -> None:
        self.config, self.fn = config, fn
        self.queue: collections.deque[Task] = collections.deque()
        self.capacity = 1

    def submit(self, task: Task) -> None:
        self.queue.append(task)

    def in_flight(self) -> int:
        return len(self.queue)

    def next_done(self) -> Outcome:
        task = self.queue.popleft()
        try:
            return task, self.fn(self.config, task)
        except Exception as exc:  # a task's failure is data for the driver (retry / error)
            return task, exc

    def close(self) -> None:
        self.queue.clear()


def _init_worker(progress: bool) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C
    stage_progress("line" if progress else "off")


def _mp_context(config: CampaignConfig) -> multiprocessing.context.BaseContext:
    """How pool workers start.

    ``fork`` where it is safe and cheapest: on Linux, with one torch thread per task and no
    other thread in the driver. A forked worker inherits the driver's imports (torch, the
    library, the stages' solvers) and its loaded models and data: it costs milliseconds
    instead of a new interpreter importing torch (1.5-2 CPU-s each, on the same cores as the
    work). With more torch threads (an OpenMP pool does not survive ``fork``) or threads in
    the driver, ``forkserver`` with torch and this module preloaded (a clean single-threaded
    server; a new worker is a cheap fork of it); ``spawn`` where there is no fork at all."""
    methods = multiprocessing.get_all_start_methods()
    if (sys.platform.startswith("linux") and "fork" in methods and config.threads == 1
            and threading.active_count() == 1):
        return multiprocessing.get_context("fork")
    if "forkserver" not in methods:
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", __name__])
    return ctx


def warm_up(config: CampaignConfig) -> None:
    """Load the context and import what the stages import lazily, once, in this process (the
    driver, before it forks workers: they start with everything loaded)."""
    import advrobust.attacks.ensemble  # noqa: F401
    import advrobust.evaluation.campaign._check  # noqa: F401
    import advrobust.exact  # noqa: F401
    import advrobust.relax  # noqa: F401

    context(config)


def _noop() -> None:
    return None


class _Pool:
    """A local process pool (fork / forkserver / spawn processes, see :func:`_mp_context`;
    SIGINT left to the driver). The workers start when the pool is made."""

    def __init__(self, config: CampaignConfig, fn: Execute, workers: int,
                 progress: bool = False) -> None:
        self.config, self.fn, self.workers, self.progress = config, fn, workers, progress
        self.capacity = 2 * workers
        self.pending: dict[cf.Future[TaskResult], Task] = {}
        self.suspects: collections.deque[Task] = collections.deque()
        self.waiting: collections.deque[Task] = collections.deque()
        self.pool = self._new_pool()

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        mp_context = _mp_context(self.config)
        forked = mp_context.get_start_method() == "fork"
        if forked:  # the driver's objects (torch's modules, the data) stay out of the
            gc.freeze()  # workers' collections: no copy-on-write of their pages for the GC
        try:
            pool = cf.ProcessPoolExecutor(self.workers, initializer=_init_worker,
                                          initargs=(self.progress,), mp_context=mp_context)
            pool.submit(_noop)  # start the workers now, before the driver starts any thread
        finally:
            if forked:
                gc.unfreeze()  # the driver collects as before; the workers keep theirs frozen
        return pool

    def submit(self, task: Task) -> None:
        self.waiting.append(task)
        self._fill()

    def _fill(self) -> None:
        limit = 1 if self.suspects else self.capacity
        source = self.suspects if self.suspects else self.waiting
        while source and len(self.pending) < limit:
            task = source.popleft()
            self.pending[self.pool.submit(self.fn, self.config, task)] = task

    def in_flight(self) -> int:
        return len(self.pending) + len(self.suspects) + len(self.waiting)

    def next_done(self) -> Outcome:
        while True:
            self._fill()
            done, _ = cf.wait(list(self.pending), return_when=cf.FIRST_COMPLETED)
            future = next(iter(done))
            task = self.pending.pop(future)
            exc = future.exception()
            if not isinstance(exc, cf.process.BrokenProcessPool):
                return task, exc if exc is not None else future.result()
            if not self.pending and not self.suspects:
                self.pool = self._new_pool()  # it was alone: it broke the pool
                return task, RuntimeError(f"worker process died ({exc})")
            self.suspects.append(task)  # several were in flight: re-run them one at a time
            for other in list(self.pending):
                self.suspects.append(self.pending.pop(other))
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._new_pool()

    def drop_queued(self) -> None:
        """Forget tasks that have not started (on Ctrl-C); running ones finish."""
        self.waiting.clear()
        for future in [f for f in self.pending if f.cancel()]:
            self.pending.pop(future)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def make_backend(name: str, config: CampaignConfig, workers: int, fn: Execute = execute,
                 address: str | None = None, progress: bool = False,
                 journal: Path | None = None) -> Any:
    """The backend ``name`` (``serial``, ``pool`` or ``ray``) running ``fn``.

    ``workers`` is the number of pool processes or Ray actors; with Ray, 0 means one actor per
    CPU of the cluster (of this machine for a local one). ``progress``: workers report long
    stages inside a task (exact methods) with a status line on stderr (Ray forwards the
    actors' output to the driver then). ``journal``: with Ray, the file in which the driver
    notes the task it runs itself (a resume leaves a task that died there to the actors).
    """
    if name == "ray":
        from advrobust.evaluation.campaign.raybackend import RayBackend

        return RayBackend(config, fn, workers, address, progress=progress, journal=journal)
    if name == "pool" and workers > 1:
        return _Pool(config, fn, workers, progress)
    return _Serial(config, fn)
