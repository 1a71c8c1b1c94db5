"""CPU seconds of a command's whole process tree, per component (Linux /proc).

Used by ``campaign_bench.py``: ``/proc/<pid>/stat`` of the command and every descendant (Ray's
GCS, raylet, agents and workers included) sampled every ``period`` seconds until the command
exits; each process counts with its last sample (user + system time), grouped by a role read
from its command line, with its start time after the command's. What a process spends after its
last sample is missing (at most ``period`` per process that outlives a sample: ~0.05 CPU-s).

``getrusage(RUSAGE_CHILDREN)`` is no substitute here: Ray kills its raylet with SIGKILL, and the
raylet's children (the agents, the actors' workers) are then reaped by no one in the tree, so
their CPU never reaches the command's rusage (tried with the bench as a child subreaper: none of
them was re-parented to it). Where there is no /proc the total is the command's rusage.
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ROLES = (  # (substring of the command line, role); first match wins
    ("advrobust._rayhead", "head child (node API)"),
    ("ray::DashboardAgent", "dashboard agent"),
    ("dashboard/agent.py", "dashboard agent"),
    ("ray::RuntimeEnvAgent", "runtime-env agent"),
    ("runtime_env/agent", "runtime-env agent"),
    ("log_monitor.py", "log monitor"),
    ("autoscaler/_private/monitor.py", "autoscaler monitor"),
    ("dashboard/dashboard.py", "dashboard head"),
    ("default_worker.py", "ray worker / actor"),
    ("ray::", "ray worker / actor"),
)


@dataclass
class Tree:
    """Per-process samples of one command's tree."""

    root: int
    cpu: dict[int, float] = field(default_factory=dict)
    role: dict[int, str] = field(default_factory=dict)
    start: dict[int, float] = field(default_factory=dict)  # s after the root's start

    def sample(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        parent, stat = {}, {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(entry.name)] = int(fields[1])
            stat[int(entry.name)] = fields
        family, grew = {self.root}, True
        while grew:
            new = {p for p, pp in parent.items() if pp in family or p in self.cpu} - family
            family |= new
            grew = bool(new)
        root_start = int(stat[self.root][19]) if self.root in stat else None
        for pid in family & stat.keys():
            fields = stat[pid]
            self.cpu[pid] = max(self.cpu.get(pid, 0.0), (int(fields[11]) + int(fields[12])) / tick)
            if pid not in self.role:
                self.role[pid] = "driver" if pid == self.root else _role(pid)
                if root_start is not None:
                    self.start[pid] = (int(fields[19]) - root_start) / tick
            elif self.role[pid] == "python (other)":  # Ray renames its workers later
                self.role[pid] = _role(pid)

    def by_role(self) -> dict[str, tuple[float, int, float]]:
        """role -> (CPU s, processes, earliest start s)."""
        out: dict[str, tuple[float, int, float]] = {}
        for pid, cpu in self.cpu.items():
            role = self.role[pid]
            c, n, s = out.get(role, (0.0, 0, float("inf")))
            out[role] = (c + cpu, n + 1, min(s, self.start.get(pid, float("inf"))))
        return out


def _role(pid: int) -> str:
    try:
        line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "gone"
    exe = line.split(" ")[0].rsplit("/", 1)[-1]
    if exe in ("gcs_server", "raylet"):  # (their flags name the other components)
        return exe
    for needle, role in ROLES:
        if needle in line:
            return role
    return "python (other)" if "python" in line else line.split(" ")[0].rsplit("/", 1)[-1]


def run(cmd: list[str], env: dict[str, str], period: float = 0.05
        ) -> tuple[float, float, Tree | None, subprocess.CompletedProcess[str]]:
    """Run ``cmd``: wall s, CPU s of its whole tree, the per-process samples."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    tree = Tree(proc.pid) if Path("/proc/self/stat").is_file() else None
    while proc.poll() is None:
        if tree is not None:
            tree.sample()
        time.sleep(period)
    wall = time.perf_counter() - t0
    out, err = proc.communicate()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rusage = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    cpu = rusage if tree is None else max(rusage, sum(tree.cpu.values()))
    return wall, cpu, tree, subprocess.CompletedProcess(cmd, proc.returncode, out, err)
