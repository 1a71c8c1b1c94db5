"""The Ray backend: long-lived actors fed one task at a time, the driver working too.

Where the time of a Ray campaign on a small machine goes (profiled on the issue-13 bench, 2
cores): Ray's own processes (GCS, raylet and Python helpers: dashboard head, autoscaler
monitor, log monitor, dashboard agent, runtime-env agent; ~0.7 CPU-s each to start) and its
worker processes (Ray's worker, then torch and this library, models and data: ~3 CPU-s per
actor). The per-task CPU of an actor equals the serial run's. On 2 cores every CPU-second of
start-up is taken from the work, so this backend

- runs tasks **in the driver** (a thread) from the start; on a local cluster the driver is
  one of the ``workers`` for the whole campaign and Ray starts one actor fewer (joining a
  cluster with ``address``, the driver stops once every actor has loaded its context);
- keeps **long-lived actors** (one CPU each): models and data are loaded once per actor, the
  config travels once, a task carries only its sample indices;
- gives each actor **one task at a time** (the next one is handed over within milliseconds of
  the last result), so no task waits behind a long one while another CPU is idle;
- starts a local Ray **early and lean** (:mod:`advrobust._rayhead`: a child process, which
  the CLI starts before it imports torch): no dashboard API server, no autoscaler monitor, no
  log monitor (unless the actors' output is forwarded), no idle workers started ahead of the
  actors, no usage reporting, a small object store (the payloads are sample indices and a few
  kB of records per task).

An actor that dies (a crash inside a task) is restarted by Ray; the task it held is reported as
failed (the driver retries it once, then records the error). Ctrl-C: tasks not yet handed out
are dropped, running ones finish (actors and the driver's thread alike).
"""

from __future__ import annotations

import collections
import importlib.util
import json
import logging
import os
import queue
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from advrobust import _rayhead
from advrobust.errors import AdvRobustError
from advrobust.evaluation.campaign.cascade import Task
from advrobust.evaluation.campaign.config import CampaignConfig

__all__ = ["RayBackend", "init_options"]

logger = logging.getLogger(__name__)

def init_options(workers: int, address: str | None, progress: bool = False
                 ) -> dict[str, Any]:
    """``ray.init`` keywords: join ``address``, or a lean local cluster of ``workers`` CPUs
    (the actors' output reaches the driver only with ``progress``). The backend starts a local
    cluster with :mod:`advrobust._rayhead` and uses these only where that cannot start."""
    common: dict[str, Any] = {"include_dashboard": False, "log_to_driver": progress,
                              "logging_level": "ERROR"}
    if address:
        return {"address": address, **common}
    return {"num_cpus": workers if workers > 0 else None,
            "object_store_memory": _rayhead.OBJECT_STORE_BYTES,
            "_system_config": dict(_rayhead.LEAN_SYSTEM_CONFIG), **common}


#: Namespace and name prefix of the reusable ("warm") actors on a joined cluster.
WARM_NAMESPACE = "advrobust"
WARM_PREFIX = "advrobust-worker-"


def _identity() -> tuple[str, ...]:
    """What an actor's code must match to be reused: the library (version and location),
    torch and Python."""
    import torch

    import advrobust

    return (advrobust.__version__, str(Path(advrobust.__file__).resolve().parent),
            str(torch.__version__), sys.version.split()[0])


