"""beta-CROWN BaB on a residual network (issue 10/11, "graphbab"): the ``auto`` cascade before
(CROWN -> attack -> MILP, what main ran on every graph) and after (CROWN -> attack -> BaB) on a
small MNIST ResNet built from the library's residual block, a few test images, small eps.

The network: a 4x4 stride-4 convolution stem (8 channels, 7x7), ``ResidualBlock(8, 8)``,
``ResidualBlock(8, 16, stride=2)`` (4x4), global average pooling, a linear head: 1,688 ReLUs,
residual additions and a 1x1 strided shortcut (``advrobust.models.resnet.ResidualBlock``). It is
trained here for one seeded epoch of plain Adam on the MNIST training images (a few CPU
minutes), so that the margins are those of a classifier; labels are the test labels, the images
the first ones it classifies correctly. "before" patches ``Problem.branchable`` to False (the
cascade then runs the MILP on graphs, as main did); both runs see the same images and the same
attack seed, interleaved image by image so that both see the same load.

Run by hand (one torch thread)::

    OMP_NUM_THREADS=1 nice -n 10 python bench/bab_graph.py --root ../shared/data \\
        --images 8 --eps 0.01 0.02 --time 30
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from advrobust.core import LpBall
from advrobust.core.result import Verdict
from advrobust.data import load_dataset
from advrobust.evaluation.verify import verify_dataset
from advrobust.models.resnet import ResidualBlock
from advrobust.verify.problem import Problem


def small_resnet(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 4, stride=4), nn.ReLU(), ResidualBlock(8, 8),
                         ResidualBlock(8, 16, stride=2), nn.AvgPool2d(4), nn.Flatten(),
                         nn.Linear(16, 10))


def train(model: nn.Module, root: Path, seed: int) -> float:
    data = load_dataset("mnist", "train", root=root)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data.y), generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(3):
        for idx in order.split(64):
            loss = nn.functional.cross_entropy(model(data.x[idx]), data.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return float(loss.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.01, 0.02])
    parser.add_argument("--time", type=float, default=30.0, help="exact seconds per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", type=int, default=0, help="correctly classified images "
                        "skipped before the ones verified")
    args = parser.parse_args()
    model = small_resnet(args.seed)
    t0 = time.process_time()
    loss = train(model, args.root, args.seed)
    model.eval()
    test = load_dataset("mnist", "test", root=args.root)
    with torch.no_grad():
        pred = model(test.x[:2000]).argmax(1)
    acc = float((pred == test.y[:2000]).float().mean())
    print(f"trained: last loss {loss:.3f}, test accuracy (first 2000) {acc:.4f}, "
          f"{time.process_time() - t0:.0f} CPU s")
    keep = (pred == test.y[:2000]).nonzero().flatten()[args.skip:args.skip + args.images]
    x, y = test.x[keep], test.y[keep]
    real = Problem.branchable
    print("| eps | run | verified | falsified | unknown | exact stage | wall s | CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for eps in args.eps:
        threat = LpBall("linf", eps, lo=0.0, hi=1.0)
        totals: dict[str, list[float]] = {"before": [0, 0, 0, 0, 0], "after": [0, 0, 0, 0, 0]}
        stage: dict[str, str] = {}
        for i in range(len(y)):
            for run in ("before", "after"):
                Problem.branchable = property(lambda self: False) if run == "before" \
                    else real  # type: ignore[method-assign,assignment]
                c0, w0 = time.process_time(), time.perf_counter()
                rep = verify_dataset(model, x[i:i + 1], y[i:i + 1], threat, method="auto",
                                     time_limit=args.time, progress=False,
                                     generator=torch.Generator().manual_seed(args.seed))
                t = totals[run]
                t[0] += rep.verdict[0] is Verdict.VERIFIED
                t[1] += rep.verdict[0] is Verdict.FALSIFIED
                t[2] += rep.verdict[0] is Verdict.UNKNOWN
                t[3] += time.perf_counter() - w0
                t[4] += time.process_time() - c0
                stage[run] = next((s for s in ("bab", "milp") if s in rep.stage_seconds), "-")
                print(f"  eps {eps} image {i} {run}: {rep.verdict[0].value} by "
                      f"{rep.decided_by[0] or '-'}, worst row lower bound "
                      f"{float(rep.lower.min()):+.4f}, stages "
                      + ", ".join(f"{k} {v:.1f}s" for k, v in rep.stage_seconds.items()),
                      flush=True)
        Problem.branchable = real  # type: ignore[method-assign]
        for run, t in totals.items():
            print(f"| {eps} | {run} | {t[0]:.0f} | {t[1]:.0f} | {t[2]:.0f} | {stage[run]} | "
                  f"{t[3]:.1f} | {t[4]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
