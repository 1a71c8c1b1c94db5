"""Shared pieces of the defense benchmarks: MNIST, the small CNN, timing, result rows.

Run by hand (not by pytest). Data default: ../shared/data/mnist beside the repository.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MNIST = REPO.parent / "shared" / "data" / "mnist"
RUNS = REPO / "runs" / "defenses"


def small_cnn(seed: int = 0) -> nn.Sequential:
    """Wong & Kolter's (2018) small MNIST CNN, also the MNIST model of Wong, Rice & Kolter
    (2020): conv 16 4x4 /2, conv 32 4x4 /2, FC 100, FC 10 (ReLU)."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10))
    torch.random.set_rng_state(gen_state)
    return model


def mnist(split: str, root: Path) -> Any:
    """The MNIST split from ``root`` (warnings about the truncated train file are expected)."""
    from advrobust.data import load_dataset

    return load_dataset("mnist", split=split, root=root)


def common_args(parser: argparse.ArgumentParser) -> None:
    """``--data-dir --threads --seed --out``."""
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_MNIST)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")


def machine() -> str:
    """A line describing the machine and its load."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, torch "
            f"{torch.__version__}, {torch.get_num_threads()} thread(s), load average at end "
            f"{load:.1f}")


class Timer:
    """Wall-clock stopwatch."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


def write(out: Path | None, payload: dict[str, Any]) -> None:
    """Print ``payload`` as JSON and write it to ``out`` if given."""
    payload = {**payload, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
               "machine": machine()}
    text = json.dumps(payload, indent=2, default=str)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
