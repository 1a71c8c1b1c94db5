"""Parity and throughput of advrobust's DeepFool, C&W l2, HopSkipJump and Boundary vs peers.

Run by hand (not by pytest). The peers (torchattacks, foolbox, ART) live in a side venv with the
system site-packages, so one interpreter sees advrobust and them:

    python -m venv --system-site-packages ../peers
    ../peers/bin/pip install --no-deps torchattacks requests adversarial-robustness-toolbox \
        foolbox eagerpy gitpython gitdb smmap
    ../peers/bin/python bench/attacks_catalogue_1.py --n 500 --attacks deepfool cw
    ../peers/bin/python bench/attacks_catalogue_1.py --n 100 --attacks hopskipjump boundary \
        --libs advrobust foolbox

A peer that is not importable is skipped (its row says so). The MNIST MLP (784-256-256-10,
2 epochs of Adam on the training images) is trained once and cached under ``runs/``. Every
library attacks the same correctly classified test images; success and l2 norms are recomputed
here through the model for everyone.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from advrobust import LpBall
from advrobust.attacks import Boundary, CarliniWagner, DeepFool, HopSkipJump
from advrobust.data import load_dataset

REPO = Path(__file__).resolve().parents[1]
AttackFn = Callable[[nn.Module, Tensor, Tensor], Tensor]
#: l2 radii at which robust accuracy (not broken within the radius) is also reported.
EPS_GRID = (0.5, 1.0, 1.5, 2.0)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256),
                         nn.ReLU(), nn.Linear(256, 10))


def trained_model(data_root: Path, cache: Path) -> nn.Module:
    model = mlp()
    if cache.exists():
        model.load_state_dict(torch.load(cache, weights_only=True))
        return model.eval()
    train = load_dataset("mnist", split="train", root=data_root)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        for xb, yb in train.batches(128, shuffle=True, generator=gen):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), cache)
    return model.eval()


# ------------------------------------------------------------------ the attacks, per library
def ours_deepfool(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    attack = DeepFool(norm="l2", steps=50, overshoot=0.02, candidates=10)
    return attack(model, x, y, LpBall("l2", 28.0)).x_adv


def ours_cw(cfg: dict) -> AttackFn:
    def run(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        attack = CarliniWagner(norm="l2", steps=cfg["steps"], lr=cfg["lr"],
                               binary_search_steps=cfg["bss"], initial_const=cfg["c"])
        return attack(model, x, y, LpBall("l2", 28.0)).x_adv
    return run


def torchattacks_deepfool(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    import torchattacks

    return torchattacks.DeepFool(model, steps=50, overshoot=0.02)(x, y)


def torchattacks_cw(cfg: dict) -> AttackFn:
    def run(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        import torchattacks

        # torchattacks has no binary search: one constant (its default c=1)
        return torchattacks.CW(model, c=1.0, kappa=0, steps=cfg["steps"], lr=cfg["lr"])(x, y)
    return run


def foolbox_deepfool(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    attack = fb.attacks.L2DeepFoolAttack(steps=50, candidates=10, overshoot=0.02)
    raw, _, _ = attack(fmodel, x, y, epsilons=None)
    return raw


def foolbox_cw(cfg: dict) -> AttackFn:
    def run(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        import foolbox as fb

        fmodel = fb.PyTorchModel(model, bounds=(0, 1))
        attack = fb.attacks.L2CarliniWagnerAttack(binary_search_steps=cfg["bss"],
                                                  steps=cfg["steps"], stepsize=cfg["lr"],
                                                  initial_const=cfg["c"], abort_early=True)
        raw, _, _ = attack(fmodel, x, y, epsilons=None)
        return raw
    return run


def _art_classifier(model: nn.Module) -> object:
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                             nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")


def art_deepfool(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    from art.attacks.evasion import DeepFool as ArtDeepFool

    attack = ArtDeepFool(_art_classifier(model), max_iter=50, epsilon=0.02, nb_grads=10,
                         batch_size=len(x), verbose=False)
    return torch.from_numpy(attack.generate(x.numpy()))


def art_cw(cfg: dict) -> AttackFn:
    def run(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        from art.attacks.evasion import CarliniL2Method

        attack = CarliniL2Method(_art_classifier(model), confidence=0.0,
                                 learning_rate=cfg["lr"], binary_search_steps=cfg["bss"],
                                 max_iter=cfg["steps"], initial_const=cfg["c"],
                                 batch_size=len(x), verbose=False)
        return torch.from_numpy(attack.generate(x.numpy(), y=nn.functional.one_hot(y, 10)
                                                .numpy()))
    return run


def ours_hopskipjump(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    attack = HopSkipJump(steps=20, init_num_evals=100, max_num_evals=10000, gamma=1.0)
    return attack(model, x, y, LpBall("l2", 28.0), generator=torch.Generator().manual_seed(0)).x_adv


def _starting_points(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """For foolbox (whose noise init fails on some MNIST digits and then raises): the nearest
    other image of the batch predicted in another class, for every sample (advrobust only falls
    back to it where 100 uniform-noise draws fail, so this favours the peer)."""
    with torch.no_grad():
        pred = model(x).argmax(1)
    dist = torch.cdist(x.flatten(1), x.flatten(1))
    dist = dist.masked_fill(pred.unsqueeze(0) == y.unsqueeze(1), float("inf"))
    return x[dist.argmin(dim=1)]


def foolbox_hopskipjump(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    import foolbox as fb

    torch.manual_seed(0)
    attack = fb.attacks.HopSkipJumpAttack(steps=20, initial_gradient_eval_steps=100,
                                          max_gradient_eval_steps=10000, gamma=1.0)
    raw, _, _ = attack(fb.PyTorchModel(model, bounds=(0, 1)), x, y, epsilons=None,
                       starting_points=_starting_points(model, x, y))
    return raw


def ours_boundary(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    attack = Boundary(steps=1000, spherical_step=0.01, source_step=0.01)
    return attack(model, x, y, LpBall("l2", 28.0), generator=torch.Generator().manual_seed(0)).x_adv


def foolbox_boundary(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    import foolbox as fb

    torch.manual_seed(0)
    attack = fb.attacks.BoundaryAttack(steps=1000, spherical_step=0.01, source_step=0.01)
    raw, _, _ = attack(fb.PyTorchModel(model, bounds=(0, 1)), x, y, epsilons=None,
                       starting_points=_starting_points(model, x, y))
    return raw


# ------------------------------------------------------------------ measurement
def measure(fn: AttackFn, model: nn.Module, x: Tensor, y: Tensor) -> tuple[dict, Tensor | None]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            x_adv = fn(model, x, y).detach().float()
            seconds = time.perf_counter() - start
    except ImportError as exc:
        return {"skipped": f"not importable: {exc}"}, None
    return summarise(model, x, y, x_adv) | {"seconds": seconds,
                                            "images_per_s": len(x) / seconds}, x_adv


def summarise(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor) -> dict:
    with torch.no_grad():
        success = model(x_adv).argmax(1) != y
    norms = (x_adv - x).flatten(1).norm(dim=1)
    inside_box = bool(((x_adv >= -1e-6) & (x_adv <= 1 + 1e-6)).all())
    # foolbox's C&W returns an all-zero image where it found nothing; it is often misclassified
    blank = x_adv.flatten(1).abs().sum(1) == 0
    return {"success_rate": float(success.float().mean()),
            "blank_successes": int((success & blank).sum()),
            "robust_accuracy": float(1 - success.float().mean()),
            "median_l2": float(norms[success].median()) if bool(success.any()) else math.nan,
            "inside_box": inside_box} | {
                f"robust_acc@{eps:g}": float(1 - (success & (norms <= eps)).float().mean())
                for eps in EPS_GRID}


def common_medians(model: nn.Module, x: Tensor, y: Tensor, ours: Tensor, peer: Tensor
                   ) -> dict:
    """Median l2 of advrobust and of a peer over the samples both broke (the fair pairing)."""
    n = len(peer)
    with torch.no_grad():
        both = (model(ours[:n]).argmax(1) != y[:n]) & (model(peer).argmax(1) != y[:n])
    if not bool(both.any()):
        return {"common": 0}
    ours_n = (ours[:n] - x[:n]).flatten(1).norm(dim=1)[both]
    peer_n = (peer - x[:n]).flatten(1).norm(dim=1)[both]
    return {"common": int(both.sum()), "common_median_l2_ours": float(ours_n.median()),
            "common_median_l2_peer": float(peer_n.median()),
            "peer_smaller_fraction": float((peer_n < ours_n - 1e-4).float().mean())}


def saved_dir(out: Path) -> Path:
    """Where a run writing ``out`` keeps its adversarial examples."""
    return out.parent / f"{out.stem}_xadv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="first N test images (default 500)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--attacks", nargs="+", default=["deepfool", "cw"],
                        choices=["deepfool", "cw", "hopskipjump", "boundary"])
    parser.add_argument("--libs", nargs="+", default=["advrobust", "torchattacks", "foolbox",
                                                      "art"])
    parser.add_argument("--cw-steps", type=int, default=100)
    parser.add_argument("--cw-bss", type=int, default=5)
    parser.add_argument("--cw-lr", type=float, default=0.01)
    parser.add_argument("--cw-const", type=float, default=1e-2)
    parser.add_argument("--art-cw-n", type=int, default=None,
                        help="fewer images for ART's C&W (slow); default: --n")
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared/data/mnist")
    parser.add_argument("--out", type=Path, default=REPO / "runs/catalogue1/results.json")
    parser.add_argument("--from-saved", action="store_true",
                        help="recompute the rows from the x_adv saved next to --out by an "
                             "earlier run (no attack is run, no timings)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = trained_model(args.data_root, REPO / "runs/catalogue1/mnist_mlp.pt")
    test = load_dataset("mnist", split="test", root=args.data_root)
    x, y = test.x[:args.n], test.y[:args.n]
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    print(f"clean accuracy on the first {args.n}: {float(keep.float().mean()):.4f}; "
          f"attacking the {int(keep.sum())} correct ones")
    x, y = x[keep], y[keep]
    cfg = {"steps": args.cw_steps, "bss": args.cw_bss, "lr": args.cw_lr, "c": args.cw_const}
    table: dict[str, dict[str, Callable[..., AttackFn] | AttackFn]] = {
        "deepfool": {"advrobust": ours_deepfool, "torchattacks": torchattacks_deepfool,
                     "foolbox": foolbox_deepfool, "art": art_deepfool},
        "cw": {"advrobust": ours_cw(cfg), "torchattacks": torchattacks_cw(cfg),
               "foolbox": foolbox_cw(cfg), "art": art_cw(cfg)},
        "hopskipjump": {"advrobust": ours_hopskipjump, "foolbox": foolbox_hopskipjump},
        "boundary": {"advrobust": ours_boundary, "foolbox": foolbox_boundary},
    }
    results: dict[str, dict] = {}
    for attack in args.attacks:
        ours: Tensor | None = None
        for lib in args.libs:
            xs, ys = x, y
            if attack == "cw" and lib == "art" and args.art_cw_n:
                xs, ys = x[:args.art_cw_n], y[:args.art_cw_n]
            if lib not in table[attack]:
                continue
            if args.from_saved:
                x_adv = torch.load(saved_dir(args.out) / f"{attack}_{lib}.pt",
                                   weights_only=True)
                xs, ys = xs[:len(x_adv)], ys[:len(x_adv)]
                row = summarise(model, xs, ys, x_adv)
            else:
                row, x_adv = measure(table[attack][lib], model, xs, ys)  # type: ignore[arg-type]
            row["n"] = len(xs)
            if x_adv is not None and not args.from_saved:
                store = saved_dir(args.out)
                store.mkdir(parents=True, exist_ok=True)
                torch.save(x_adv, store / f"{attack}_{lib}.pt")
            if x_adv is not None:
                if lib == "advrobust":
                    ours = x_adv
                elif ours is not None:
                    row |= common_medians(model, xs, ys, ours, x_adv)
            results[f"{attack}/{lib}"] = row
            print(f"| {attack} | {lib} | " + " | ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
                + " |", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": vars(args) | {"data_root": str(args.data_root),
                                                            "out": str(args.out)},
                                    "results": results}, indent=2))


if __name__ == "__main__":
    main()
