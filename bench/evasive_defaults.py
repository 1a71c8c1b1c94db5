"""Which EvasiveCW settings fool classifier and detector at once (issue 15, detect's C&W).

Run by hand (not by pytest), one thread:

    PYTHONPATH=src python bench/evasive_defaults.py --n 150
    PYTHONPATH=src python bench/evasive_defaults.py --model runs/mnist.pt --data mnist \
        --data-dir ../shared/data/mnist --n 100

Without ``--model`` a ``small`` MLP is trained on the first 700 digits training images (as in
tests/detection); the gradient-norm detector is calibrated at 5 % FPR on the rest of the
training split. Every EvasiveCW configuration (lr, steps, binary-search steps, initial
constant) attacks the same correctly classified test images inside ``detect``'s default l2
ceiling (10, i.e. unconstrained): evasion rate (misclassified **and** undetected), success
rate, median l2 norm of the evading examples, seconds. The first row is the old default (C&W
paper's lr 0.01 with 9 binary-search steps). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from advrobust import LpBall
from advrobust.data import load_dataset
from advrobust.detection import EvasiveCW, GradientNormDetector
from advrobust.models import build_model, load_checkpoint
from advrobust.training import fit

#: (lr, steps, binary_search_steps, initial_const); the first row is the former default.
GRID = (
    (0.01, 100, 9, 0.1),
    (0.01, 1000, 9, 0.1),
    (0.05, 100, 9, 0.1),
    (0.1, 100, 5, 0.1),
    (0.1, 100, 9, 0.1),
    (0.2, 100, 5, 0.1),
    (0.1, 100, 5, 1.0),
)


def _model(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor]:
    """The attacked model and the clean images its detector is calibrated on."""
    train = load_dataset(args.data, split="train", root=args.data_dir)
    if args.model is not None:
        return load_checkpoint(args.model).model, train.take(1000).x
    model = build_model("small", (1, 8, 8), seed=0)
    fit(model, train.take(700), epochs=15, lr=0.05, momentum=0.9, batch_size=50, seed=0,
        progress=False)
    return model.eval(), train.x[700:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--data", default="digits")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--n", type=int, default=150)
    parser.add_argument("--l2-eps", type=float, default=10.0)
    parser.add_argument("--only", default=None, help="rows of GRID to run, e.g. 0,3")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, calibration = _model(args)
    detector = GradientNormDetector(fpr=0.05).fit(model, calibration)
    test = load_dataset(args.data, split="test", root=args.data_dir).take(args.n)
    with torch.no_grad():
        correct = model(test.x).argmax(1) == test.y
    x, y = test.x[correct], test.y[correct]
    threat = LpBall("l2", args.l2_eps)
    print(f"{args.data}: {len(y)} correctly classified of {args.n}; l2 ceiling {args.l2_eps}; "
          f"detector threshold {detector.threshold_:.3f}")
    print("| lr | steps | search | c0 | evasion | success | median l2 (evading) | s |")
    print("|---|---|---|---|---|---|---|---|")
    rows = GRID if args.only is None else [GRID[int(i)] for i in args.only.split(",")]
    for lr, steps, search, c0 in rows:
        attack = EvasiveCW(detector=detector, lr=lr, steps=steps, binary_search_steps=search,
                           initial_const=c0)
        start = time.perf_counter()
        res = attack(model, x, y, threat, generator=torch.Generator().manual_seed(0))
        seconds = time.perf_counter() - start
        evading = res.success & ~detector.predict(res.x_adv)
        med = float(res.norm[evading].median()) if bool(evading.any()) else float("nan")
        print(f"| {lr} | {steps} | {search} | {c0} | {float(evading.float().mean()):.3f} | "
              f"{float(res.success.float().mean()):.3f} | {med:.3f} | {seconds:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