class _Worker:
    """Actor body: loads a campaign's context once, then runs tasks with ``fn``.

    On a local cluster an actor serves one campaign (its context given at creation). On a
    joined cluster actors are named and detached and serve campaign after campaign: each task
    comes with its campaign (one object in Ray's store), and the context is (re)loaded when the
    campaign changes or the actor was restarted after a crash."""

    def __init__(self, config: CampaignConfig | None = None, fn: Any = None,
                 progress: bool = False) -> None:
        from advrobust._malloc import keep_freed_memory

        keep_freed_memory()  # as the CLI's driver (and the pool's forked workers) do
        self.config: CampaignConfig | None = None
        self.fn: Any = None
        self.progress, self.loads, self.key = progress, 0, ""
        if config is not None:
            self.load(config, fn, progress)
        self.cpu = {"start-up": time.process_time(), "tasks": 0.0}

    def load(self, config: CampaignConfig, fn: Any, progress: bool) -> bool:
        from advrobust.evaluation.campaign.cascade import stage_progress
        from advrobust.evaluation.campaign.workers import context

        self.config, self.fn, self.progress = config, fn, progress
        self.key = config.identity()
        stage_progress("line" if progress else "off")
        context(config)
        self.loads += 1
        return True

    def hello(self) -> dict[str, Any]:
        """This actor's code (:func:`_identity`), how many campaigns it has loaded and its
        process id."""
        return {"identity": _identity(), "loads": self.loads, "pid": os.getpid()}

    def ready(self) -> bool:
        return True

    def run(self, task: Task) -> Any:
        begin = time.process_time()
        try:
            return self.fn(self.config, task)
        finally:
            self.cpu["tasks"] += time.process_time() - begin

    def run_in(self, job: tuple[CampaignConfig, Any, bool], task: Task) -> Any:
        """``run`` within campaign ``job`` = (config, fn, progress), loaded first if it is not
        the one this actor holds."""
        config, fn, progress = job
        if (self.config is None or self.fn is not fn or progress != self.progress
                or self.key != config.identity()):
            self.load(config, fn, progress)
        return self.run(task)

    def stats(self) -> dict[str, float]:
        """CPU seconds of this actor's process: until its context was loaded, and in tasks."""
        return {**self.cpu, "total": time.process_time()}


