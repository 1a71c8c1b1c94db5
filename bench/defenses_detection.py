"""Gradient-norm detector on MNIST: detection rates at 5% FPR, and what evasion costs.

Target (issue 6): >= 90% of PGD examples detected at 5% false positives; the evasive C&W
lowers the detection rate and raises the median distortion (report both).

    python bench/defenses_detection.py --epochs 3 --n 500 --n-cw 200 \
        --out runs/defenses/detection.json
"""

from __future__ import annotations

import argparse

import torch
from defenses_common import RUNS, Timer, common_args, mnist, small_cnn, write

from advrobust.attacks import PGD
from advrobust.attacks.cw import CarliniWagner
from advrobust.core import LpBall
from advrobust.detection import EvasiveCW, GradientNormDetector, evaluate_detector
from advrobust.training import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common_args(parser)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--fpr", type=float, default=0.05)
    parser.add_argument("--n", type=int, default=500, help="test images attacked by PGD")
    parser.add_argument("--n-cw", type=int, default=200, help="test images for C&W attacks")
    parser.add_argument("--n-fit", type=int, default=5000,
                        help="held-out clean test images (the last ones) for calibration")
    parser.add_argument("--pgd-eps", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--cw-steps", type=int, default=100)
    parser.add_argument("--cw-search", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train, test = mnist("train", args.data_dir), mnist("test", args.data_dir)
    model = small_cnn(args.seed)
    timer = Timer()
    fit(model, train, epochs=args.epochs, lr=0.05, momentum=0.9, batch_size=100,
        seed=args.seed, progress=False)
    train_seconds = timer()
    RUNS.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), RUNS / "detection_standard_cnn.pt")
    model.eval()
    held_out = test.x[-args.n_fit:]
    det = GradientNormDetector(fpr=args.fpr).fit(model, held_out)
    gen = torch.Generator().manual_seed(args.seed)
    x, y = test.x[:args.n], test.y[:args.n]
    pgd = {f"pgd-40 linf {e:g}": PGD(steps=40) for e in args.pgd_eps}
    threats = {f"pgd-40 linf {e:g}": LpBall("linf", e) for e in args.pgd_eps}
    pgd_report = evaluate_detector(det, model, x, y, pgd, threats, generator=gen)
    cw_kw = {"steps": args.cw_steps, "binary_search_steps": args.cw_search}
    l2 = LpBall("l2", 10.0)
    cw = {"cw-l2": CarliniWagner(**cw_kw), "cw-l2 kappa=2": CarliniWagner(confidence=2.0, **cw_kw),
          "evasive-cw": EvasiveCW(detector=det, **cw_kw)}
    cw_report = evaluate_detector(det, model, x[:args.n_cw], y[:args.n_cw], cw, l2,
                                  generator=gen)
    with torch.no_grad():
        clean_error = float((model(test.x[:-args.n_fit]).argmax(1) != test.y[:-args.n_fit])
                            .float().mean())
    write(args.out, {"epochs": args.epochs, "train_seconds": train_seconds,
                     "clean_error_first_5k_test": clean_error, "n_fit": args.n_fit,
                     "pgd": pgd_report.as_dict(), "cw": cw_report.as_dict(),
                     "total_seconds": timer()})


if __name__ == "__main__":
    main()
