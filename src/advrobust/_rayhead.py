"""A lean local Ray head in a child process, started before the driver has imported torch.

A campaign with ``--backend ray`` on one machine needs a local Ray cluster. Starting it takes
a few CPU-seconds (the GCS, the raylet, their Python agents), and on a small machine every one
of them is taken from the campaign's work. Started from a child process as the first thing the
command does, the cluster comes up on the otherwise idle cores while the driver imports torch
and loads models and data; the driver then only connects (``ray.init(address=...)``).

The child (``python -m advrobust._rayhead NUM_CPUS LOG_MONITOR``, in a session of its own so
that a terminal's Ctrl-C reaches the driver alone) starts the head through Ray's node API
without the autoscaler monitor, the dashboard's API server and (unless the actors' output is
forwarded to the driver) the log monitor (~0.7 CPU-s each of these Python processes would
cost), and with one CPU per actor, so that the raylet's worker prestart starts exactly the
actors' Python workers as the raylet comes up, while the driver still imports torch. It prints
the cluster's address, then holds the cluster until its standard input closes: when the driver
is done, or when the driver
dies (a crash or SIGKILL closes the pipe too), so the cluster never outlives its campaign.
Where the node API does not fit the installed Ray, the child exits without an address and the
driver falls back to ``ray.init``.

This module imports neither torch nor Ray in the driver.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["Head", "head_cpus", "prestart", "take"]

#: Raylet settings of a local cluster whose CPUs are not known ahead (``ray.init`` fallback,
#: one actor per machine CPU): no idle Python workers started ahead of the actors (Ray starts
#: one per CPU, and the campaign's driver takes one CPU's share).
LEAN_SYSTEM_CONFIG = {"prestart_worker_first_driver": False, "enable_worker_prestart": False}
OBJECT_STORE_BYTES = 128 * 1024 ** 2


def head_cpus(workers: int) -> int | None:
    """The local cluster's CPUs for a campaign of ``workers`` (the driver and ``workers - 1``
    actors): one per actor, so that the raylet's worker prestart (one idle Python worker per
    cluster CPU, started with the raylet) starts exactly the actors' processes; None (every
    CPU of the machine, no prestart) for ``workers <= 0``."""
    if workers <= 0:
        return None
    return max(1, workers - 1)


class Head:
    """A head process being started; :meth:`address` waits for it."""

    def __init__(self, num_cpus: int | None, log_monitor: bool) -> None:
        self.key = (num_cpus, log_monitor)
        here = str(Path(__file__).resolve().parents[1])  # this advrobust, also in the child
        path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": path}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", __name__, str(num_cpus or 0), str(int(log_monitor))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, env=env, start_new_session=True)  # a terminal's Ctrl-C is the driver's
        self._address: str | None = None
        self._read = False
        self._lock = threading.Lock()

    def address(self) -> str | None:
        """The cluster's address once it is up; None when the head could not start."""
        with self._lock:
            if not self._read:
                self._read = True
                line = self.proc.stdout.readline() if self.proc.stdout else ""
                self._address = line.strip() or None
            return self._address

    def stop(self, wait: bool = True) -> None:
        """Stop the cluster (closes the child's input; it stops the cluster's processes and
        exits). ``wait=False``: return at once, the child is reaped by a thread (a finished
        campaign need not wait the second or more that the processes take to go)."""
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        if self.proc.stdout:
            self.proc.stdout.close()
        if not wait:
            threading.Thread(target=self._reap, name="rayhead-reaper", daemon=True).start()
            return
        self._reap()

    def _reap(self) -> None:
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_PRESTARTED: list[Head] = []


def prestart(num_cpus: int | None, log_monitor: bool) -> Head:
    """Start a head now, for the next :func:`take` with the same arguments."""
    head = Head(num_cpus, log_monitor)
    _PRESTARTED.append(head)
    return head


def take(num_cpus: int | None, log_monitor: bool) -> Head:
    """The head :func:`prestart` started with these arguments, or a new one."""
    for head in list(_PRESTARTED):
        _PRESTARTED.remove(head)
        if head.key == (num_cpus, log_monitor) and head.proc.poll() is None:
            return head
        head.stop()
    return Head(num_cpus, log_monitor)


def _serve(num_cpus: int, log_monitor: bool) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's: it finishes tasks
    from ray._private.node import Node
    from ray._private.parameter import RayParams

    # with the CPUs given (one per actor), the raylet starts one Python worker per CPU as it
    # comes up (Ray's worker, ~0.6 CPU-s), while the driver still imports torch: the actors
    # then start in those instead of waiting for new ones
    config = {**LEAN_SYSTEM_CONFIG, "enable_worker_prestart": bool(num_cpus)}
    fields: dict[str, Any] = {
        "num_cpus": num_cpus or None, "include_dashboard": False, "no_monitor": True,
        "include_log_monitor": log_monitor, "_system_config": config,
        "object_store_memory": OBJECT_STORE_BYTES}
    class LeanNode(Node):  # type: ignore[misc]
        def start_api_server(self, **_: Any) -> None:
            """No dashboard API server (job submission, state API; ~0.8 CPU-s to start): a
            campaign uses none of it, and Ray runs without it as when it fails to start."""

    try:
        node = LeanNode(RayParams(**fields), head=True, shutdown_at_exit=False,
                        spawn_reaper=True, ray_init_cluster=True)
    except Exception:  # another Ray version: no address, the driver uses ray.init
        return 1
    try:
        print(node.address, flush=True)
        sys.stdin.read()  # until the driver closes the pipe or dies
    finally:
        # Ray's graceful stop (SIGTERM, then a wait per process: 1-4 s of wall time under
        # load); the driver does not wait for it (Head.stop(wait=False))
        node.kill_all_processes(check_alive=False, allow_graceful=True)
    return 0


if __name__ == "__main__":
    code = _serve(int(sys.argv[1]), bool(int(sys.argv[2])))
    sys.stdout.flush()
    # no interpreter teardown: with Ray's modules loaded it took ~2 s (its gRPC / C++
    # state), and this process has nothing left to write or release
    os._exit(code)
