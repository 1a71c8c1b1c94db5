"""Benchmarks of APGD, the strongest ensemble and universal perturbations on MNIST.

Run by hand (not by pytest), from the repository root, with a Python that also has torchattacks
(a side venv, never a project dependency)::

    python -m venv --system-site-packages ../peers
    ../peers/bin/pip install --no-deps torchattacks requests
    ../peers/bin/python bench/attacks_catalogue_2.py --part all

Parts: ``apgd`` (our APGD / APGD-T vs torchattacks' on a standard MNIST MLP, linf and l2),
``ensemble`` (``strongest`` vs torchattacks' AutoAttack "standard" on a PGD-adversarially trained
MNIST MLP), ``universal`` (fooling rate of universal perturbations on held-out MNIST vs random
noise of the same norm). Models are trained on first use and cached under ``runs/catalogue2``.
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust import LpBall
from advrobust.attacks import (
    APGD,
    PGD,
    APGDTargeted,
    UniversalPerturbation,
    fooling_rate,
    strongest,
)
from advrobust.data import load_dataset

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "mnist"
RUNS = REPO / "runs" / "catalogue2"


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 128),
                         nn.ReLU(), nn.Linear(128, 10))


def train(model: nn.Module, x: Tensor, y: Tensor, epochs: int,
          adversary: Callable[[nn.Module, Tensor, Tensor], Tensor] | None = None) -> nn.Module:
    """Plain Adam loop; with ``adversary`` each batch is replaced by its adversarial version."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        for start in range(0, x.shape[0], 128):
            idx = order[start:start + 128]
            xb, yb = x[idx], y[idx]
            if adversary is not None:
                model.eval()
                xb = adversary(model, xb, yb)
                model.train()
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    return model.eval()


def get_model(kind: str, x: Tensor, y: Tensor) -> nn.Module:
    """``standard`` (3 epochs) or ``adv`` (PGD-5 linf eps 0.1 adversarial training, 2 epochs
    after 1 clean epoch) 784-128-128-10 MLP on the first 12,000 training images; cached."""
    RUNS.mkdir(parents=True, exist_ok=True)
    path = RUNS / f"mnist_mlp_{kind}.pt"
    model = mlp()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    torch.manual_seed(0)
    x, y = x[:12000], y[:12000]
    if kind == "standard":
        train(model, x, y, 3)
    else:
        train(model, x, y, 1)
        pgd = PGD(steps=5, step_size=0.04)
        threat = LpBall("linf", 0.1)
        gen = torch.Generator().manual_seed(1)
        train(model, x, y, 2, lambda m, xb, yb: pgd(m, xb, yb, threat, generator=gen).x_adv)
    torch.save(model.state_dict(), path)
    return model.eval()


