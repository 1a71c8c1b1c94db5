"""Seeds out of range are refused everywhere; one ``campaign run`` per store at a time."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from advrobust.cli import main
from advrobust.core._atomic import FileClaim
from advrobust.core._validation import MAX_SEED
from advrobust.errors import FileInUseError, InvalidParameterError

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.mark.parametrize("command", [
    ["attack", "--model", "m.pt", "--eps", "0.1"], ["verify", "--model", "m.pt", "--eps", "0.1"],
    ["evaluate", "--model", "m.pt", "--eps", "0.1"], ["detect", "--model", "m.pt"],
    ["train", "--out", "m.pt"], ["smooth", "certify", "--model", "m.pt"],
    ["dictionary", "learn", "--out", "d.npz"], ["demo"],
    ["experiment", "robust-net"]])
@pytest.mark.parametrize("seed", ["-1", str(MAX_SEED + 1), "1.5"])
def test_cli_refuses_bad_seeds(command: list[str], seed: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*command, "--seed", seed])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--seed" in err and f"[0, {MAX_SEED}]" in err and seed in err


def test_library_refuses_negative_seeds() -> None:
    from advrobust.attacks.gradient import pgd
    from advrobust.evaluation import robustness_report
    from advrobust.experiments.robust_net import robust_net
    from advrobust.models import build_model

    model = build_model("mlp2", (1, 8, 8), 10, seed=MAX_SEED)  # the top of the range is fine
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    calls = [lambda: build_model("mlp2", (1, 8, 8), 10, seed=-1),
             lambda: pgd(model, x, y, eps=0.1, seed=-1),
             lambda: robustness_report(model, (x, y), _threat(), seed=-5),
             lambda: robust_net(seed=-1)]
    for call in calls:
        with pytest.raises(InvalidParameterError, match=r"'seed' parameter .* \[0, 4294967295\]"):
            call()


def _threat() -> object:
    from advrobust.core import LpBall

    return LpBall("linf", 0.1)


def test_file_claim_names_the_owner_and_is_released(tmp_path: Path) -> None:
    target = tmp_path / "r.db"
    with FileClaim(target, "the store"):
        with pytest.raises(FileInUseError, match=f"in use by PID {os.getpid()}"):
            FileClaim(target, "the store").__enter__()
    with FileClaim(target, "the store"):  # released on exit: claimable again
        pass
    assert not (tmp_path / ".r.db.lock").exists()


CONFIG = """
seed = 1
batch_size = 2
[data]
name = "digits"
n = 120
[[models]]
name = "mlp"
checkpoint = "{ckpt}"
[[threats]]
norm = "linf"
eps = [0.05, 0.1]
[[attacks]]
name = "pgd"
params = {{ steps = 20, restarts = 1 }}
"""


def _start(config: Path, db: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "advrobust", "campaign", "run", str(config),
                             "--store", str(db), "--no-progress"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _rows(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM units").fetchone()[0])
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_second_campaign_run_on_a_store_in_use_is_refused(tmp_path: Path,
                                                          digits_checkpoint: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.format(ckpt=digits_checkpoint))
    db = tmp_path / "r.db"
    first = _start(config, db)
    try:
        deadline = time.monotonic() + 120
        while first.poll() is None and _rows(db) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)  # the first run has written units: it holds the store
        assert first.poll() is None, "the first campaign ended before it could be paused"
        first.send_signal(signal.SIGSTOP)  # keep it mid-run, however fast the machine
        second = _start(config, db)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        assert f"in use by PID {first.pid}" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
    finally:
        first.send_signal(signal.SIGCONT)
    first.send_signal(signal.SIGINT)  # Ctrl-C: stops after the running task, store intact
    first.communicate(timeout=120)
    assert first.returncode in (0, 130)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        keys = conn.execute("SELECT model, sample, norm, eps_index FROM units").fetchall()
    assert 0 < len(keys) == len(set(keys))  # only the first run wrote, each unit once
