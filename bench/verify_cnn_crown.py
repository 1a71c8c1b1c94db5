"""CPU time, wall time and peak memory of ``CROWN()`` on the course ``cnn`` (untrained, seed 0)
for one MNIST test image: the conv-network cost of the float64 bound passes (issue 10).

Run by hand::

    python bench/verify_cnn_crown.py --shared ../shared/data --eps 0.01
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch

from advrobust.core import LpBall
from advrobust.data import load_dataset
from advrobust.models import build_model
from advrobust.relax import CROWN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--eps", type=float, default=0.01)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("cnn", (1, 28, 28)).eval()
    ds = load_dataset("mnist", split="test", root=args.shared)
    x, y = ds.x[:1], ds.y[:1]
    start = time.perf_counter()
    res = CROWN()(model, x, y, LpBall("linf", args.eps))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"cpu_s={usage.ru_utime + usage.ru_stime:.1f} wall_s={time.perf_counter() - start:.1f} "
          f"peak_rss_MB={usage.ru_maxrss / 1024:.0f} lower_min={float(res.lower.min()):.6g}")


if __name__ == "__main__":
    main()
