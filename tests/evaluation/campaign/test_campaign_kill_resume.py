"""A campaign killed with SIGKILL (and stopped with Ctrl-C) resumes to the same store."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _campaign_fixtures import write_config

from advrobust.evaluation.campaign import ResultStore, load_config, run_campaign

SRC = Path(__file__).resolve().parents[3] / "src"


def _start(config: Path, db: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "advrobust", "campaign", "run", str(config),
                             "--store", str(db), "--no-progress"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _rows(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM units").fetchone()[0])
    except sqlite3.OperationalError:  # tables not created yet
        return 0


def _wait_for_progress(proc: subprocess.Popen[str], db: Path, seen: int) -> int:
    """Wait until the running campaign has committed new units (or ended)."""
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        now = _rows(db)
        if now > seen:
            return now
        time.sleep(0.02)
    return _rows(db)


def _snapshot(db: Path) -> list[tuple]:
    with ResultStore(db, readonly=True) as store:
        assert store.integrity() == "ok"
        return [(r["model"], r["sample"], r["norm"], r["eps_index"], r["verdict"],
                 r["status"], r["decided_by"]) for r in store.rows()]


@pytest.mark.slow
def test_sigkill_and_ctrl_c_then_resume_equals_uninterrupted(folder: Path) -> None:
    config_file = write_config(folder, n=48, batch_size=2)
    reference = folder / "reference.db"
    run_campaign(load_config(config_file), reference, progress=False)
    db, rng, kills = folder / "killed.db", random.Random(0), 0
    proc = _start(config_file, db)  # Ctrl-C: finish the running task, say how to resume
    seen = _wait_for_progress(proc, db, 0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    seen = _rows(db)
    if seen < 48 * 4:  # it had work left: it stopped early, store intact, resume command shown
        assert proc.returncode == 130, err
        assert "Resume with" in err and str(db) in err
    for _ in range(3):  # SIGKILL at a random moment after some progress
        proc = _start(config_file, db)
        seen = _wait_for_progress(proc, db, seen)
        time.sleep(rng.uniform(0.0, 0.15))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        seen = _rows(db)
    final = _start(config_file, db)  # resume to the end
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    assert kills >= 1
    got, want = _snapshot(db), _snapshot(reference)
    assert len(got) == len({g[:4] for g in got}) == 48 * 4  # no duplicate, no missing unit
    assert got == want  # same verdicts and deciding stages as the uninterrupted run