def robust_acc(model: nn.Module, x_adv: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


class Clock:
    """``with Clock() as c: ...`` then ``c.seconds``."""

    def __enter__(self) -> Clock:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def part_apgd(x: Tensor, y: Tensor, standard: nn.Module, adv: nn.Module) -> None:
    import torchattacks

    print("\n### APGD vs torchattacks (MNIST MLPs, 100 steps, 1 restart)\n")
    print("| model | threat | attack | ours robust acc | ours time (s) | torchattacks robust acc "
          "| torchattacks time (s) |")
    print("|---|---|---|---|---|---|---|")
    for label, model, norm, eps, ta_norm in (
            ("standard", standard, "linf", 0.05, "Linf"), ("standard", standard, "l2", 0.8, "L2"),
            ("PGD-trained", adv, "linf", 0.1, "Linf"), ("PGD-trained", adv, "l2", 1.5, "L2")):
        threat = LpBall(norm, eps)
        runs = [
            ("APGD-CE", APGD(loss="ce"), torchattacks.APGD(model, norm=ta_norm, eps=eps,
                                                           steps=100, loss="ce", seed=0)),
            ("APGD-DLR", APGD(loss="dlr"), torchattacks.APGD(model, norm=ta_norm, eps=eps,
                                                             steps=100, loss="dlr", seed=0)),
            ("APGD-T (9 targets)", APGDTargeted(),
             torchattacks.APGDT(model, norm=ta_norm, eps=eps, steps=100, n_classes=10, seed=0)),
        ]
        for name, ours, theirs in runs:
            with Clock() as c_ours:
                x_adv = ours(model, x, y, threat,
                             generator=torch.Generator().manual_seed(0)).x_adv
            with Clock() as c_theirs:
                adv_t = theirs(x, y)
            print(f"| {label} | {norm} eps={eps} | {name} | {robust_acc(model, x_adv, y):.3f} | "
                  f"{c_ours.seconds:.1f} | {robust_acc(model, adv_t, y):.3f} | "
                  f"{c_theirs.seconds:.1f} |")


def part_ensemble(x: Tensor, y: Tensor, model: nn.Module, threats: list[tuple[str, float]]
                  ) -> None:
    import torchattacks

    print("\n### strongest() vs torchattacks AutoAttack-standard (PGD-trained MNIST MLP)\n")
    print("| threat | clean acc | ours robust acc | ours time (s) | AutoAttack robust acc "
          "| AutoAttack time (s) | ours broken by |")
    print("|---|---|---|---|---|---|---|")
    for norm, eps in threats:
        threat = LpBall(norm, eps)
        ta_norm = {"linf": "Linf", "l2": "L2"}[norm]
        with Clock() as c_ours:
            res = strongest(threat)(model, x, y, threat,
                                    generator=torch.Generator().manual_seed(0))
        aa = torchattacks.AutoAttack(model, norm=ta_norm, eps=eps, version="standard",
                                     n_classes=10, seed=0)
        with Clock() as c_theirs:
            adv_t = aa(x, y)
        counts: dict[str, int] = {}
        for b in res.info["broken_by"]:
            counts[str(b)] = counts.get(str(b), 0) + 1
        timings = {k: round(v, 1) for k, v in res.info["timings"].items()}
        print(f"| {norm} eps={eps} | {robust_acc(model, x, y):.3f} | "
              f"{robust_acc(model, res.x_adv, y):.3f} | {c_ours.seconds:.1f} {timings} | "
              f"{robust_acc(model, adv_t, y):.3f} | {c_theirs.seconds:.1f} | {counts} |")


def part_universal(xtr: Tensor, ytr: Tensor, xte: Tensor, model: nn.Module,
                   methods: tuple[str, ...] = ("deepfool", "sgd", "lagrangian")) -> None:
    print("\n### Universal perturbations (standard MNIST MLP; fit on 1,000 train, "
          "fooling rate on 2,000 test)\n")
    print("| threat | method | train fooling rate | held-out fooling rate | random noise "
          "(same norm) | time (s) |")
    print("|---|---|---|---|---|---|")
    for norm, eps in (("l2", 4.0), ("linf", 0.15)):
        threat = LpBall(norm, eps)
        for method in methods:
            # batch 1 is the paper's sequential DeepFool algorithm; the SGD variants use 32
            uap = UniversalPerturbation(method=method, max_passes=3,
                                        batch_size=1 if method == "deepfool" else 32,
                                        target_fooling_rate=0.9)
            with Clock() as clock:
                res = uap.fit(model, xtr, ytr, threat, generator=torch.Generator().manual_seed(0))
            v = res.perturbation
            g = torch.Generator().manual_seed(1)
            if norm == "linf":
                noise = (torch.randint(0, 2, v.shape, generator=g) * 2 - 1).float() * eps
            else:
                noise = torch.randn(v.shape, generator=g)
                noise = noise / noise.norm() * v.norm()
            print(f"| {norm} eps={eps} | {method} | {res.fooling_rate_train:.3f} | "
                  f"{fooling_rate(model, xte, v, threat):.3f} | "
                  f"{fooling_rate(model, xte, noise, threat):.3f} | {clock.seconds:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("apgd", "ensemble", "universal", "all"),
                        default="all")
    parser.add_argument("--n", type=int, default=500, help="test images attacked")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=["deepfool", "sgd", "lagrangian"],
                        choices=["deepfool", "sgd", "lagrangian"],
                        help="universal-perturbation methods of --part universal")
    parser.add_argument("--ensemble-threats", nargs="+", default=["linf:0.1"],
                        metavar="NORM:EPS", help="threats of the ensemble comparison")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_set = load_dataset("mnist", "train", root=DATA)
    test_set = load_dataset("mnist", "test", root=DATA)
    xte, yte = test_set.x[:args.n], test_set.y[:args.n]
    standard = get_model("standard", train_set.x, train_set.y)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, n={args.n}; "
          f"standard MLP clean acc {robust_acc(standard, test_set.x, test_set.y):.3f}")
    if args.part != "universal":  # the PGD-trained model is not needed for universal alone
        adv = get_model("adv", train_set.x, train_set.y)
        print(f"PGD-trained MLP clean acc {robust_acc(adv, test_set.x, test_set.y):.3f}")
    if args.part in ("apgd", "all"):
        part_apgd(xte, yte, standard, adv)
    if args.part in ("ensemble", "all"):
        threats = [(t.split(":")[0], float(t.split(":")[1])) for t in args.ensemble_threats]
        part_ensemble(xte, yte, adv, threats)
    if args.part in ("universal", "all"):
        part_universal(train_set.x[20000:21000], train_set.y[20000:21000],
                       test_set.x[-2000:], standard, tuple(args.methods))


if __name__ == "__main__":
    main()
