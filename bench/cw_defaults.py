"""Which C&W l2 settings succeed wherever PGD does at the same eps (issue 15, item 2).

Run by hand (not by pytest), one thread:

    PYTHONPATH=src python bench/cw_defaults.py --model runs/mlp2.pt --data mnist \
        --data-dir ../shared/data/mnist --n 200 --eps 1.5 3
    PYTHONPATH=src python bench/cw_defaults.py --model runs/digits.pt --data digits --n 200 \
        --eps 0.5 1
    # only the paper's row and the defaults' row: --only 0,6

For every eps, PGD-l2 (100 steps, 1 restart) fixes the samples a gradient attack breaks; each C&W
configuration (lr, steps, binary-search steps, initial constant) is scored on the same correctly
classified test images: samples broken, samples PGD breaks that C&W misses, median l2 norm of
its successes and seconds. Prints a Markdown table (``--json FILE`` also writes the rows).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import torch

from advrobust import LpBall
from advrobust.attacks import PGD, CarliniWagner
from advrobust.data import load_dataset
from advrobust.models import load_checkpoint

#: (lr, steps, binary_search_steps, initial_const); the first row is the paper's.
GRID = (
    (0.01, 100, 9, 1e-3),
    (0.01, 1000, 9, 1e-3),
    (0.05, 100, 9, 1e-3),
    (0.1, 100, 9, 1e-3),
    (0.2, 100, 9, 1e-3),
    (0.1, 100, 9, 1e-2),
    (0.1, 100, 5, 1e-1),
    (0.1, 100, 5, 1.0),
    (0.1, 200, 5, 1e-1),
    (0.05, 200, 5, 1e-1),
)


def _data(args: argparse.Namespace, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset(args.data, split="test", root=args.data_dir)
    x, y = data.x[: 3 * args.n], data.y[: 3 * args.n]
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    return x[keep][: args.n], y[keep][: args.n]


def _row(name: str, res: object, pgd_broken: torch.Tensor, seconds: float) -> dict[str, object]:
    success = res.success  # type: ignore[attr-defined]
    norms = res.norm[success]  # type: ignore[attr-defined]
    return {"attack": name, "broken": int(success.sum()), "n": int(success.numel()),
            "missed_vs_pgd": int((pgd_broken & ~success).sum()),
            "median_norm": float(norms.median()) if norms.numel() else float("nan"),
            "seconds": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--eps", type=float, nargs="+", default=[1.5, 3.0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--only", default=None,
                        help="comma-separated row numbers of GRID to run (default: all)")
    args = parser.parse_args()
    grid = GRID if args.only is None else [GRID[int(i)] for i in args.only.split(",")]
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    model = load_checkpoint(args.model).model.eval()
    x, y = _data(args, model)
    rows = []
    for eps in args.eps:
        threat = LpBall("l2", eps)
        t0 = time.perf_counter()
        pgd = PGD(steps=100)(model, x, y, threat, generator=torch.Generator().manual_seed(0))
        rows.append({"eps": eps, **_row("PGD-100", pgd, pgd.success, time.perf_counter() - t0)})
        for lr, steps, bss, c0 in grid:
            t0 = time.perf_counter()
            cw = CarliniWagner(lr=lr, steps=steps, binary_search_steps=bss,
                               initial_const=c0)(model, x, y, threat)
            name = f"C&W lr={lr} steps={steps} search={bss} c0={c0:g}"
            rows.append({"eps": eps, **_row(name, cw, pgd.success, time.perf_counter() - t0)})
            print(rows[-1], flush=True)
    load = os.getloadavg()
    print(f"\n{args.data} {args.model}, {x.shape[0]} correctly classified test images, one "
          f"thread, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    print("| eps | attack | broken | PGD-broken missed | median l2 | s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['eps']} | {r['attack']} | {r['broken']}/{r['n']} | {r['missed_vs_pgd']} | "
              f"{r['median_norm']:.3f} | {r['seconds']} |")
    if args.json:
        args.json.write_text(json.dumps({"load": load, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
