"""Campaign runs: brackets along the eps grid, soundness, workers, crashes, export."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _campaign_fixtures import write_config

from advrobust.attacks import PGD
from advrobust.core.spec import margin
from advrobust.core.threat import LpBall
from advrobust.data import load_dataset
from advrobust.errors import AdvRobustError
from advrobust.evaluation.campaign import ResultStore, load_config, run_campaign
from advrobust.evaluation.campaign.cascade import Task
from advrobust.evaluation.campaign.config import CampaignConfig
from advrobust.evaluation.campaign.export import robustbench_entry, summary_rows
from advrobust.evaluation.campaign.store import unpack
from advrobust.evaluation.campaign.workers import TaskResult, execute
from advrobust.models import load_checkpoint


def _verdicts(db: Path) -> dict[tuple, tuple]:
    with ResultStore(db, readonly=True) as store:
        return {(r["model"], r["sample"], r["norm"], r["eps_index"]): (r["verdict"], r["status"])
                for r in store.rows()}


def crash_on_chunk_one(config: CampaignConfig, task: Task) -> TaskResult:
    """Kills its worker process on task 1 (a segfault-like death), runs the others."""
    if task.chunk == 1:
        os._exit(3)
    return execute(config, task)


_CALLS: dict[Task, int] = {}


def flaky(config: CampaignConfig, task: Task) -> TaskResult:
    """Fails the first attempt of task 0, raises on every attempt of task 2."""
    _CALLS[task] = _CALLS.get(task, 0) + 1
    if task.chunk == 2 or (task.chunk == 0 and _CALLS[task] == 1):
        raise RuntimeError(f"injected failure #{_CALLS[task]}")
    return execute(config, task)


def test_brackets_are_sound_and_monotone_in_eps(folder: Path) -> None:
    config = load_config(write_config(folder, n=24, batch_size=8))
    run = run_campaign(config, folder / "r.db", progress=False)
    assert run.total == run.written == 96 and run.errors == 0
    model = load_checkpoint(folder / "mlp.pt").model.eval()
    data = load_dataset("digits", "test")
    with ResultStore(folder / "r.db", readonly=True) as store:
        rows = list(store.rows())
        by_sample: dict[int, list[str]] = {}
        for r in sorted(rows, key=lambda r: r["eps"]):
            by_sample.setdefault(r["sample"], []).append(r["verdict"])
            assert r["lower"] is None or r["upper"] is None or r["lower"] <= r["upper"] + 1e-4
            if r["verdict"] == "falsified" and r["witness"] is not None:
                # the stored witness is re-checkable: inside the ball and misclassified
                x = data.x[r["sample"]].unsqueeze(0)
                w = torch.from_numpy(unpack(r["witness"], (-1,)).copy()).reshape(x.shape)
                assert bool(LpBall("linf", r["eps"]).contains(x, w).all())
                y = torch.tensor([r["label"]])
                with torch.no_grad():
                    assert float(margin(model(w), y)) < 0
        assert {r["verdict"] for r in rows} >= {"verified", "falsified"}
    for verdicts in by_sample.values():
        # verified stays verified as eps shrinks, falsified stays falsified as eps grows
        first_not_verified = next((i for i, v in enumerate(verdicts) if v != "verified"), 4)
        assert all(v != "verified" for v in verdicts[first_not_verified:])
        if "falsified" in verdicts:
            assert all(v == "falsified" for v in verdicts[verdicts.index("falsified"):])
    # a stronger attack than the campaign's never breaks a VERIFIED unit
    verified = [r for r in rows if r["verdict"] == "verified" and r["eps"] == 0.05]
    assert len(verified) >= 4
    x = torch.stack([data.x[r["sample"]] for r in verified])
    y = torch.tensor([r["label"] for r in verified])
    res = PGD(steps=40, restarts=2)(model, x, y, LpBall("linf", 0.05),
                                    generator=torch.Generator().manual_seed(1))
    assert not bool(res.success.any())


@pytest.mark.slow
def test_two_workers_match_serial_and_crashes_are_recorded(folder: Path) -> None:
    config = load_config(write_config(folder, n=24, batch_size=8))
    run_campaign(config, folder / "serial.db", progress=False)
    run_campaign(config, folder / "pool.db", workers=2, backend="pool", progress=False)
    serial = _verdicts(folder / "serial.db")
    assert _verdicts(folder / "pool.db") == serial
    # a worker process that dies on one task: retried once, then recorded with the message;
    # the other tasks finish, nothing hangs, nothing is lost
    run = run_campaign(config, folder / "crash.db", workers=2, backend="pool", progress=False,
                       fn=crash_on_chunk_one)
    got = _verdicts(folder / "crash.db")
    assert got.keys() == serial.keys() and run.errors == 32
    with ResultStore(folder / "crash.db", readonly=True) as store:
        errors = list(store.rows("WHERE status = 'error'"))
    assert {r["sample"] for r in errors} == set(range(8, 16))
    assert all("worker process died" in r["error"] for r in errors)
    assert {k: v for k, v in got.items() if not 8 <= k[1] < 16} == \
        {k: v for k, v in serial.items() if not 8 <= k[1] < 16}


def test_failures_retry_once_then_error_and_export(folder: Path) -> None:
    config = load_config(write_config(folder, n=24, batch_size=8))
    run = run_campaign(config, folder / "r.db", progress=False, fn=flaky)
    assert run.errors == 32  # task 2 failed twice; task 0 succeeded on its retry
    with ResultStore(folder / "r.db", readonly=True) as store:
        errs = list(store.rows("WHERE status = 'error'"))
        assert {r["sample"] for r in errs} == set(range(16, 24))
        assert all("injected failure #2" in r["error"] for r in errs)
        rows = summary_rows(store)
        entry = robustbench_entry(store)
    assert [r["errors"] for r in rows] == [8, 8, 8, 8]
    for row, card in zip(rows, entry, strict=True):
        assert row["robust_accuracy_upper"] >= row["certified_accuracy"]
        assert card["threat_model"] == "Linf" and float(card["clean_acc"]) >= \
            float(card["autoattack_acc"]) - 1e-9 or row["errors"]
    json.dumps(entry)
    # a resume of the finished store does nothing
    again = run_campaign(config, folder / "r.db", progress=False)
    assert again.written == 0 and again.skipped == 96
    assert np.isfinite(again.seconds)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ray"])
def test_ray_matches_serial(folder: Path, backend: str) -> None:
    ray = pytest.importorskip("ray")
    config = load_config(write_config(folder, n=16, batch_size=8))
    run_campaign(config, folder / "serial.db", progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run_campaign(config, folder / "ray.db", workers=2, backend=backend, progress=False)
    finally:
        ray.shutdown()
    assert _verdicts(folder / "ray.db") == _verdicts(folder / "serial.db")


def test_ray_missing_names_the_extra(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    config = load_config(write_config(folder, n=4, batch_size=4))
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(AdvRobustError, match=r"advrobust\[ray\]"):
        run_campaign(config, folder / "r.db", backend="ray", workers=2, progress=False)


FORK_CHECK = """
import gc, json, os, sys
from advrobust.evaluation.campaign import load_config
from advrobust.evaluation.campaign import workers
from advrobust.evaluation.campaign.runner import plan
import test_campaign_runner as here

