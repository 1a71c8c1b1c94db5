"""Close the bracket of a certified-trained MNIST model: CROWN, then PGD, then MILP.

Loads a state dict written by ``defenses_certified.py`` (the small CNN), certifies the first
``--n`` test images with IBP, then CROWN where IBP is undecided, attacks what is still undecided
with PGD-40 and runs the exact MILP (HiGHS) on what is left, so the certified error counts IBP,
CROWN or MILP proofs.

    python bench/defenses_certified_milp.py --weights runs/defenses/certified_ibp_0.15.pt \
        --eps 0.1 --n 1000 --time-limit 20 --out runs/defenses/certified_milp.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from defenses_common import Timer, common_args, mnist, small_cnn, write

from advrobust.attacks import PGD
from advrobust.core import LpBall
from advrobust.exact import MILP
from advrobust.relax import CROWN, IBP


def _split(index: torch.Tensor, size: int = 50) -> tuple[torch.Tensor, ...]:
    return index.split(size) if index.numel() else ()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common_args(parser)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--time-limit", type=float, default=20.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = small_cnn(args.seed)
    model.load_state_dict(torch.load(args.weights, weights_only=True))
    model.eval()
    test = mnist("test", args.data_dir).take(args.n)
    threat = LpBall("linf", args.eps)
    timer = Timer()
    with torch.no_grad():
        correct = model(test.x).argmax(1) == test.y
    verified = IBP()(model, test.x, test.y, threat).verified  # cheap bounds first
    for part in _split((correct & ~verified).nonzero().flatten()):
        verified[part] = CROWN()(model, test.x[part], test.y[part], threat).verified
    crown_seconds = timer()
    todo = (correct & ~verified).nonzero().flatten()
    broken = torch.zeros(args.n, dtype=torch.bool)
    if todo.numel():
        res = PGD(steps=40)(model, test.x[todo], test.y[todo], threat,
                            generator=torch.Generator().manual_seed(args.seed))
        broken[todo] = res.success
    todo = (correct & ~verified & ~broken).nonzero().flatten()
    milp_verified = torch.zeros(args.n, dtype=torch.bool)
    milp_falsified = torch.zeros(args.n, dtype=torch.bool)
    timer2 = Timer()
    if todo.numel():
        out = MILP(time_limit=args.time_limit, decide_only=True)(
            model, test.x[todo], test.y[todo], threat)
        milp_verified[todo], milp_falsified[todo] = out.verified, out.falsified
    certified = verified | milp_verified
    write(args.out, {
        "weights": str(args.weights), "eps": args.eps, "n": args.n,
        "clean_error": 1 - float(correct.float().mean()),
        "crown_certified_error": 1 - float(verified.float().mean()),
        "crown_or_milp_certified_error": 1 - float(certified.float().mean()),
        "pgd_or_milp_falsified": int((broken | milp_falsified).sum()),
        "robust_error_lower_bound": float((~correct | broken | milp_falsified).float().mean()),
        "milp_samples": int(todo.numel()), "milp_undecided": int(
            todo.numel() - int((milp_verified | milp_falsified).sum())),
        "crown_seconds": crown_seconds, "milp_seconds": timer2(),
    })


if __name__ == "__main__":
    main()