class RayBackend:
    """Ray actors on a local cluster (``num_cpus=workers``) or on the one at ``address``.

    Three threads in the driver: the runner's (it only hands tasks over and takes finished
    ones from one queue, blocking), the driver's task thread (:meth:`_help`) and Ray's
    (:meth:`_watch`: it starts Ray and the actors, then blocks in ``ray.wait`` and hands an
    actor its next task the moment it returns one). Nothing polls while there is work.

    Args:
        config: the campaign.
        fn: the task function (``execute`` or a test's module-level stand-in).
        workers: local CPUs (the driver and ``workers - 1`` actors), or with ``address`` the
            actors (0: one per cluster CPU).
        address: a running cluster to join (``ray.init(address=...)``).
        driver_helps: run tasks in the driver (while the actors start; on a local cluster,
            throughout). False: ``workers`` actors do all the work.
        journal: a file beside the store naming the task the driver is running (see
            :meth:`_help`); None: no safeguard.
        progress: actors report long stages with a status line (forwarded to the driver).
    """

    def __init__(self, config: CampaignConfig, fn: Any, workers: int, address: str | None,
                 driver_helps: bool = True, progress: bool = False,
                 journal: Path | None = None) -> None:
        self.config, self.fn, self.journal = config, fn, journal
        self.workers, self.address, self.progress = workers, address, progress
        self.capacity = 4 * max(1, workers) + 2
        self.waiting: collections.deque[Task] = collections.deque()
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)  # a task was submitted, or closing
        self.closing = False
        self.started = False
        self.actors: list[Any] = []
        self.job: Any = None  # a joined cluster's campaign in Ray's store (warm actors)
        self.reused = 0       # warm actors found running (the rest were started)
        self.ready_refs: dict[Any, int] = {}   # ping -> actor, until the actor is up
        self.idle: list[int] = []              # actors that are up and have no task
        self.running: dict[Any, tuple[Task, int]] = {}
        self.done: queue.Queue[tuple[Task, Any]] = queue.Queue()  # both threads feed it
        self.local_busy = 0
        self.failure: BaseException | None = None  # Ray could not start (raised by next_done)
        self.helper: threading.Thread | None = None
        self.watcher: threading.Thread | None = None
        self.helping = driver_helps
        # on a local cluster the driver is one of the ``workers``: it keeps running tasks
        # and Ray starts one actor fewer (each actor pays Ray's worker, torch and the
        # library again: ~3 CPU-s, a sixth of a small campaign's work on 2 cores)
        self.driver_share = driver_helps and not address
        self.head: _rayhead.Head | None = None
        self.local_tasks = 0
        self.cpu = {"driver tasks": 0.0}
        self.t0 = time.perf_counter()
        if driver_helps:  # from now on: the first tasks need not wait for Ray at all
            self.helper = threading.Thread(target=self._help, name="campaign-driver-task",
                                           daemon=True)
            self.helper.start()
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if importlib.util.find_spec("ray") is None:  # imported later, while the driver works
            self.helping = False
            raise AdvRobustError("--backend ray needs Ray: pip install 'advrobust[ray]'.")
        self.ray: Any = None
        ray = sys.modules.get("ray")
        if not address and not (ray is not None and ray.is_initialized()):
            # a local cluster: its head comes up in a child process while the driver works
            # (the CLI starts it even before importing torch; see advrobust._rayhead)
            self.head = _rayhead.take(_rayhead.head_cpus(workers) if self.driver_share
                                      else (workers if workers > 0 else None), progress)
        # Ray and the actors start now, beside the driver's own work (sanity checks, tasks)
        self.watcher = threading.Thread(target=self._watch, name="campaign-ray", daemon=True)
        self.watcher.start()

    # -- the runner's interface ---------------------------------------------------------------
    def submit(self, task: Task) -> None:
        with self.wake:
            self.waiting.append(task)
            self.wake.notify_all()

    def in_flight(self) -> int:
        with self.lock:
            return len(self.waiting) + len(self.running) + self.local_busy + \
                self.done.qsize()

    def drop_queued(self) -> None:
        """Forget tasks not yet handed out (on Ctrl-C); running ones finish."""
        with self.lock:
            self.waiting.clear()

    def next_done(self) -> tuple[Task, Any]:
        while True:  # short waits: a Python signal handler (Ctrl-C) runs between two
            try:
                return self.done.get(timeout=0.5)
            except queue.Empty:
                pass
            if self.failure is not None and not self.helping:
                raise self.failure  # Ray did not start and the driver is not working

    def close(self) -> None:
        logger.debug("close after %.2f s; the driver ran %d task(s) (%.2f CPU-s in its task "
                     "thread; runner thread %.2f CPU-s)", time.perf_counter() - self.t0,
                     self.local_tasks, self.cpu["driver tasks"], time.thread_time())
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("driver threads (CPU-s): %s; process %.2f", _thread_cpu(),
                         time.process_time())
        self.helping = False
        with self.wake:
            self.closing = True
            self.wake.notify_all()
        if self.watcher is not None:
            self.watcher.join()
        if not self.local_busy:  # no task of the driver's died: the journal has done its job
            _write_journal(self.journal, [])
        if logger.isEnabledFor(logging.DEBUG) and self.actors and not self.ready_refs:
            try:
                stats = self.ray.get([a.stats.remote() for a in self.actors], timeout=10)
                logger.debug("actors (CPU-s): %s", "; ".join(
                    ", ".join(f"{k} {v:.2f}" for k, v in st.items()) for st in stats))
            except Exception as exc:  # a debug aid only
                logger.debug("actor stats: %s", exc)
        w0 = time.perf_counter()
        for actor in self.actors if self.job is None else []:  # warm actors stay for the next
            self.ray.kill(actor)
        self.actors, self.running = [], {}
        w1 = time.perf_counter()
        if self.started:
            self.ray.shutdown()
        w2 = time.perf_counter()
        if self.head is not None:
            self.head.stop(wait=False)
            self.head = None
        logger.debug("closed (wall s): kill %.2f, shutdown %.2f, head %.2f", w1 - w0, w2 - w1,
                     time.perf_counter() - w2)

    # -- internals ----------------------------------------------------------------------------
    def _watch(self) -> None:
        """Ray's thread: start Ray and the actors, then feed them until the backend closes."""
        try:
            self._start()
        except BaseException as exc:  # Ray did not start: the driver runs every task
            self.failure = exc if self.driver_share else AdvRobustError(
                f"Ray could not start ({type(exc).__name__}: {exc}).")
            if self.driver_share:
                warnings.warn(f"Ray could not start ({type(exc).__name__}: {exc}); the driver "
                              "runs every task", RuntimeWarning, stacklevel=1)
            if not self.driver_share:
                self.helping = False
            return
        while not self.closing:
            self._promote()
            self._dispatch()
            refs = list(self.running) + list(self.ready_refs)
            if not refs:
                with self.wake:  # every actor idle and nothing to hand out: wait for a task
                    if not self.closing and not self.waiting:
                        self.wake.wait(0.5)
                continue
            # blocks without the GIL; short while an actor is idle and waits for a task
            timeout = 0.02 if self.idle else 0.5
            ready, _ = self.ray.wait(refs, num_returns=1, timeout=timeout)
            for ref in ready:
                if ref in self.ready_refs:
                    continue  # _promote takes it on the next pass
                task, actor = self.running[ref]
                self.idle.append(actor)
                self._dispatch()  # its next task first, then the result
                try:
                    outcome = self.ray.get(ref)
                except Exception as exc:  # RayTaskError, ActorDiedError: the driver retries
                    outcome = exc
                with self.lock:  # in one step: in_flight never misses it
                    del self.running[ref]
                    self.done.put((task, outcome))

    def _start(self) -> None:
        """Start Ray (in this thread) and the actors; the driver's thread already runs."""
        import ray

        self.ray = ray
        if not ray.is_initialized():
            address = self.head.address() if self.head is not None else None
            logger.debug("head address after %.2f s", time.perf_counter() - self.t0)
            kwargs = init_options(self.workers, address or self.address, self.progress)
            with _quiet_thread_warning():
                ray.init(**kwargs)
            self.started = True
            logger.debug("ray.init: %.2f s", time.perf_counter() - self.t0)
        count = self.workers
        if count < 1:
            count = max(1, int(ray.cluster_resources().get("CPU", 1)))
        if self.driver_share and count > 1:
            count -= 1
        else:
            self.driver_share = False
        # no task events (the state API's per-task records): nothing here reads them
        options: dict[str, Any] = {"num_cpus": 1, "max_restarts": -1, "max_task_retries": 0,
                                   "enable_task_events": False}
        actor = ray.remote(**options)(_Worker)
        if self.address:  # a joined cluster: named actors, kept warm for the next campaign
            self.actors = self._warm_actors(actor, count)
            self.job = ray.put((self.config, self.fn, self.progress))
            self.ready_refs = {a.load.remote(self.config, self.fn, self.progress): i
                               for i, a in enumerate(self.actors)}
        else:
            self.actors = [actor.remote(self.config, self.fn, self.progress)
                           for _ in range(count)]
            self.ready_refs = {a.ready.remote(): i for i, a in enumerate(self.actors)}
        self.capacity = 4 * count + 2
        logger.debug("%d actor(s) requested after %.2f s", count, time.perf_counter() - self.t0)

    def _warm_actors(self, actor: Any, count: int) -> list[Any]:
        """Actors ``advrobust-worker-0..count-1`` of the joined cluster: the running ones if
        their code matches this driver's (library, torch, Python), else started (an actor
        with other code is replaced, with a warning naming the difference)."""
        ray, mine = self.ray, _identity()

        def named(i: int, reuse: bool = True) -> Any:
            return actor.options(name=f"{WARM_PREFIX}{i}", namespace=WARM_NAMESPACE,
                                 lifetime="detached", get_if_exists=reuse).remote()

        handles = [named(i) for i in range(count)]
        hello = ray.get([h.hello.remote() for h in handles], timeout=600)
        self.reused = sum(h["loads"] > 0 and tuple(h["identity"]) == mine for h in hello)
        for i, ident in enumerate(h["identity"] for h in hello):
            if tuple(ident) == mine:
                continue
            warnings.warn(f"Ray actor {WARM_PREFIX}{i} runs {tuple(ident)}, this driver "
                          f"{mine}: replaced by a new one", RuntimeWarning, stacklevel=2)
            ray.kill(handles[i], no_restart=True)
            for _ in range(100):  # the name is free once the cluster has seen the kill
                try:
                    handles[i] = named(i, reuse=False)
                    break
                except ValueError:
                    time.sleep(0.1)
        logger.debug("warm actors: %d reused, %d started", self.reused, count - self.reused)
        return handles

    def _promote(self) -> None:
        """Actors whose context is loaded join the idle list; when all are, the driver stops."""
        if not self.ready_refs:
            return
        ready, _ = self.ray.wait(list(self.ready_refs), num_returns=len(self.ready_refs),
                                 timeout=0)
        for ref in ready:
            self.idle.append(self.ready_refs.pop(ref))
            try:
                self.ray.get(ref)
            except Exception:  # a failing context load shows on the tasks it gets
                pass
        if not self.ready_refs:
            self.helping = self.driver_share
            logger.debug("every actor up after %.2f s; the driver ran %d task(s) meanwhile",
                         time.perf_counter() - self.t0, self.local_tasks)

    def _dispatch(self) -> None:
        while self.idle:
            with self.lock:  # in one step: in_flight never misses the task
                if not self.waiting:
                    return
                task = self.waiting.popleft()
                actor = self.idle.pop()
                handle = self.actors[actor]
                ref = (handle.run_in.remote(self.job, task) if self.job is not None else
                       handle.run.remote(task))
                self.running[ref] = (task, actor)

    def _help(self) -> None:
        """The driver's thread: run waiting tasks until every actor is up (on a local
        cluster: until the end).

        A task that kills its process must not kill every resume of the campaign: the task
        the driver runs is noted in ``journal`` first and struck off when it returns, and the
        tasks found there when the backend starts (their run died with the driver) are left
        to the actors, whose deaths Ray contains."""
        died = set(_read_journal(self.journal))
        while self.helping:
            with self.wake:
                task = next((t for t in self.waiting if _key(t) not in died), None)
                if task is None:
                    self.wake.wait(0.5)
                    continue
                self.waiting.remove(task)
                self.local_busy += 1
            _write_journal(self.journal, sorted(died | {_key(task)}))
            begin = time.thread_time()
            try:
                outcome: Any = self.fn(self.config, task)
            except Exception as exc:  # a task's failure is data for the driver
                outcome = exc
            self.cpu["driver tasks"] += time.thread_time() - begin
            _write_journal(self.journal, sorted(died))
            with self.lock:
                self.local_busy -= 1
                self.local_tasks += 1
                self.done.put((task, outcome))


