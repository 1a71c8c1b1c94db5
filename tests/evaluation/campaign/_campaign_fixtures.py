"""A tiny digits model and campaign file shared by the campaign tests."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

#: The driver's pid, set by a test; :func:`tagged` is slow in that process.
DRIVER_PID = "ADVROBUST_TEST_DRIVER_PID"

CONFIG = """
seed = 3
batch_size = {batch_size}

[data]
name = "digits"
start = 0
n = {n}

[[models]]
name = "mlp"
checkpoint = "{checkpoint}"

[[threats]]
norm = "linf"
eps = [0.02, 0.05, 0.1, 0.2]

[[attacks]]
name = "pgd"
params = {{ steps = 10, restarts = 1 }}

[certify]
methods = ["ibp", "crown"]
time_limit = 0.5
"""


def make_checkpoint(folder: Path) -> Path:
    """A 64-32-10 ReLU MLP trained for a few epochs on digits (seeded, ~1 s)."""
    from advrobust.data import load_dataset
    from advrobust.models import build_model, save_checkpoint
    from advrobust.training import fit

    path = folder / "mlp.pt"
    if path.is_file():
        return path
    train = load_dataset("digits", "train")
    model = build_model("mlp2", train.input_shape, train.num_classes, seed=0)
    fit(model, train, epochs=3, batch_size=64, progress=False, seed=0)
    return save_checkpoint(path, model, arch="mlp2",
                           arch_kwargs={"input_shape": list(train.input_shape)})


def write_config(folder: Path, n: int = 24, batch_size: int = 4) -> Path:
    """The campaign file (in ``folder``, next to its checkpoint)."""
    ckpt = make_checkpoint(folder)
    path = folder / "campaign.toml"
    path.write_text(CONFIG.format(n=n, batch_size=batch_size, checkpoint=ckpt.name))
    return path


def tagged(config: Any, task: Any) -> Any:
    """``execute``, leaving a file ``ran/CHUNK-PID`` beside the config to say which process
    ran the task. In the process named by ``$ADVROBUST_TEST_DRIVER_PID`` it first waits (up to
    2 minutes) until another process (a Ray actor) has run a task, so that a driver that
    helps while its workers start cannot do all the work itself."""
    from advrobust.evaluation.campaign.workers import execute

    out = Path(config.source).parent / "ran"
    out.mkdir(exist_ok=True)
    me = str(os.getpid())
    if os.environ.get(DRIVER_PID) == me:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and \
                all(p.name.split("-")[1] == me for p in out.iterdir()):
            time.sleep(0.05)
    (out / f"{task.chunk}-{os.getpid()}").touch()
    return execute(config, task)


def crash_on_chunk_zero(config: Any, task: Any) -> Any:
    """Kills the process that runs task 0 (a segfault-like death), runs the others."""
    from advrobust.evaluation.campaign.workers import execute

    if task.chunk == 0:
        os._exit(3)
    return execute(config, task)
