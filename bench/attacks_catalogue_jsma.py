"""JSMA at CIFAR-10 size: time and peak memory of the chunked pair search.

Run by hand (not by pytest):

    OMP_NUM_THREADS=1 python bench/attacks_catalogue_jsma.py --n 20 --gamma 0.01

Attacks the first ``--n`` of the 100 CIFAR-10 test images in ``../shared/data/cifar10`` with
``JSMA(theta=1, gamma=...)`` (targeted at the next class) on the ``lenet`` reference model
(seeded, untrained: the point is the memory and time of the search, not the success rate), and
reports the process's peak resident memory (``ru_maxrss``) before and after the attack beside the
size one dense (N, D, D) float32 pair-score tensor would have (D = 3,072).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from advrobust import LpBall
from advrobust.attacks import JSMA
from advrobust.attacks.jsma import pair_block_rows
from advrobust.data import load_dataset
from advrobust.models import build_model

REPO = Path(__file__).resolve().parents[1]


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--gamma", type=float, default=0.01)
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared/data/cifar10")
    parser.add_argument("--out", type=Path, default=REPO / "runs/catalogue1/jsma_cifar.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("cifar10", split="test", root=args.data_root).take(args.n)
    model = build_model("lenet", (3, 32, 32), 10, seed=0).eval()
    with torch.no_grad():
        y = model(data.x).argmax(1)
    n, d = data.x.shape[0], data.x[0].numel()
    before = peak_mib()
    start = time.perf_counter()
    res = JSMA(theta=1.0, gamma=args.gamma)(model, data.x, y, LpBall("linf", 1.0),
                                            target=(y + 1) % 10)
    seconds = time.perf_counter() - start
    row = {"n": n, "features": d, "gamma": args.gamma,
           "max_changed": int(res.info["changed"].max()),
           "success_rate": res.success_rate, "seconds": seconds,
           "peak_rss_mib_before": before, "peak_rss_mib_after": peak_mib(),
           "block_rows": pair_block_rows(n, d),
           "block_scores_mib": n * pair_block_rows(n, d) * d * 4 / 2**20,
           "dense_pair_tensor_mib": n * d * d * 4 / 2**20}
    print(json.dumps(row, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
