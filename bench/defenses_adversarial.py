"""Adversarial training on MNIST (fast FGSM or PGD), evaluated by PGD-40 and the ensemble.

Target (issue 6): eps 0.3, small CNN, PGD-40 robust accuracy >= 88% (Wong, Rice & Kolter 2020:
88.8%), plus the accuracy under the strongest ensemble (their model fell to 82.9% under
AutoAttack).

    python bench/defenses_adversarial.py --defense fgsm --epochs 10 --n-pgd 1000 \
        --n-ensemble 200 --out runs/defenses/fgsm.json
"""

from __future__ import annotations

import argparse

import torch
from defenses_common import RUNS, Timer, common_args, mnist, small_cnn, write

from advrobust.core import LpBall
from advrobust.evaluation.robustness import robustness_report
from advrobust.training import fit
from advrobust.training.defenses import build_objective


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common_args(parser)
    parser.add_argument("--defense", choices=("fgsm", "pgd", "trades"), default="fgsm")
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--alpha", type=float, default=0.375, help="fast-FGSM step")
    parser.add_argument("--steps", type=int, default=10, help="PGD / TRADES training steps")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--ramp", type=float, default=0.3,
                        help="fraction of training over which eps ramps up from 0")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    parser.add_argument("--lr-schedule", choices=("step", "cyclic"), default="step",
                        help="step: one x0.1 drop at 80%% of the epochs; cyclic: 0 -> lr -> 0")
    parser.add_argument("--step-size", type=float, default=None,
                        help="PGD / TRADES training step (default 2.5 eps / steps)")
    parser.add_argument("--n-train", type=int, default=None)
    parser.add_argument("--n-pgd", type=int, default=1000)
    parser.add_argument("--n-ensemble", type=int, default=200)
    parser.add_argument("--no-certify", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train, test = mnist("train", args.data_dir), mnist("test", args.data_dir)
    if args.n_train:
        train = train.take(args.n_train)
    params = ({"alpha": args.alpha} if args.defense == "fgsm"
              else {"steps": args.steps, "step_size": args.step_size})
    objective = build_objective(args.defense, eps=args.eps, seed=args.seed, ramp=args.ramp,
                                **params)
    model = small_cnn(args.seed)
    timer = Timer()
    step = args.lr_schedule == "step"
    history = fit(model, train, objective=objective, epochs=args.epochs, lr=args.lr,
                  momentum=0.9 if args.optimizer == "sgd" else 0.0, batch_size=100,
                  seed=args.seed, optimizer=args.optimizer, lr_schedule=args.lr_schedule,
                  lr_drop_epochs=[max(1, int(args.epochs * 0.8))] if step else None,
                  progress=False,
                  on_epoch_end=lambda e: print(e, flush=True))
    train_seconds = timer()
    RUNS.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), RUNS / (f"adversarial_{args.defense}_{args.eps}_"
                                           f"{args.optimizer}{args.epochs}.pt"))
    model.eval()
    threat = LpBall("linf", args.eps)
    timer = Timer()
    pgd = robustness_report(model, test, threat, certify=False, ensemble=False, n=args.n_pgd,
                            pgd_steps=40, seed=args.seed)
    pgd_seconds = timer()
    timer = Timer()
    both = robustness_report(model, test, threat, certify=not args.no_certify, ensemble=True,
                             n=args.n_ensemble, pgd_steps=40, seed=args.seed)
    write(args.out, {
        "defense": args.defense, "eps": args.eps, "objective": repr(objective),
        "epochs": args.epochs, "lr": args.lr, "optimizer": args.optimizer,
        "lr_schedule": args.lr_schedule, "n_train": len(train),
        "train_seconds": train_seconds, "pgd40_report": pgd, "pgd_seconds": pgd_seconds,
        "ensemble_report": both, "ensemble_seconds": timer(),
        "history": [vars(e) for e in history.epochs],
    })


if __name__ == "__main__":
    main()
