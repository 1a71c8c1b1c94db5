"""Dictionary-based defenses: fooling rate of ADiL attackers without and with the defense.

1. learn the defender's dictionary (--defense-atoms atoms) on --n-train training images;
2. fine-tune copies of the model for --epochs on --n-finetune training images with
   (a) Laplace noise x + D z, z ~ Laplace(0, b), b = mean |v| (DictionaryNoiseTraining),
   (b) dictionary adversarial examples x + D v (DictionaryAdversarialTraining), and, as a
   control, (c) plain cross-entropy for the same epochs;
3. for every attacker size (2 / 5 / 10 / 15 / 20 atoms) learn a new ADiL dictionary against each
   model on --n-attack training images and report its fooling rate there and on held-out images.

    OMP_NUM_THREADS=1 python bench/dictionary_defense.py --model runs/dictionary/cnn_mnist.pt \
        --data mnist --out runs/dictionary/defense_mnist.json

The attacker is adaptive: it learns its dictionary against the model it attacks (the defended
one), with the same ADiL settings as the defender. Cells: fooling rate on the attacker's
(training) images / on held-out test images coded with the attacker's dictionary fixed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from typing import Any

import torch

from advrobust import LpBall
from advrobust.attacks import ADiL, DictionaryAttack
from advrobust.attacks.dictionary import evaluate_dictionary
from advrobust.data import load_dataset
from advrobust.evaluation.metrics import clean_accuracy, predict
from advrobust.models import load_checkpoint
from advrobust.training import Standard, fit
from advrobust.training.dictionary import DictionaryAdversarialTraining, DictionaryNoiseTraining


def _adil(atoms: int, args: argparse.Namespace) -> ADiL:
    return ADiL(atoms=atoms, lambda1=args.lambda1, lambda2=args.lambda2, loss="margin",
                kappa=1.0, max_iter=args.iterations, step_size=1.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="mnist")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--n-train", type=int, default=300, help="defender's dictionary images")
    p.add_argument("--n-finetune", type=int, default=6000)
    p.add_argument("--n-attack", type=int, default=200)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--defense-atoms", type=int, default=10)
    p.add_argument("--attack-atoms", type=int, nargs="+", default=[2, 5, 10, 15, 20])
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--coding-steps", type=int, default=20)
    p.add_argument("--lambda1", type=float, default=0.1)
    p.add_argument("--lambda2", type=float, default=0.001)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--budget-eps", type=float, default=0.0,
                   help="also attack the held-out images with the attacker's dictionary inside "
                        "an l2 ball of this radius (0: no)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps({"loadavg_start": os.getloadavg(), "torch": torch.__version__,
                      "threads": torch.get_num_threads()}), flush=True)
    base = load_checkpoint(args.model).model
    train = load_dataset(args.data, "train", root=args.data_dir)
    test = load_dataset(args.data, "test", root=args.data_dir)
    # attacker's images come after the defender's and the fine-tuning ones
    xd, yd = train.x[:args.n_train], train.y[:args.n_train]
    xf, yf = train.x[:args.n_finetune], train.y[:args.n_finetune]
    xa, ya = train.x[-args.n_attack:], train.y[-args.n_attack:]
    xt, yt = test.x[:args.n_test], test.y[:args.n_test]
    defense = _adil(args.defense_atoms, args).fit(base, xd, yd,
                                                  generator=torch.Generator().manual_seed(1))
    objectives = {"control (plain CE)": Standard(),
                  "noise x + D z": DictionaryNoiseTraining(dictionary=defense, seed=0),
                  "adversarial x + D v": DictionaryAdversarialTraining(dictionary=defense,
                                                                       steps=3)}
    models: dict[str, Any] = {"undefended": base}
    info: dict[str, Any] = {"laplace_scale": defense.laplace_scale(),
                            "defense_sparsity": defense.sparsity(),
                            "defense_seconds": defense.seconds}
    for name, objective in objectives.items():
        model = copy.deepcopy(base).train()
        start = time.perf_counter()
        fit(model, (xf, yf), objective=objective, epochs=args.epochs, lr=args.lr,
            batch_size=100, progress=False, seed=0)
        models[name] = model.eval()
        info[f"finetune_seconds {name}"] = time.perf_counter() - start
    rows = []
    for name, model in models.items():
        row: dict[str, Any] = {"model": name, "clean_accuracy": clean_accuracy(model, test.x[:2000],
                                                                               test.y[:2000])}
        for m in args.attack_atoms:
            d = _adil(m, args).fit(model, xa, ya, generator=torch.Generator().manual_seed(0))
            tr = evaluate_dictionary(model, d, xa, d.codes)
            ho = evaluate_dictionary(model, d, xt, y=yt, steps=args.coding_steps)
            row[m] = {"train": tr.fooling_rate, "heldout": ho.fooling_rate,
                      "rmse_train": tr.rmse, "rmse_heldout": ho.rmse}
            if args.budget_eps > 0:  # fixed budget: codes found inside the l2 ball
                res = DictionaryAttack(dictionary=d, steps=args.coding_steps)(
                    model, xt, yt, LpBall("l2", args.budget_eps))
                changed = predict(model, xt) != predict(model, res.x_adv)
                row[m]["heldout_budget"] = float(changed.float().mean())
        rows.append(row)
        print(json.dumps(row), flush=True)
    info["loadavg_end"] = os.getloadavg()
    print(json.dumps(info))
    head = " | ".join(f"{m} atoms" for m in args.attack_atoms)
    print(f"| model | clean acc | {head} |\n|---|---|" + "---|" * len(args.attack_atoms))
    for r in rows:
        cells = " | ".join(f"{r[m]['train']:.2f} / {r[m]['heldout']:.2f} "
                           f"(rMSE {r[m]['rmse_train']:.3f} / {r[m]['rmse_heldout']:.3f})"
                           + (f", l2<={args.budget_eps:g}: {r[m]['heldout_budget']:.2f}"
                              if "heldout_budget" in r[m] else "")
                           for m in args.attack_atoms)
        print(f"| {r['model']} | {r['clean_accuracy']:.3f} | {cells} |")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"rows": rows, "info": info}, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
