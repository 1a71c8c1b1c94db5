"""Exact verification timings (BaB on ReLU splits, MILP on HiGHS) on the ``small`` MNIST network.

Run by hand after ``bench/verify_train.py``::

    python bench/verify_exact.py --model runs/verify_small_mnist.pt --data-dir ../shared/data/mnist

(1) one test image, eps 0.05, every one of its 9 target rows decided (no early stop):
``BaB(early_stop=False)`` (stops a row once its sign is decided) and
``MILP(early_stop=False, skip_verified=False)`` (solves each row to the exact minimum), total
time; (2) the first ``--n`` test images at eps 0.02 through ``verify_dataset(method=...)``
(CROWN first, the exact method on the rest): how many are decided, time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from advrobust.core.result import VERIFY_TOLERANCE
from advrobust.core.threat import LpBall
from advrobust.data import load_dataset
from advrobust.evaluation.verify import verify_dataset
from advrobust.exact import MILP, BaB
from advrobust.models import load_checkpoint


def all_targets(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                threads: int, time_limit: float, method: str) -> None:
    verifier = (BaB(time_limit=time_limit, early_stop=False) if method == "bab" else
                MILP(time_limit=time_limit, threads=threads, early_stop=False,
                     skip_verified=False))
    start, cpu = time.perf_counter(), time.process_time()
    result = verifier(model, x, y, LpBall("linf", eps))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    targets = [t for t in range(10) if t != int(y[0])]
    print(f"{verifier!r}: image label {int(y[0])}, eps {eps}: {seconds:.2f} s for all 9 "
          f"targets ({cpu:.2f} CPU s, threads={threads})")
    print("| target | lower | upper | decided |")
    print("|---|---|---|---|")
    for k, t in enumerate(targets):
        lo, up = float(result.lower[0, k]), float(result.upper[0, k])
        decided = "verified" if lo > VERIFY_TOLERANCE else "falsified" if up < 0 else "no"
        print(f"| {t} | {lo:.4f} | {up:.4f} | {decided} |")


def many_images(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                threads: int, time_limit: float, method: str) -> None:
    report = verify_dataset(model, x, y, LpBall("linf", eps), method=method,
                            time_limit=time_limit, threads=threads, progress=False)
    s = report.summary()
    print(f"method={method}: {s['n']} images, eps {eps}: verified {s['verified']}, "
          f"falsified {s['falsified']}, "
          f"unknown {s['unknown']}; {s['seconds']:.1f} s total "
          f"(stages {({k: round(v, 1) for k, v in s['stage_seconds'].items()})}), "
          f"decided by {s['decided_by']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("runs/verify_small_mnist.pt"))
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/mnist"))
    parser.add_argument("--image", type=int, nargs="+", default=[0],
                        help="test images for part (1)")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--skip", choices=("targets", "images"), default=None)
    parser.add_argument("--methods", nargs="+", choices=("bab", "milp"), default=["bab", "milp"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.model).model.eval()
    data = load_dataset("mnist", "test", args.data_dir)
    for method in args.methods:
        if args.skip != "targets":
            for i in args.image:
                all_targets(model, data.x[i:i + 1], data.y[i:i + 1], 0.05, args.threads,
                            args.time_limit, method)
        if args.skip != "images":
            part = data.take(args.n)
            many_images(model, part.x, part.y, 0.02, args.threads, args.time_limit, method)


if __name__ == "__main__":
    main()
