"""Lipschitz certificates (issue 12): the radius ratio and GloRo training on MNIST.

``ratio``: the mean certified linf radius of global Lipschitz : local Lipschitz (Fast-Lip) :
CROWN : exact (MILP minimal distortion) on a 784-20-20-10 MNIST MLP (published on a 2x20 MLP:
0.003 : 0.020 : 0.045 : 0.054, Weng et al. 2018 table with Reluplex as exact).

``gloro``: GloRo training (Leino et al. 2021) for l2 eps 1.58 on MNIST and the certified
accuracy the global Lipschitz bound gives (target >= 0.48; BCP 47.95 %, GloRo 62.8 %).

    python bench/lipschitz.py ratio --n 20 --out runs/lipschitz/ratio.json
    python bench/lipschitz.py gloro --model mlp2 --epochs 15 --train-eps 1.74 \
        --out runs/lipschitz/gloro.json
    python bench/lipschitz.py gloro --checkpoint gloro.pt --n 1000  # a CLI-trained model
    python bench/lipschitz.py gloro --model minmax-mlp --epochs 200 --lr-schedule cyclic \
        --beta 3 --holdout 2000 --save cand.pt   # certified on the 2,000 held-out train images
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from defenses_common import Timer, common_args, machine, mnist, write  # noqa: E402

from advrobust.core.threat import Norm  # noqa: E402
from advrobust.exact import MinimalDistortion  # noqa: E402
from advrobust.models import build_model, load_checkpoint  # noqa: E402
from advrobust.network.ir import from_module  # noqa: E402
from advrobust.network.ops import AffineOp  # noqa: E402
from advrobust.relax import (  # noqa: E402
    CROWN,
    GlobalLipschitz,
    LocalLipschitz,
    certified_radius,
)
from advrobust.relax._opnorm import (  # noqa: E402
    network_split,
    network_units,
    op_norm,
    power_iteration,
)
from advrobust.training import fit  # noqa: E402
from advrobust.training.defenses import build_objective  # noqa: E402


def _mlp_2x20(seed: int) -> torch.nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 20),
                                   torch.nn.ReLU(), torch.nn.Linear(20, 20), torch.nn.ReLU(),
                                   torch.nn.Linear(20, 10))


def ratio(args: argparse.Namespace) -> dict[str, object]:
    train, test = mnist("train", args.data_dir), mnist("test", args.data_dir)
    model = _mlp_2x20(args.seed)
    t_train = Timer()
    fit(model, (train.x, train.y), epochs=3, lr=1e-3, optimizer="adam", batch_size=100,
        progress=False)
    t_train_s = t_train()
    model.eval()
    x, y = test.x[:args.n], test.y[:args.n]
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    x, y = x[keep], y[keep]
    out: dict[str, object] = {"train_seconds": t_train_s, "n": int(x.shape[0]),
                              "clean_accuracy": float(keep.double().mean())}
    radii = {}
    for name, method in (("global", GlobalLipschitz()), ("local", LocalLipschitz()),
                         ("crown", CROWN())):
        t = Timer()
        radii[name] = certified_radius(method, model, x, y, "linf").radius
        t_s = t()
        out[f"{name}_seconds"] = t_s
    t = Timer()
    exact = MinimalDistortion(norm="linf", time_limit=args.time_limit,
                              max_eps=args.max_eps)(model, x, y)
    t_s = t()
    out["exact_seconds"] = t_s
    out["exact_status"] = {s: exact.status.count(s) for s in set(exact.status)}
    radii["exact_lower"] = exact.lower
    radii["exact_upper"] = exact.distance.clamp(max=args.max_eps)
    for name, r in radii.items():
        out[f"mean_{name}"] = float(r.double().mean())
    out["ratio"] = " : ".join(f"{float(radii[k].double().mean()):.4f}"
                              for k in ("global", "local", "crown", "exact_lower"))
    out["crown_le_exact"] = bool((radii["crown"] <= exact.distance + 1e-6).all())
    return out


def _layer_norms(model: torch.nn.Module) -> list[dict[str, object]]:
    """Per affine op before the last nonlinearity (MinMax blocks, which count 1, left out):
    certified l2 norm and a 100-step power iteration."""
    net = from_module(model, (1, 28, 28))
    units = network_units(net, network_split(net))
    gen = torch.Generator().manual_seed(0)
    return [{"op": op.name, "certified": op_norm(op, Norm.L2),
             "power_iteration": power_iteration(op, 100, gen)}
            for _, op in units if isinstance(op, AffineOp)]


def _certify(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, object]:
    """Clean and `GlobalLipschitz`-certified l2 accuracy of ``model`` on (x, y)."""
    t_cert = Timer()
    res = certified_radius(GlobalLipschitz(), model, x, y, "l2")
    t_cert_s = t_cert()
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).double().mean())
    return {"n": int(x.shape[0]), "certify_seconds": t_cert_s, "clean_accuracy": clean,
            "certified_accuracy": {str(e): float((res.radius >= e).double().mean())
                                   for e in (0.5, 1.0, 1.58)},
            "mean_radius": float(res.radius.mean())}


def gloro(args: argparse.Namespace) -> dict[str, object]:
    """Train (or load ``--checkpoint``) and certify on the first ``--n`` test images, or with
    ``--holdout H`` on the last H training images (which training then leaves out), so that
    candidate recipes are compared without the test set."""
    if args.holdout < 0:
        raise SystemExit(f"--holdout must be >= 0. Got {args.holdout}.")
    train = mnist("train", args.data_dir)
    if args.holdout >= len(train.y):
        raise SystemExit(f"--holdout must be below the {len(train.y)} training images. "
                         f"Got {args.holdout}.")
    kept = len(train.y) - args.holdout
    t_train_s: float | None = None
    cpu_train_s: float | None = None
    if args.checkpoint is not None:  # a model trained by `advrobust train --defense gloro`
        loaded = load_checkpoint(args.checkpoint)
        model, name = loaded.model, loaded.arch
        epochs, train_eps = loaded.metadata.get("epochs"), None
        trained_on = loaded.metadata.get("n_train")
        if args.holdout and (not isinstance(trained_on, int) or trained_on > kept):
            raise SystemExit(f"--holdout {args.holdout}: the checkpoint was trained on "
                             f"{trained_on} images, not on the first {kept} only.")
    else:
        model, name = build_model(args.model, input_shape=(1, 28, 28),
                                  seed=args.seed), args.model
        epochs, train_eps = args.epochs, args.train_eps
        objective = build_objective("gloro", eps=args.train_eps, ramp=args.ramp,
                                    beta=args.beta, seed=args.seed)
        save = {} if args.save is None else {
            "checkpoint_path": args.save, "arch": name,
            "arch_kwargs": {"input_shape": [1, 28, 28], "num_classes": 10, "normalize": None},
            "metadata": {"dataset": "mnist", "n_train": kept, "holdout": args.holdout,
                         "defense": {"name": "gloro", "params": {
                             "eps": args.train_eps, "norm": "l2", "beta": args.beta,
                             "ramp": args.ramp, "seed": args.seed}}}}
        t_train, cpu0 = Timer(), time.process_time()
        fit(model, (train.x[:kept], train.y[:kept]), objective=objective, epochs=args.epochs,
            lr=args.lr, optimizer="adam", lr_schedule=args.lr_schedule,
            batch_size=args.batch_size, progress=False, seed=args.seed, shift=args.shift,
            **save)
        t_train_s, cpu_train_s = t_train(), time.process_time() - cpu0
    model.eval()
    if args.holdout:
        x, y, split = train.x[kept:], train.y[kept:], f"train[{kept}:] (held out)"
    else:
        x, y, split = mnist("test", args.data_dir).x[:args.n], \
            mnist("test", args.data_dir).y[:args.n], "test"
    return {"model": name, "checkpoint": None if args.checkpoint is None else
            str(args.checkpoint), "epochs": epochs, "train_eps": train_eps,
            "train_seconds": t_train_s, "train_cpu_seconds": cpu_train_s,
            "evaluated_on": split, **_certify(model, x, y),
            "layer_norms": _layer_norms(model), "machine": machine()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("ratio", "gloro"))
    common_args(parser)
    parser.add_argument("--n", type=int, default=20, help="test images")
    parser.add_argument("--time-limit", type=float, default=60.0, help="MILP s per image")
    parser.add_argument("--max-eps", type=float, default=0.2, help="MILP search radius")
    parser.add_argument("--model", default="mlp2")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="gloro: certify this checkpoint instead of training --model")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--train-eps", type=float, default=1.74)
    parser.add_argument("--ramp", type=float, default=0.3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--beta", type=float, default=None, help="gloro: TRADES weight")
    parser.add_argument("--lr-schedule", choices=("step", "cyclic"), default="step")
    parser.add_argument("--shift", type=int, default=0, help="gloro: random shifts (pixels)")
    parser.add_argument("--holdout", type=int, default=0,
                        help="gloro: train without the last H training images and certify "
                             "on them instead of the test set")
    parser.add_argument("--save", type=Path, default=None,
                        help="gloro: write the trained model's checkpoint here (every epoch)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    payload = ratio(args) if args.part == "ratio" else gloro(args)
    payload = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
               for k, v in payload.items()}
    write(args.out, payload)


if __name__ == "__main__":
    main()
