"""The Ray backend joining a running cluster (``--address``): same store as a serial run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _campaign_fixtures import write_config

from advrobust.evaluation.campaign import ResultStore, load_config, run_campaign

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[2] / "src"
HEAD = """
import sys, ray
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # until the test closes stdin
ray.shutdown()
"""
DRIVER = """
import json, os, sys
import _campaign_fixtures as fixtures
from advrobust.evaluation.campaign import load_config, run_campaign
os.environ[fixtures.DRIVER_PID] = str(os.getpid())
run = run_campaign(load_config(sys.argv[1]), sys.argv[2], workers=int(sys.argv[5]),
                   backend="ray", address=sys.argv[3] or None, progress=False,
                   fn=getattr(fixtures, sys.argv[4]))
import ray
print(json.dumps({"errors": run.errors, "written": run.written, "pid": os.getpid(),
                  "still_connected": ray.is_initialized()}))
"""
ACTORS = """
import json, sys, ray
from advrobust.evaluation.campaign import raybackend as rb
ray.init(**rb.init_options(0, sys.argv[1]))
pids = []
for i in range(64):
    try:
        actor = ray.get_actor(f"{rb.WARM_PREFIX}{i}", namespace=rb.WARM_NAMESPACE)
    except ValueError:
        break
    pids.append(ray.get(actor.hello.remote(), timeout=120)["pid"])
ray.shutdown()
print(json.dumps(pids))
"""


def _actor_pids(address: str, env: dict[str, str]) -> set[str]:
    """Process ids of the named (warm) actors running on the cluster at ``address``."""
    done = subprocess.run([sys.executable, "-c", ACTORS, address], env=env, text=True,
                          capture_output=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return {str(pid) for pid in json.loads(done.stdout.strip().splitlines()[-1])}


def _verdicts(db: Path) -> dict[tuple, tuple]:
    with ResultStore(db, readonly=True) as store:
        return {(r["model"], r["sample"], r["norm"], r["eps_index"]):
                (r["verdict"], r["status"], r["decided_by"]) for r in store.rows()}


@pytest.mark.slow
def test_ray_joins_a_running_cluster_by_address(folder: Path) -> None:
    pytest.importorskip("ray")
    config_file = write_config(folder, n=16, batch_size=2)
    run_campaign(load_config(config_file), folder / "serial.db", progress=False)
    # head and driver in their own processes, token authentication on both sides (Ray reads
    # RAY_AUTH_MODE when it is imported; the head writes ~/.ray/auth_token when there is none)
    path = os.pathsep.join([str(SRC), str(HERE), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    head = subprocess.Popen([sys.executable, "-c", HEAD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        address = (head.stdout.readline() if head.stdout else "").strip()
        assert ":" in address, "the head did not start"
        driver = subprocess.run([sys.executable, "-c", DRIVER, str(config_file),
                                 str(folder / "ray.db"), address, "tagged", "0"], env=env,
                                text=True, capture_output=True, timeout=240)
        os.rename(folder / "ran", folder / "ran1")
        warm1 = _actor_pids(address, env)
        # the next campaign on this cluster finds the same (named, detached) actors up
        again = subprocess.run([sys.executable, "-c", DRIVER, str(config_file),
                                str(folder / "ray2.db"), address, "tagged", "0"], env=env,
                               text=True, capture_output=True, timeout=240)
        warm2 = _actor_pids(address, env)
        alive = head.poll() is None
    finally:
        if head.stdin:
            head.stdin.close()
        head.wait(timeout=60)
    assert driver.returncode == 0, driver.stderr[-3000:]
    out = json.loads(driver.stdout.strip().splitlines()[-1])
    assert out["errors"] == 0 and out["written"] == 64
    assert not out["still_connected"]  # the backend left the cluster it joined
    assert alive and head.returncode == 0  # ... and did not stop it
    assert _verdicts(folder / "ray.db") == _verdicts(folder / "serial.db")
    ran = [name.split("-") for name in os.listdir(folder / "ran1")]
    assert sorted(int(c) for c, _ in ran) == list(range(8))  # each task ran exactly once
    assert any(pid != str(out["pid"]) for _, pid in ran)     # the cluster's actors did work
    # (workers=0: one actor per CPU of the cluster, here the head's 2)
    assert again.returncode == 0, again.stderr[-3000:]
    out2 = json.loads(again.stdout.strip().splitlines()[-1])
    assert out2["errors"] == 0 and out2["written"] == 64
    assert _verdicts(folder / "ray2.db") == _verdicts(folder / "serial.db")
    # (which actor takes which task is up to timing: a fast one may take them all)
    actors1 = {pid for _, pid in ran} - {str(out["pid"])}
    ran2 = [name.split("-") for name in os.listdir(folder / "ran")]
    actors2 = {pid for _, pid in ran2} - {str(out2["pid"])}
    assert len(warm1) == 2 and actors1 <= warm1  # the named actors did the first campaign
    assert warm2 == warm1                        # ... stayed up, were not replaced
    assert actors2 and actors2 <= warm1          # ... and did the second


@pytest.mark.slow
def test_a_task_that_kills_the_driver_goes_to_the_actors_on_resume(folder: Path) -> None:
    pytest.importorskip("ray")
    config_file = write_config(folder, n=8, batch_size=4)
    path = os.pathsep.join([str(SRC), str(HERE), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    db = folder / "ray.db"
    args = [sys.executable, "-c", DRIVER, str(config_file), str(db), "", "crash_on_chunk_zero",
            "2"]
    first = subprocess.run(args, env=env, text=True, capture_output=True, timeout=240)
    # the driver took task 0 while Ray started, and died with it
    assert first.returncode == 3, first.stderr[-3000:]
    assert (folder / "ray.db.driver-tasks").is_file()
    second = subprocess.run(args, env=env, text=True, capture_output=True, timeout=240)
    assert second.returncode == 0, second.stderr[-3000:]
    out = json.loads(second.stdout.strip().splitlines()[-1])
    # task 0 went to an actor, killed it twice (retry) and was recorded as an error;
    # the campaign ended and the journal is gone
    assert out["errors"] == 16 and not (folder / "ray.db.driver-tasks").exists()
    with ResultStore(db, readonly=True) as store:
        rows = list(store.rows())
    assert len(rows) == 32
    assert {r["sample"] for r in rows if r["status"] == "error"} == set(range(4))


def _family(root: int) -> set[int]:
    """``root``'s descendants (Linux /proc)."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1]
                                              .split()[1])
            except OSError:
                continue
    family, grew = {root}, True
    while grew:
        new = {p for p, pp in parent.items() if pp in family} - family
        family |= new
        grew = bool(new)
    return family - {root}


