"""The Ray backend's threads (runner, driver task thread, Ray's thread) against a stand-in Ray.

The stand-in runs each actor in a thread of this process, so these tests need no Ray and take
a second: every task comes back exactly once, the runner's count of tasks in flight never
drops to zero while a task is on its way, failures come back as outcomes, and a Ray that
cannot start leaves the whole campaign to the driver (local cluster) or raises (cluster)."""

from __future__ import annotations

import concurrent.futures as cf
import importlib.machinery
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest
from _campaign_fixtures import write_config

from advrobust import _rayhead
from advrobust.errors import AdvRobustError
from advrobust.evaluation.campaign import load_config
from advrobust.evaluation.campaign.raybackend import RayBackend, stop_warm_actors
from advrobust.evaluation.campaign.runner import plan


class _Handle:
    def __init__(self, obj: Any, pool: cf.ThreadPoolExecutor) -> None:
        self._obj, self._pool = obj, pool

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._obj, name)
        return types.SimpleNamespace(remote=lambda *a: self._pool.submit(method, *a))


class FakeRay(types.ModuleType):
    """``ray`` as the backend uses it: actors are objects, each with one thread of its own."""

    def __init__(self, fail_init: bool = False, initialized: bool = True) -> None:
        super().__init__("ray")
        self.__spec__ = importlib.machinery.ModuleSpec("ray", None)
        self.fail_init, self.initialized = fail_init, initialized
        self.pools: list[cf.ThreadPoolExecutor] = []
        self.options: list[dict[str, Any]] = []
        self.killed = 0
        self.named: dict[str, _Handle] = {}  # detached actors by name (they outlive a driver)

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, **kwargs: Any) -> None:
        if self.fail_init:
            raise ConnectionError("no cluster at that address")
        self.initialized = True

    def shutdown(self) -> None:
        self.initialized = False

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 2.0}

    def remote(self, **options: Any) -> Any:
        self.options.append(options)

        def wrap(cls: type) -> Any:
            def create(*args: Any) -> _Handle:
                pool = cf.ThreadPoolExecutor(1)  # one task at a time, in order, like an actor
                self.pools.append(pool)
                box: dict[str, Any] = {}
                pool.submit(lambda: box.setdefault("obj", cls(*args))).result()
                return _Handle(box["obj"], pool)

            def named(name: str, get_if_exists: bool = False, **_: Any) -> Any:
                def make(*args: Any) -> _Handle:
                    if name in self.named:
                        if get_if_exists:
                            return self.named[name]
                        raise ValueError(f"actor name {name!r} is taken")
                    self.named[name] = create(*args)
                    return self.named[name]
                return types.SimpleNamespace(remote=make)
            return types.SimpleNamespace(remote=create, options=named)
        return wrap

    def put(self, value: Any) -> Any:
        return value

    def get_actor(self, name: str, namespace: str | None = None) -> Any:
        if name not in self.named:
            raise ValueError(f"no actor named {name!r}")
        return self.named[name]

    def wait(self, refs: list[cf.Future[Any]], num_returns: int = 1,
             timeout: float | None = None) -> tuple[list[Any], list[Any]]:
        deadline = time.monotonic() + (timeout or 0)
        while True:
            done = [r for r in refs if r.done()]
            if len(done) >= num_returns or time.monotonic() >= deadline:
                return done[:num_returns], [r for r in refs if r not in done[:num_returns]]
            time.sleep(0.002)

    def get(self, ref: Any, timeout: float | None = None) -> Any:
        if isinstance(ref, list):
            return [r.result(timeout) for r in ref]
        return ref.result(timeout)

    def kill(self, actor: Any, no_restart: bool = False) -> None:
        self.killed += 1
        self.named = {k: v for k, v in self.named.items() if v is not actor}


def slow_tag(config: Any, task: Any) -> tuple[int, int]:
    """(chunk, thread id); task 3 fails; every task takes a few ms."""
    time.sleep(0.005 * (1 + task.chunk % 3))
    if task.chunk == 3:
        raise ValueError("task 3 fails")
    return task.chunk, threading.get_ident()


def _drain(backend: RayBackend, tasks: list[Any]) -> list[tuple[Any, Any]]:
    """The runner's loop: submit up to capacity, never see zero in flight before the end."""
    queue, out = list(reversed(tasks)), []
    while True:
        while queue and backend.in_flight() < backend.capacity:
            backend.submit(queue.pop())
        if backend.in_flight() == 0:
            return out
        out.append(backend.next_done())


@pytest.fixture
def fake_ray(monkeypatch: pytest.MonkeyPatch) -> FakeRay:
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    return fake


