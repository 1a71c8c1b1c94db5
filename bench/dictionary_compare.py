"""ADiL against per-image attacks and a universal perturbation: fooling rate and rMSE.

Learns dictionaries of 2 / 5 / 10 / 20 atoms on the first --n-train images of one split and codes
--n-test held-out images with the dictionary fixed; the per-image attacks (PGD, DeepFool, C&W) run
on both sets, the universal perturbation is fitted on the training images and applied to the
held-out ones. rMSE = mean ||x' - x||^2 / ||x||^2 (no square root).

    OMP_NUM_THREADS=1 python bench/dictionary_compare.py \
        --model runs/dictionary/cnn_mnist.pt --data mnist --n-train 400 --n-test 400 \
        --iterations 60 --span-eps 3 --out runs/dictionary/compare_mnist.json

The per-image attacks are given the whole box (DeepFool, C&W: minimal l2 distortion) or an l2
ball (PGD); the universal perturbation and ADiL are learned on the training images only. Held-out
images are coded with the dictionary fixed (``--coding`` sparse: proximal iterations; span: the
supervised variant ``min_z H(f(x + D D^+ z))``, ``||z||_2 <= --span-eps``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from typing import Any

import torch

from advrobust import LpBall
from advrobust.attacks import (
    PGD,
    ADiL,
    CarliniWagner,
    DeepFool,
    DictionaryAttack,
    UniversalPerturbation,
)
from advrobust.attacks.dictionary import evaluate_dictionary
from advrobust.attacks.universal import apply_universal
from advrobust.data import load_dataset
from advrobust.evaluation.metrics import predict, rmse
from advrobust.models import load_checkpoint


def _row(name: str, model: Any, x: torch.Tensor, x_adv: torch.Tensor) -> dict[str, float]:
    fooled = float((predict(model, x) != predict(model, x_adv)).float().mean())
    return {"attack": name, "fooling_rate": fooled, "rmse": rmse(x, x_adv)}


def _split(args: argparse.Namespace) -> tuple[torch.Tensor, ...]:
    if args.same_split:  # e.g. the 100 CIFAR-10 CSV images: one split cut in two
        data = load_dataset(args.data, split="test", root=args.data_dir)
        n = args.n_train
        return data.x[:n], data.y[:n], data.x[n:n + args.n_test], data.y[n:n + args.n_test]
    train = load_dataset(args.data, split="train", root=args.data_dir).take(args.n_train)
    test = load_dataset(args.data, split="test", root=args.data_dir).take(args.n_test)
    return train.x, train.y, test.x, test.y


def per_image(model: Any, sets: dict[str, tuple[torch.Tensor, torch.Tensor]],
              eps: float) -> list[dict[str, Any]]:
    """PGD (l2 ball), DeepFool and C&W (minimal l2 distortion, box only) on every set."""
    wide = LpBall("l2", 1e3)
    attacks = [(f"PGD l2 eps={eps:g}", PGD(steps=20, step_size=eps / 8), LpBall("l2", eps)),
               ("DeepFool l2", DeepFool(norm="l2", steps=30), wide),
               ("C&W l2", CarliniWagner(norm="l2", steps=40, binary_search_steps=4, lr=0.1,
                                        initial_const=1.0), wide)]
    rows = []
    for name, attack, threat in attacks:
        row: dict[str, Any] = {"attack": name}
        for split, (x, y) in sets.items():
            start = time.perf_counter()
            res = attack(model, x, y, threat, generator=torch.Generator().manual_seed(0))
            r = _row(name, model, x, res.x_adv)
            row[split] = {"fooling_rate": r["fooling_rate"], "rmse": r["rmse"],
                          "seconds": time.perf_counter() - start}
        rows.append(row)
    return rows


def universal(model: Any, xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor,
              eps: float) -> dict[str, Any]:  # one universal perturbation per eps
    """SGD universal perturbation in an l2 ball, fitted on train, applied to held-out."""
    threat = LpBall("l2", eps)
    start = time.perf_counter()
    fit = UniversalPerturbation(method="sgd", max_passes=10, batch_size=32,
                                target_fooling_rate=1.0).fit(
        model, xtr, ytr, threat, generator=torch.Generator().manual_seed(0))
    out: dict[str, Any] = {"attack": f"universal l2 eps={eps:g}"}
    for split, x in (("train", xtr), ("heldout", xte)):
        r = _row("", model, x, apply_universal(x, fit.perturbation, threat))
        out[split] = {"fooling_rate": r["fooling_rate"], "rmse": r["rmse"]}
    out["train"]["seconds"] = time.perf_counter() - start
    return out


def span_heldout(model: Any, d: Any, xte: torch.Tensor, yte: torch.Tensor,
                 args: argparse.Namespace) -> dict[str, float]:
    """Held-out images attacked with D fixed by the supervised span variant."""
    attack = DictionaryAttack(dictionary=d, method="span", steps=args.coding_steps,
                              step_size=args.span_eps / 8)
    start = time.perf_counter()
    res = attack(model, xte, yte, LpBall("l2", args.span_eps))
    r = _row("", model, xte, res.x_adv)
    return {"fooling_rate": r["fooling_rate"], "rmse": r["rmse"],
            "seconds": time.perf_counter() - start}


def adil(model: Any, xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor,
         yte: torch.Tensor, atoms: int, args: argparse.Namespace) -> dict[str, Any]:
    """Learn a dictionary on train; evaluate on train (its codes) and held-out (coded)."""
    learner = ADiL(atoms=atoms, lambda1=args.lambda1, lambda2=args.lambda2, loss=args.loss,
                   kappa=args.kappa, max_iter=args.iterations, step_size=args.step_size)
    d = learner.fit(model, xtr, ytr, generator=torch.Generator().manual_seed(0))
    iterations = max(1, len(d.history) - 1)
    train = evaluate_dictionary(model, d, xtr, d.codes).summary()
    start = time.perf_counter()
    held = evaluate_dictionary(model, d, xte, y=yte, steps=args.coding_steps,
                               step_size=args.step_size).summary()
    held["seconds"] = time.perf_counter() - start
    train["seconds"] = d.seconds
    row = {"attack": f"ADiL {atoms} atoms", "train": train, "heldout": held,
           "seconds_per_iteration": d.seconds / iterations, "iterations": iterations,
           "status": d.status, "objective_first": d.history[0],
           "objective_last": d.history[-1]}
    if args.span_eps > 0:
        row["heldout_span"] = span_heldout(model, d, xte, yte, args)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="mnist")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--same-split", action="store_true",
                   help="cut the test split in two (datasets with one split)")
    p.add_argument("--n-train", type=int, default=300)
    p.add_argument("--n-test", type=int, default=300)
    p.add_argument("--atoms", type=int, nargs="+", default=[2, 5, 10, 20])
    p.add_argument("--iterations", type=int, default=60)
    p.add_argument("--coding-steps", type=int, default=20)
    p.add_argument("--lambda1", type=float, default=0.1)
    p.add_argument("--lambda2", type=float, default=0.001)
    p.add_argument("--loss", default="margin")
    p.add_argument("--kappa", type=float, default=1.0)
    p.add_argument("--step-size", type=float, default=1.0)
    p.add_argument("--pgd-eps", type=float, default=2.0)
    p.add_argument("--universal-eps", type=float, nargs="+", default=[2.0, 4.0])
    p.add_argument("--span-eps", type=float, default=0.0,
                   help="also code held-out images by the span variant in this l2 ball (0: no)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-baselines", action="store_true")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps({"loadavg_start": os.getloadavg(), "torch": torch.__version__,
                      "threads": torch.get_num_threads()}), flush=True)
    model = load_checkpoint(args.model).model
    xtr, ytr, xte, yte = _split(args)
    rows: list[dict[str, Any]] = []
    if not args.skip_baselines:
        for row in per_image(model, {"train": (xtr, ytr), "heldout": (xte, yte)},
                             args.pgd_eps):
            rows.append(row)
            print(json.dumps(row), flush=True)
        for eps in args.universal_eps:
            rows.append(universal(model, xtr, ytr, xte, eps))
            print(json.dumps(rows[-1]), flush=True)
    for m in args.atoms:
        rows.append(adil(model, xtr, ytr, xte, yte, m, args))
        print(json.dumps(rows[-1]), flush=True)
    print("| attack | fooling rate (train) | rMSE (train) | fooling rate (held-out) | "
          "rMSE (held-out) |\n|---|---|---|---|---|")
    for r in rows:
        cells = [f"{r[s][k]:.3f}" if not math.isnan(r[s][k]) else "nan"
                 for s in ("train", "heldout") for k in ("fooling_rate", "rmse")]
        print(f"| {r['attack']} | " + " | ".join(cells) + " |")
        if "heldout_span" in r:
            span = r["heldout_span"]
            print(f"| {r['attack']}, held-out by span coding (l2 <= {args.span_eps:g}) | | | "
                  f"{span['fooling_rate']:.3f} | {span['rmse']:.3f} |")
    print(json.dumps({"loadavg_end": os.getloadavg()}), flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
