"""Parity of advrobust's PGD and APGD (linf and l2) with torchattacks, Foolbox and ART.

Run by hand (not by pytest). The peers live in a side venv that also sees advrobust:

    python -m venv --system-site-packages ../peers
    ../peers/bin/pip install --no-deps torchattacks requests adversarial-robustness-toolbox \
        foolbox eagerpy gitpython gitdb smmap
    OMP_NUM_THREADS=1 ../peers/bin/python bench/attacks_catalogue_pgd.py --n 500
    OMP_NUM_THREADS=1 ../peers/bin/python bench/attacks_catalogue_pgd.py --n 500 \
        --attack apgd --steps 100 --loss dlr   # torchattacks and ART (Foolbox has no APGD)

Same model as ``attacks_catalogue_1.py`` (the MNIST MLP 784-256-256-10 cached in
``runs/catalogue1/mnist_mlp.pt``, trained there on first use), the correctly classified ones of the
first ``--n`` test images, and for every library the same threat (norm, eps, box [0, 1]), number
of steps, absolute step size, random start and number of restarts. Peers without a restart
option (torchattacks, Foolbox) run ``restarts`` times with different seeds and a sample counts as
broken when any run broke it; ART uses its own ``num_random_init``. Success, norms and
feasibility are recomputed here through the model for every library.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from advrobust import LpBall
from advrobust.attacks import APGD, PGD
from advrobust.data import load_dataset

REPO = Path(__file__).resolve().parents[1]
Config = dict[str, float | int | str]
AttackFn = Callable[[nn.Module, Tensor, Tensor, Config, int], Tensor]


def _catalogue1() -> object:
    """``bench/attacks_catalogue_1.py`` as a module (the shared model definition and cache)."""
    spec = importlib.util.spec_from_file_location("catalogue1",
                                                  REPO / "bench/attacks_catalogue_1.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ one run per library
def ours(model: nn.Module, x: Tensor, y: Tensor, cfg: Config, restarts: int) -> Tensor:
    attack = PGD(steps=int(cfg["steps"]), step_size=float(cfg["alpha"]), restarts=restarts,
                 random_start=True, loss="ce")
    threat = LpBall(str(cfg["norm"]), float(cfg["eps"]), 0.0, 1.0)
    gen = torch.Generator().manual_seed(int(cfg["seed"]))
    return attack(model, x, y, threat, generator=gen).x_adv


def torchattacks_run(model: nn.Module, x: Tensor, y: Tensor, cfg: Config, seed: int) -> Tensor:
    import torchattacks

    torch.manual_seed(seed)  # its random start draws from torch's global generator
    cls = torchattacks.PGD if cfg["norm"] == "linf" else torchattacks.PGDL2
    return cls(model, eps=float(cfg["eps"]), alpha=float(cfg["alpha"]), steps=int(cfg["steps"]),
               random_start=True)(x, y)


def foolbox_run(model: nn.Module, x: Tensor, y: Tensor, cfg: Config, seed: int) -> Tensor:
    import foolbox as fb

    torch.manual_seed(seed)
    cls = fb.attacks.LinfPGD if cfg["norm"] == "linf" else fb.attacks.L2PGD
    attack = cls(abs_stepsize=float(cfg["alpha"]), steps=int(cfg["steps"]), random_start=True)
    _, clipped, _ = attack(fb.PyTorchModel(model, bounds=(0, 1)), x, y,
                           epsilons=float(cfg["eps"]))
    return clipped


def art(model: nn.Module, x: Tensor, y: Tensor, cfg: Config, restarts: int) -> Tensor:
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    np.random.seed(int(cfg["seed"]))  # ART draws its random starts from numpy's generator
    classifier = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(),
                                   input_shape=tuple(x.shape[1:]), nb_classes=10,
                                   clip_values=(0.0, 1.0), device_type="cpu")
    attack = ProjectedGradientDescent(
        classifier, norm=np.inf if cfg["norm"] == "linf" else 2, eps=float(cfg["eps"]),
        eps_step=float(cfg["alpha"]), max_iter=int(cfg["steps"]), num_random_init=restarts,
        batch_size=len(x), verbose=False)
    onehot = nn.functional.one_hot(y, 10).numpy().astype(np.float32)
    return torch.from_numpy(attack.generate(x.numpy(), y=onehot))


def with_restarts(run: Callable[[nn.Module, Tensor, Tensor, Config, int], Tensor]) -> AttackFn:
    """``restarts`` seeded runs of a peer without restarts; per sample, the first success."""
    def fn(model: nn.Module, x: Tensor, y: Tensor, cfg: Config, restarts: int) -> Tensor:
        base = 1000 * int(cfg["seed"])
        best = run(model, x, y, cfg, base).detach().clone()
        for seed in range(base + 1, base + restarts):
            with torch.no_grad():
                todo = model(best).argmax(1) == y
            if not bool(todo.any()):
                break
            again = run(model, x[todo], y[todo], cfg, seed).detach()
            best[todo] = again
        return best
    return fn


def ours_apgd(model: nn.Module, x: Tensor, y: Tensor, cfg: Config, restarts: int) -> Tensor:
    attack = APGD(loss=str(cfg["loss"]), steps=int(cfg["steps"]), restarts=restarts)
    threat = LpBall(str(cfg["norm"]), float(cfg["eps"]), 0.0, 1.0)
    gen = torch.Generator().manual_seed(int(cfg["seed"]))
    return attack(model, x, y, threat, generator=gen).x_adv


def torchattacks_apgd(model: nn.Module, x: Tensor, y: Tensor, cfg: Config,
                      restarts: int) -> Tensor:
    import torchattacks

    return torchattacks.APGD(model, norm="Linf" if cfg["norm"] == "linf" else "L2",
                             eps=float(cfg["eps"]), steps=int(cfg["steps"]), n_restarts=restarts,
                             loss=str(cfg["loss"]), seed=int(cfg["seed"]))(x, y)


def art_apgd(model: nn.Module, x: Tensor, y: Tensor, cfg: Config, restarts: int) -> Tensor:
    from art.attacks.evasion import AutoProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    np.random.seed(int(cfg["seed"]))
    classifier = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(),
                                   input_shape=tuple(x.shape[1:]), nb_classes=10,
                                   clip_values=(0.0, 1.0), device_type="cpu")
    loss = "cross_entropy" if cfg["loss"] == "ce" else "difference_logits_ratio"
    attack = AutoProjectedGradientDescent(
        classifier, norm=np.inf if cfg["norm"] == "linf" else 2, eps=float(cfg["eps"]),
        eps_step=2 * float(cfg["eps"]), max_iter=int(cfg["steps"]), nb_random_init=restarts,
        batch_size=len(x), loss_type=loss, verbose=False)
    onehot = nn.functional.one_hot(y, 10).numpy().astype(np.float32)
    return torch.from_numpy(attack.generate(x.numpy(), y=onehot))


#: Per attack, the run of each library (APGD: Foolbox has none).
TABLE: dict[str, dict[str, AttackFn]] = {
    "pgd": {"advrobust": ours, "torchattacks": with_restarts(torchattacks_run),
            "foolbox": with_restarts(foolbox_run), "art": art},
    "apgd": {"advrobust": ours_apgd, "torchattacks": torchattacks_apgd, "art": art_apgd},
}
LIBS = TABLE["pgd"]


# ------------------------------------------------------------------ measurement
def summarise(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor,
              cfg: Config) -> tuple[dict, Tensor]:
    with torch.no_grad():
        success = model(x_adv).argmax(1) != y
    delta = (x_adv - x).flatten(1)
    norms = delta.abs().amax(1) if cfg["norm"] == "linf" else delta.norm(dim=1)
    tol = 1e-5 * max(1.0, float(cfg["eps"]))
    return {"robust_accuracy": float(1 - success.float().mean()),
            "broken": int(success.sum()),
            "median_norm_successes": float(norms[success].median()) if bool(success.any())
            else None,
            "inside_ball": bool((norms <= float(cfg["eps"]) + tol).all()),
            "inside_box": bool(((x_adv >= -1e-6) & (x_adv <= 1 + 1e-6)).all())}, success


def run_one(lib: str, model: nn.Module, x: Tensor, y: Tensor, cfg: Config,
            restarts: int) -> tuple[dict, Tensor | None]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            x_adv = TABLE[str(cfg["attack"])][lib](model, x, y, cfg, restarts).detach().float()
            seconds = time.perf_counter() - start
    except ImportError as exc:
        return {"skipped": f"not importable: {exc}"}, None
    row, success = summarise(model, x, y, x_adv, cfg)
    return row | {"seconds": seconds, "images_per_s": len(x) / seconds}, success


def parse_threat(text: str, steps: int, seed: int = 0, attack: str = "pgd",
                 loss: str = "ce") -> Config:
    """``linf:0.05:0.005`` -> norm, eps, absolute step size (default 2.5 * eps / steps)."""
    parts = text.split(":")
    eps = float(parts[1])
    alpha = float(parts[2]) if len(parts) > 2 else 2.5 * eps / steps
    return {"norm": parts[0], "eps": eps, "alpha": alpha, "steps": steps, "seed": seed,
            "attack": attack, "loss": loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="first N test images (default 500)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--restarts", type=int, nargs="+", default=[1])
    parser.add_argument("--seed", type=int, default=0, help="seed of every library's random starts")
    parser.add_argument("--threats", nargs="+", default=["linf:0.05:0.005", "l2:1.0:0.1"],
                        help="NORM:EPS[:STEP] (default: linf:0.05:0.005 l2:1.0:0.1)")
    parser.add_argument("--attack", default="pgd", choices=list(TABLE))
    parser.add_argument("--loss", default="ce", choices=["ce", "dlr"], help="APGD's loss")
    parser.add_argument("--libs", nargs="+", default=None, choices=list(LIBS),
                        help="default: every library that has the attack")
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared/data/mnist")
    parser.add_argument("--out", type=Path, default=REPO / "runs/catalogue1/pgd_parity.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = _catalogue1().trained_model(args.data_root,  # type: ignore[attr-defined]
                                        REPO / "runs/catalogue1/mnist_mlp.pt")
    test = load_dataset("mnist", split="test", root=args.data_root)
    x, y = test.x[:args.n], test.y[:args.n]
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    print(f"clean accuracy on the first {args.n}: {float(keep.float().mean()):.4f}; "
          f"attacking the {int(keep.sum())} correct ones", flush=True)
    x, y = x[keep], y[keep]
    libs = [lib for lib in (args.libs or list(LIBS)) if lib in TABLE[args.attack]]
    for lib in libs:  # imports and first-call costs out of the timings
        run_one(lib, model, x[:4], y[:4],
                parse_threat(args.threats[0], 2, 0, args.attack, args.loss), 1)
    results: dict[str, dict] = {}
    for text in args.threats:
        cfg = parse_threat(text, args.steps, args.seed, args.attack, args.loss)
        for restarts in args.restarts:
            ours_success: Tensor | None = None
            for lib in libs:
                row, success = run_one(lib, model, x, y, cfg, restarts)
                if lib == "advrobust":
                    ours_success = success
                elif success is not None and ours_success is not None:
                    row["broken_by_peer_only"] = int((success & ~ours_success).sum())
                    row["broken_by_ours_only"] = int((ours_success & ~success).sum())
                key = (f"{args.attack}-{args.loss}/{cfg['norm']}:{cfg['eps']}/"
                       f"restarts={restarts}/{lib}")
                results[key] = row | {"n": len(x), **cfg, "restarts": restarts}
                print(f"| {key} | " + " | ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in row.items()) + " |", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": {k: str(v) for k, v in vars(args).items()},
                                    "results": results}, indent=2))


if __name__ == "__main__":
    main()