def test_every_task_once_driver_and_actor_share_the_work(folder: Path,
                                                         fake_ray: FakeRay) -> None:
    config = load_config(write_config(folder, n=60, batch_size=2))
    tasks = plan(config)
    backend = RayBackend(config, slow_tag, workers=2, address=None)
    try:
        results = _drain(backend, tasks)
    finally:
        backend.close()
    assert sorted(t.chunk for t, _ in results) == [t.chunk for t in tasks]  # exactly once
    failed = [(t, o) for t, o in results if isinstance(o, BaseException)]
    assert [t.chunk for t, _ in failed] == [3] and "task 3" in str(failed[0][1])
    threads = {o[1] for _, o in results if not isinstance(o, BaseException)}
    assert len(threads) == 2  # the driver's task thread and the one actor
    assert len(fake_ray.pools) == 1  # workers=2 on a local cluster: the driver + one actor
    assert fake_ray.options[0]["num_cpus"] == 1
    assert fake_ray.options[0]["enable_task_events"] is False
    assert fake_ray.killed == 1 and backend.in_flight() == 0


def test_joined_cluster_gets_all_workers_as_actors(folder: Path, fake_ray: FakeRay) -> None:
    config = load_config(write_config(folder, n=16, batch_size=2))
    fake_ray.initialized = False
    backend = RayBackend(config, slow_tag, workers=0, address="10.0.0.1:6379")
    try:
        results = _drain(backend, plan(config))
    finally:
        backend.close()
    assert len(results) == 8 and len(fake_ray.pools) == 2  # one actor per cluster CPU
    assert not fake_ray.initialized  # the backend disconnected from the cluster it joined


def test_joined_cluster_keeps_its_actors_warm_for_the_next_campaign(folder: Path,
                                                                   fake_ray: FakeRay) -> None:
    """A second campaign on the same cluster reuses the named actors (no new start-up) and
    each of its tasks runs in its own campaign; an actor with other code is replaced."""
    first = load_config(write_config(folder / "a", n=16, batch_size=2))
    second = load_config(write_config(folder / "b", n=12, batch_size=2))
    runs = []
    for config in (first, second):
        fake_ray.initialized = False
        backend = RayBackend(config, slow_tag, workers=0, address="10.0.0.1:6379",
                             driver_helps=False)
        try:
            runs.append(_drain(backend, plan(config)))
        finally:
            backend.close()
        assert backend.job is not None and fake_ray.killed == 0
    assert backend.reused == 2  # the second campaign found both actors up
    assert len(fake_ray.pools) == 2 and sorted(fake_ray.named) == [
        "advrobust-worker-0", "advrobust-worker-1"]
    assert [sorted(t.chunk for t, _ in r) for r in runs] == [list(range(8)), list(range(6))]
    actor = fake_ray.named["advrobust-worker-0"]._obj
    assert actor.config.identity() == second.identity() and actor.loads == 2
    # other code in the actors (a library upgrade): replaced, with a warning naming it
    for handle in fake_ray.named.values():
        handle._obj.hello = lambda: {"identity": ("advrobust", "0.0.old"), "loads": 2}
    fake_ray.initialized = False
    with pytest.warns(RuntimeWarning, match="replaced by a new one"):
        backend = RayBackend(second, slow_tag, workers=0, address="10.0.0.1:6379",
                             driver_helps=False)
        try:
            assert len(_drain(backend, plan(second))) == 6
        finally:
            backend.close()
    assert len(fake_ray.pools) == 4 and fake_ray.killed == 2 and backend.reused == 0
    # 'advrobust campaign workers --stop': every warm actor of the cluster goes
    assert stop_warm_actors("10.0.0.1:6379") == 2 and not fake_ray.named
    assert stop_warm_actors("10.0.0.1:6379") == 0


def test_ray_that_cannot_start(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(write_config(folder, n=8, batch_size=2))
    fake = FakeRay(fail_init=True, initialized=False)
    monkeypatch.setitem(sys.modules, "ray", fake)
    # a cluster to join that is not there: an error naming the cause, no hang
    backend = RayBackend(config, slow_tag, workers=2, address="10.0.0.1:6379",
                         driver_helps=False)
    try:
        backend.submit(plan(config)[0])
        with pytest.raises(AdvRobustError, match="no cluster at that address"):
            backend.next_done()
    finally:
        backend.close()
    # a local cluster that does not start: the driver runs every task (with a warning)
    monkeypatch.setattr(_rayhead, "take", lambda *a: types.SimpleNamespace(
        address=lambda: None, stop=lambda wait=True: None))
    with pytest.warns(RuntimeWarning, match="the driver runs every task"):
        backend = RayBackend(config, slow_tag, workers=2, address=None)
        try:
            results = _drain(backend, plan(config))
        finally:
            backend.close()
    assert sorted(t.chunk for t, _ in results) == [0, 1, 2, 3]
    assert len({o[1] for _, o in results if not isinstance(o, BaseException)}) == 1


def test_head_cpus_leave_the_driver_its_share() -> None:
    assert _rayhead.head_cpus(2) == 1 and _rayhead.head_cpus(5) == 4
    assert _rayhead.head_cpus(1) == 1  # one actor does the work
    assert _rayhead.head_cpus(0) is None  # every CPU of the machine, no prestart
