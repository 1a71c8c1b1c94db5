"""``advrobust demo``: train (or reuse) a small digits model, attack it, certify it."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from advrobust.cli._common import add_json_arg, emit, seed_arg

if TYPE_CHECKING:
    import torch

__all__ = ["register", "run"]

EXAMPLE = """example:
  advrobust demo                 # ~5 s on 2 cores: train, attack (PGD) and certify (CROWN)
  advrobust demo --eps 0.02 0.05 --json
"""


def register(sub: Any) -> None:
    """Add the ``demo`` command."""
    p = sub.add_parser("demo", help="train, attack and certify a small model on bundled digits",
                       description="Train (or reuse a cached) mlp2 on scikit-learn's digits, then "
                                   "bracket its robustness: PGD-40 from above, CROWN from below, "
                                   "at several eps ('advrobust verify --method auto' adds MILP).",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eps", type=float, nargs="+", default=[0.01, 0.03, 0.05, 0.1],
                   help="linf radii in [0, 1] pixel units (default: 0.01 0.03 0.05 0.1)")
    p.add_argument("--n", type=int, default=200, help="test images to evaluate (default: 200)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where the trained model is cached (default: $ADVROBUST_CACHE or "
                        "~/.cache/advrobust)")
    p.add_argument("--retrain", action="store_true", help="ignore a cached model")
    p.add_argument("--epochs", type=int, default=30,
                   help="training epochs when no cached model fits (default: 30)")
    p.add_argument("--seed", type=seed_arg, default=0, help="training and attack seed (default: 0)")
    add_json_arg(p)
    p.set_defaults(func=run)


def _cache_dir(arg: Path | None) -> Path:
    if arg is not None:
        if arg.exists() and not arg.is_dir():
            from advrobust.errors import InvalidParameterError

            raise InvalidParameterError(f"--cache-dir must be a folder; {arg} is a file.")
        return arg
    env = os.environ.get("ADVROBUST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "advrobust"


def _model(args: argparse.Namespace, train: Any, test: Any) -> tuple[torch.nn.Module, str]:
    from advrobust.errors import CheckpointError
    from advrobust.models import build_model, load_checkpoint, save_checkpoint
    from advrobust.training import fit

    path = _cache_dir(args.cache_dir) / f"demo-mlp2-digits-seed{args.seed}-{args.epochs}ep.pt"
    if path.exists() and not args.retrain:
        try:
            return load_checkpoint(path).model, f"cached {path}"
        except CheckpointError:
            pass  # stale or corrupt cache: retrain below
    path.parent.mkdir(parents=True, exist_ok=True)  # an unusable cache fails before training
    kwargs = {"input_shape": train.input_shape, "num_classes": train.num_classes}
    model = build_model("mlp2", seed=args.seed, **kwargs)
    fit(model, train, test=test, epochs=args.epochs, lr=0.1, batch_size=50, seed=args.seed,
        progress=not args.json)
    acc = float((model(test.x).argmax(1) == test.y).float().mean())
    save_checkpoint(path, model, arch="mlp2", arch_kwargs=kwargs,
                    metadata={"dataset": "digits", "epochs": args.epochs, "seed": args.seed,
                              "clean_accuracy": acc})
    return model.eval(), f"trained, cached at {path}"


def run(args: argparse.Namespace) -> int:
    """Run the demo; prints a table (or JSON) of clean / PGD / certified accuracy per eps."""
    import torch

    from advrobust import LpBall
    from advrobust.attacks import PGD
    from advrobust.core._validation import check_int
    from advrobust.data import load_dataset
    from advrobust.relax import CROWN

    check_int(args.n, "--n", "advrobust demo", low=1)
    check_int(args.epochs, "--epochs", "advrobust demo", low=1)
    start = time.perf_counter()
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    model, origin = _model(args, train, test)
    data = test.take(min(args.n, len(test)))
    with torch.no_grad():
        clean = float((model(data.x).argmax(1) == data.y).float().mean())
    rows: list[dict[str, float]] = []
    for eps in args.eps:
        threat = LpBall("linf", eps)
        gen = torch.Generator().manual_seed(args.seed)
        attack = PGD(steps=40, restarts=2)(model, data.x, data.y, threat, generator=gen)
        bound = CROWN()(model, data.x, data.y, threat)
        rows.append({"eps": eps, "pgd_robust_accuracy": float((~attack.success).float().mean()),
                     "crown_certified_accuracy": float(bound.verified.float().mean())})
    payload = {"model": "mlp2", "dataset": "digits", "n": len(data), "origin": origin,
               "clean_accuracy": clean, "rows": rows,
               "seconds": time.perf_counter() - start}
    if args.json:
        emit(args, payload)
        return 0
    print(f"advrobust demo: mlp2 on digits ({origin}); {len(data)} test images, "
          f"clean accuracy {clean:.3f}")
    print("  eps    robust (PGD-40, upper)   certified (CROWN, lower)")
    for r in rows:
        print(f"  {r['eps']:<6g} {r['pgd_robust_accuracy']:>10.3f}               "
              f"{r['crown_certified_accuracy']:>10.3f}")
    print("The true robust accuracy lies between the two columns. "
          f"({payload['seconds']:.1f} s)")
    return 0
