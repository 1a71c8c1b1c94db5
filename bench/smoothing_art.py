"""Randomized smoothing: advrobust's CERTIFY against ART's ``PyTorchRandomizedSmoothing``.

Same model, same images, same settings (sigma, n0 = ART's ``sample_size``, n, alpha): certified
accuracy at radii, prediction agreement, radius differences (the noise draws differ, so radii
agree only up to Monte-Carlo error) and CPU seconds per image. ART is not a dependency: run it
with ART and statsmodels (ART's Clopper-Pearson) importable from a side folder, e.g.

    pip install --target ../artpath --no-deps adversarial-robustness-toolbox statsmodels \\
        patsy pandas pytz tzdata
    OMP_NUM_THREADS=1 PYTHONPATH=../artpath:src python bench/smoothing_art.py \\
        --model runs/lenet_noise05_40.pt --images 20
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MNIST = REPO.parent / "shared" / "data" / "mnist"
RADII = (0.0, 0.5, 1.0, 1.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_MNIST)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "smoothing_art.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import scipy.stats  # noqa: F401  (imported before the clocks start)
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing
    from statsmodels.stats.proportion import proportion_confint  # noqa: F401

    from advrobust.data import load_dataset
    from advrobust.models import load_checkpoint
    from advrobust.smoothing import Smoothed

    model = load_checkpoint(args.model).model
    test = load_dataset("mnist", split="test", root=args.data_dir)
    x, y = test.x[:args.images], test.y[:args.images]
    print(f"load average at start {os.getloadavg()[0]:.1f}", flush=True)

    cpu = time.process_time()
    ours = Smoothed(model, args.sigma).certify(x, n0=args.n0, n=args.n, alpha=args.alpha,
                                               batch_size=args.batch_size,
                                               generator=torch.Generator().manual_seed(0))
    ours_cpu = (time.process_time() - cpu) / len(y)

    art = PyTorchRandomizedSmoothing(model=model, loss=torch.nn.CrossEntropyLoss(),
                                     input_shape=tuple(x.shape[1:]), nb_classes=10,
                                     device_type="cpu", sample_size=args.n0, scale=args.sigma,
                                     alpha=args.alpha)
    np.random.seed(0)  # ART draws its noise from numpy's global generator
    cpu = time.process_time()
    art_pred, art_radius = art.certify(x.numpy(), n=args.n, batch_size=args.batch_size)
    art_cpu = (time.process_time() - cpu) / len(y)

    yn = y.numpy()
    ours_acc = ours.certified_accuracy(y, RADII)
    art_acc = [float(((art_pred == yn) & (art_radius >= r)).mean()) for r in RADII]
    both = (ours.prediction.numpy() == art_pred) & (art_pred >= 0)
    diff = np.abs(ours.radius.numpy()[both] - art_radius[both])
    result = {"images": len(y), "sigma": args.sigma, "n0": args.n0, "n": args.n,
              "alpha": args.alpha, "radii": RADII, "advrobust_certified_accuracy": ours_acc,
              "art_certified_accuracy": art_acc,
              "same_prediction": float((ours.prediction.numpy() == art_pred).mean()),
              "radius_abs_diff_median": float(np.median(diff)) if len(diff) else None,
              "radius_abs_diff_max": float(diff.max()) if len(diff) else None,
              "advrobust_cpu_s_per_image": ours_cpu, "art_cpu_s_per_image": art_cpu,
              "load_average_end": os.getloadavg()[0]}
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