config = load_config(sys.argv[1])
workers.warm_up(config)
pool = workers.make_backend("pool", config, 2, fn=here.loaded_in_worker)
frozen = gc.get_freeze_count()  # the driver's GC unfrozen again once the workers forked
try:
    for task in plan(config):
        pool.submit(task)
    outcomes = [pool.next_done()[1] for _ in plan(config)]
finally:
    pool.close()
print(json.dumps({"driver": os.getpid(), "outcomes": outcomes, "frozen": frozen}))
"""


def loaded_in_worker(config: CampaignConfig, task: Task) -> tuple[int, bool, int]:
    """Which process ran the task, whether it had the campaign loaded before it, and how many
    of the driver's objects its GC leaves alone (frozen before the fork)."""
    import gc

    from advrobust.evaluation.campaign import workers

    return os.getpid(), config.identity() in workers._CONTEXTS, gc.get_freeze_count()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork is used on Linux")
def test_pool_workers_are_forked_from_the_loaded_driver(folder: Path) -> None:
    import subprocess

    from advrobust.evaluation.campaign.workers import _mp_context

    config_file = write_config(folder, n=8, batch_size=4)
    config = load_config(config_file)
    assert _mp_context(dataclasses.replace(config, threads=2)).get_start_method() != "fork"
    # a fresh driver (this test process may hold other tests' threads: then no fork)
    here = Path(__file__).resolve().parent
    path = os.pathsep.join([str(here.parents[2] / "src"), str(here),
                            os.environ.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", FORK_CHECK, str(config_file)], text=True,
                          capture_output=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    # workers, not the driver, and each had models and data before its first task, with the
    # driver's objects (torch's modules, the data) frozen out of its GC: no copy-on-write
    assert len(out["outcomes"]) == 2
    assert all(pid != out["driver"] and loaded and frozen > 10_000
               for pid, loaded, frozen in out["outcomes"])
    assert out["frozen"] == 0
