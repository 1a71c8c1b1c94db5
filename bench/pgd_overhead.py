"""PGD-40 overhead: wall time of ``PGD(steps=40)`` over a bare loop of 40 forward+backward passes.

Same model (MNIST ``cnn``), same batch of 100 MNIST test images, eval mode, parameters frozen
(``requires_grad=False``, which is what the attack does too), input gradients by
``torch.autograd.grad`` of the cross-entropy. The bare loop does nothing else: no projection,
no step, no validation. The ratio is measured ``--repeats`` times, interleaving the two, and
the median is reported (odd repeats run PGD first, even ones the bare loop); target <= 1.10.

Usage (from the repo root):
    python bench/pgd_overhead.py --repeats 7 --threads 1
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust import LpBall
from advrobust.attacks import PGD
from advrobust.data import load_dataset
from advrobust.models import build_model, load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def bare_loop(model: nn.Module, x: Tensor, y: Tensor, steps: int) -> None:
    """``steps`` forward + backward passes to the input, nothing else."""
    for _ in range(steps):
        xr = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(xr), y)
        torch.autograd.grad(loss, xr)


def timed(fn: object) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()  # type: ignore[operator]
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "mnist")
    p.add_argument("--checkpoint", type=Path, default=REPO / "runs" / "course" / "cnn.pt",
                   help="trained cnn if present (else random weights: the timing is the same)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--unfrozen", action="store_true",
                   help="also time a bare loop whose parameters require grad")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.checkpoint.exists():
        model = load_checkpoint(args.checkpoint).model
    else:
        model = build_model("cnn", (1, 28, 28), 10, seed=0)
    model.eval()
    test = load_dataset("mnist", "test", args.data_dir).take(100)
    x, y = test.x, test.y
    threat = LpBall("linf", 0.1)
    attack = PGD(steps=args.steps, step_size=0.01)

    def pgd_run() -> None:
        attack(model, x, y, threat, generator=torch.Generator().manual_seed(0))

    def frozen_loop() -> None:
        flags = [q.requires_grad for q in model.parameters()]
        for q in model.parameters():
            q.requires_grad_(False)
        try:
            bare_loop(model, x, y, args.steps)
        finally:
            for q, f in zip(model.parameters(), flags, strict=True):
                q.requires_grad_(f)

    pgd_run(), frozen_loop()  # warm-up
    ratios, cpu_ratios, ratios_unfrozen, pgd_times, bare_times = [], [], [], [], []
    for repeat in range(args.repeats):
        if repeat % 2:  # alternate which one runs first, so cache / allocator warmth cancels
            t_pgd, c_pgd = timed(pgd_run)
            t_bare, c_bare = timed(frozen_loop)
        else:
            t_bare, c_bare = timed(frozen_loop)
            t_pgd, c_pgd = timed(pgd_run)
        t_unfrozen = (timed(lambda: bare_loop(model, x, y, args.steps))[0]
                      if args.unfrozen else math.nan)
        ratios.append(t_pgd / t_bare)
        cpu_ratios.append(c_pgd / c_bare)
        ratios_unfrozen.append(t_pgd / t_unfrozen)
        pgd_times.append(t_pgd)
        bare_times.append(t_bare)
    print(f"PGD-{args.steps} cnn batch 100, torch threads {args.threads}, "
          f"{args.repeats} repeats")
    print(f"  bare loop (params frozen): median {statistics.median(bare_times):.3f} s")
    print(f"  PGD:                       median {statistics.median(pgd_times):.3f} s")
    print(f"  wall ratio PGD / bare (frozen params):   median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
    print(f"  CPU-time ratio PGD / bare (frozen params): median "
          f"{statistics.median(cpu_ratios):.3f} (min {min(cpu_ratios):.3f}, "
          f"max {max(cpu_ratios):.3f})")
    if args.unfrozen:
        print(f"  wall ratio PGD / bare (params need grad): median "
              f"{statistics.median(ratios_unfrozen):.3f}")

if __name__ == "__main__":
    main()