def _python_workers(root: int) -> list[int]:
    """Ray's Python worker processes under ``root`` (not its agents)."""
    found = []
    for pid in _family(root):
        try:
            line = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        exe = line.split("\0")[0].rsplit("/", 1)[-1]  # (the raylet's flags name the worker)
        if _alive(pid) and ((exe.startswith("python") and "default_worker" in line) or
                            (line.startswith("ray::") and "Agent" not in line)):
            found.append(pid)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")
def test_local_head_is_lean_and_ends_with_its_pipe() -> None:
    pytest.importorskip("ray")
    from advrobust import _rayhead

    head = _rayhead.take(1, False)
    try:
        address = head.address()
        assert address is not None and ":" in address
        family = _family(head.proc.pid)
        lines = [Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                 for p in family if _alive(p)]
        assert any("raylet" in c for c in lines) and any("gcs_server" in c for c in lines)
        # lean: neither the autoscaler monitor nor the log monitor
        assert not any("monitor.py" in c for c in lines)
        # the raylet prestarts one Python worker per cluster CPU (here: the one actor's)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _python_workers(head.proc.pid):
            time.sleep(0.2)
        time.sleep(1.0)  # and no second one
        assert len(_python_workers(head.proc.pid)) == 1
    finally:
        head.stop()  # what the driver's exit (or death) does too: the pipe closes
    assert head.proc.returncode == 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p) for p in family):
        time.sleep(0.2)
    assert not any(_alive(p) for p in family)  # the cluster went with it
