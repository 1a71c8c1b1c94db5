"""Detection of near-boundary PGD examples: the first PGD iterate count that succeeds.

PGD-40 keeps its most confident point, where the loss surface is flat and the gradient-norm
detector sees little. An attacker who stops at the first success (as most attack tools do)
leaves the example near the decision boundary. This script runs PGD with 1, 2, 3, 5, 10, 20
and 40 steps (same seed) and keeps, per sample, the successful example of the fewest steps.
Needs the model written by ``defenses_detection.py``.

    python bench/defenses_detection_early.py --n 500 --out runs/defenses/detection_early.json
"""

from __future__ import annotations

import argparse

import torch
from defenses_common import RUNS, Timer, common_args, mnist, small_cnn, write

from advrobust.attacks import PGD
from advrobust.core import LpBall
from advrobust.detection import GradientNormDetector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common_args(parser)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--n-fit", type=int, default=5000)
    parser.add_argument("--fpr", type=float, default=0.05)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.3])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    test = mnist("test", args.data_dir)
    model = small_cnn(args.seed)
    model.load_state_dict(torch.load(RUNS / "detection_standard_cnn.pt", weights_only=True))
    model.eval()
    det = GradientNormDetector(fpr=args.fpr).fit(model, test.x[-args.n_fit:])
    x, y = test.x[:args.n], test.y[:args.n]
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    x, y = x[keep], y[keep]
    timer, rows = Timer(), {}
    for eps in args.eps:
        threat = LpBall("linf", eps)
        found = torch.zeros(len(y), dtype=torch.bool)
        x_adv = x.clone()
        for steps in (1, 2, 3, 5, 10, 20, 40):
            # step = 2.5 eps / 40 for every run, so shorter runs stay nearer the start
            res = PGD(steps=steps, step_size=2.5 * eps / 40)(
                model, x, y, threat, generator=torch.Generator().manual_seed(args.seed))
            new = res.success & ~found
            x_adv[new], found = res.x_adv[new], found | res.success
        flagged = det.predict(x_adv[found])
        rows[f"first-success pgd linf {eps:g}"] = {
            "n": len(y), "success_rate": float(found.float().mean()),
            "detection_rate": float(flagged.float().mean()) if found.any() else None}
    write(args.out, {"threshold": det.threshold_, "clean_fpr": float(
        det.predict(test.x[:args.n]).float().mean()), "results": rows, "seconds": timer()})


if __name__ == "__main__":
    main()
