"""Ray's own cost on one machine, per component: start-up CPU and idle CPU per second.

    OMP_NUM_THREADS=1 PYTHONPATH=src nice -n 10 python bench/ray_overhead.py --idle 20

Starts what the campaign's Ray backend starts on a local cluster (the lean head child of
``advrobust._rayhead``, a driver connecting with ``ray.init(address=...)``, one actor of one CPU
that imports nothing but Ray), waits until the actor answers, samples the CPU seconds of every
process (``proctree``), stays idle ``--idle`` seconds and samples again. Prints per role: CPU
at "actor ready" (start-up) and CPU per second while idle. ``RAY_<setting>=...`` in the
environment changes Ray's settings in every process (e.g. ``RAY_enable_metrics_collection=0``),
to compare variants; ``--rounds`` repeats the whole measurement (medians).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import proctree

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[0] / "src"
DRIVER = """
import json, sys, time
t0 = time.perf_counter()
from advrobust import _rayhead
head = _rayhead.take(2, False)
import ray
address = head.address()
t_head = time.perf_counter()
ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
t_init = time.perf_counter()

class Idle:
    def ready(self):
        return True

actor = ray.remote(num_cpus=1, enable_task_events=False)(Idle).remote()
ray.get(actor.ready.remote())
t_ready = time.perf_counter()
print(json.dumps({"head_s": t_head - t0, "init_s": t_init - t0, "actor_s": t_ready - t0}),
      flush=True)
sys.stdin.readline()  # the bench samples the start-up CPU, then says go on
time.sleep(float(sys.argv[1]))
print("idle done", flush=True)
sys.stdin.readline()
ray.shutdown()
head.stop()
"""


def _one(idle: float) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1",
           "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(idle)], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    tree = proctree.Tree(proc.pid)
    latency = json.loads(proc.stdout.readline())
    tree.sample()
    start = tree.by_role()
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.stdout.readline()
    tree.sample()
    end = tree.by_role()
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait(timeout=60)
    return {"latency": latency,
            "startup": {r: c for r, (c, _, _) in start.items()},
            "idle_per_s": {r: (end[r][0] - start.get(r, (0.0,))[0]) / idle for r in end}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--idle", type=float, default=20.0, help="idle seconds measured")
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args()
    runs = [_one(args.idle) for _ in range(args.rounds)]
    roles = sorted({r for run in runs for r in run["startup"]})  # type: ignore[attr-defined]
    print(f"load average {os.getloadavg()[0]:.2f}; medians of {args.rounds} round(s); "
          f"RAY_ settings: {[k for k in os.environ if k.startswith('RAY_')]}")
    for key in ("head_s", "init_s", "actor_s"):
        print(f"  {key:<8} {statistics.median(r['latency'][key] for r in runs):6.2f} s "
              "after the driver started")  # type: ignore[index]
    print(f"  {'role':<22} {'start-up CPU s':>15} {'idle CPU s/s':>13}")
    for role in roles:
        up = statistics.median(r["startup"].get(role, 0.0) for r in runs)  # type: ignore
        idle = statistics.median(r["idle_per_s"].get(role, 0.0) for r in runs)  # type: ignore
        print(f"  {role:<22} {up:15.2f} {idle:13.4f}")
    total_up = statistics.median(sum(r["startup"].values()) for r in runs)  # type: ignore
    total_idle = statistics.median(sum(r["idle_per_s"].values()) for r in runs)  # type: ignore
    print(f"  {'total':<22} {total_up:15.2f} {total_idle:13.4f}")


if __name__ == "__main__":
    main()
