"""SIGINT after the first batch: verify / evaluate / attack / detect keep the finished batches.

Each command runs in its own process on all 450 digits test images in batches of 10; the test
waits until the first batch's rows are on disk (no sleep guess), sends SIGINT, and checks the
exit status 130, the one line saying what was kept, and that the files and the printed report
hold exactly the finished samples.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

COMMANDS = {
    "verify": ["--eps", "0.05", "--method", "lp"],
    "evaluate": ["--eps", "0.1", "--no-ensemble", "--pgd-steps", "50"],
    "attack": ["--eps", "0.1", "--steps", "100", "--save-examples", "{dir}/ex.npz"],
    "detect": ["--attacks", "pgd", "--fit-n", "100"],
}


def _start(command: str, ckpt: Path, folder: Path) -> subprocess.Popen[str]:
    extra = [a.format(dir=folder) for a in COMMANDS[command]]
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "advrobust", command, "--model", str(ckpt), "--data", "digits",
         "--n", "450", "--batch-size", "10", "--save", str(folder / "rows.jsonl"), "--json",
         "--no-progress", *extra], env=env, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)


def _rows(path: Path) -> list[dict[str, object]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


@pytest.mark.slow
def test_sigint_after_the_first_batch_keeps_it(digits_checkpoint: Path, tmp_path: Path) -> None:
    folders = {c: tmp_path / c for c in COMMANDS}
    procs = {}
    for command, folder in folders.items():  # all four at once: the start-up costs overlap
        folder.mkdir()
        procs[command] = _start(command, digits_checkpoint, folder)
    pending, deadline = set(procs), time.monotonic() + 240
    while pending and time.monotonic() < deadline:
        for command in list(pending):
            if _rows(folders[command] / "rows.jsonl") or procs[command].poll() is not None:
                procs[command].send_signal(signal.SIGINT)  # a batch is finished and written
                pending.discard(command)
        time.sleep(0.01)
    for command, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        _check(command, proc.returncode, out, err, folders[command])


def _check(command: str, code: int, out: str, err: str, folder: Path) -> None:
    assert code == 130, (command, err)
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    prefix = f"advrobust {command}: interrupted (Ctrl-C) after "
    assert line.startswith(prefix) and "of 450 samples; saved" in line, line
    done = int(line[len(prefix):].split()[0])
    assert 10 <= done < 450 and done % 10 == 0
    rows = _rows(folder / "rows.jsonl")
    assert [r["index"] for r in rows] == list(range(done)), command  # whole batches, in order
    assert f"{done} per-sample rows" in line
    assert (folder / "rows.npz").is_file()
    if command == "attack":
        assert np.load(folder / "ex.npz")["x_adv"].shape[0] == done
    else:  # the report of the finished samples, marked as such
        report = json.loads(out)
        assert report["interrupted"] == f"the first {done} of 450 samples"
        assert report.get("n", done) == done


def test_cli_processes_of_the_suite_receive_sigint() -> None:
    """The commands the Ctrl-C tests start must not inherit an ignored SIGINT (a suite run as
    a background job of a script does: tests/conftest.py restores the default handler)."""
    probe = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "True"