class _quiet_thread_warning(logging.Filter):
    """Context: hide Ray's warning that ``ray.init`` outside the main thread sets no SIGTERM
    handler (the driver's Ctrl-C / SIGTERM handling is the runner's, not Ray's)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler" not in record.getMessage()

    def __enter__(self) -> None:
        logging.getLogger("ray._private.worker").addFilter(self)

    def __exit__(self, *exc: Any) -> None:
        logging.getLogger("ray._private.worker").removeFilter(self)


def _thread_cpu() -> str:
    """CPU seconds of this process's threads by name (Linux; for the debug log)."""
    tick, out = os.sysconf("SC_CLK_TCK"), collections.defaultdict[str, float](float)
    for stat in Path("/proc/self/task").glob("*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        out[name] += (int(fields[11]) + int(fields[12])) / tick
    return ", ".join(f"{n} {c:.2f}" for n, c in sorted(out.items(), key=lambda kv: -kv[1]))


def stop_warm_actors(address: str | None) -> int:
    """Stop the warm actors of the cluster at ``address`` (``advrobust campaign workers
    --stop``); returns how many were stopped."""
    import ray

    ray.init(**init_options(0, address or "auto"))
    try:
        stopped = 0
        for i in range(1024):
            try:
                handle = ray.get_actor(f"{WARM_PREFIX}{i}", namespace=WARM_NAMESPACE)
            except ValueError:
                break
            ray.kill(handle, no_restart=True)
            stopped += 1
        return stopped
    finally:
        ray.shutdown()


def _key(task: Task) -> str:
    return f"{task.model}/{task.norm}/{task.chunk}"


def _read_journal(path: Path | None) -> list[str]:
    if path is None or not path.is_file():
        return []
    try:
        return [str(k) for k in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        return []


def _write_journal(path: Path | None, keys: list[str]) -> None:
    if path is None:
        return
    try:
        if keys:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(keys))
            os.replace(tmp, path)
        else:
            path.unlink(missing_ok=True)
    except OSError:  # a read-only folder: the driver still helps, without the safeguard
        pass
