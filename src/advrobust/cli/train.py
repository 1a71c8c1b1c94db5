"""``advrobust train``: train a reference architecture and write a checkpoint."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from advrobust.cli._common import add_data_args, add_json_arg, emit

__all__ = ["register", "run"]

EXAMPLE = """examples:
  advrobust train --model mlp2 --data digits --epochs 30 --batch-size 50 --out mlp2_digits.pt
  advrobust train --model cnn --data mnist --data-dir ../shared/data/mnist --epochs 10 \\
      --out cnn_mnist.pt                 # course recipe: SGD lr 0.1, batch 100, lr/10 at epoch 6
  advrobust train --model lenet --data cifar10 --data-dir cifar-10-batches-py --momentum 0.9 \\
      --normalize 0.491,0.482,0.447 0.247,0.243,0.262 --out lenet_cifar.pt
"""


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a float or comma-separated floats, got {text!r}") from None


def register(sub: Any) -> None:
    """Add the ``train`` command."""
    from advrobust.models import MODELS

    p = sub.add_parser(
        "train", help="train a reference model and save a checkpoint",
        description="Train one of the reference architectures with SGD on cross-entropy (the "
                    "course recipe by default), report the test error per epoch, and write a "
                    "checkpoint with its metadata (dataset, epochs, seed, clean accuracy).",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=MODELS, metavar="ARCH",
                   help=f"architecture: {', '.join(MODELS)}")
    add_data_args(p, split="train")
    p.add_argument("--test-n", type=int, default=None,
                   help="evaluate on only the first N test samples (default: all)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    p.add_argument("--epochs", type=int, default=10, help="passes over the data (default: 10)")
    p.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (default: 0.1)")
    p.add_argument("--batch-size", type=int, default=100, help="batch size (default: 100)")
    p.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (default: 0)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="L2 penalty (default: 0)")
    p.add_argument("--lr-drop", type=int, nargs="*", default=None, metavar="EPOCH",
                   help="epoch counts after which the lr is divided by 10 (default: half the "
                        "epochs for cnn, none otherwise; give no value for no drop)")
    p.add_argument("--normalize", nargs=2, type=_floats, default=None, metavar=("MEAN", "STD"),
                   help="put a per-channel Normalize layer first, e.g. 0.1307 0.3081 "
                        "(comma-separated for several channels)")
    p.add_argument("--seed", type=int, default=0, help="weight-init and shuffling seed "
                                                       "(default: 0)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_json_arg(p)
    p.set_defaults(func=run)


def _test_data(args: argparse.Namespace) -> Any:
    from advrobust.data import load_dataset

    test = load_dataset(args.data, split="test", root=args.data_dir)
    if args.test_n is not None:
        if args.test_n < 1:
            raise SystemExit(f"--test-n must be >= 1. Got {args.test_n}.")
        test = test.take(args.test_n)
    return test


def run(args: argparse.Namespace) -> int:
    """Train, evaluate, write ``--out``; prints a summary (or JSON)."""
    from advrobust.cli._common import load_data
    from advrobust.models import build_model
    from advrobust.training import course_schedule, fit

    train, test = load_data(args), _test_data(args)
    kwargs = {"input_shape": list(train.input_shape), "num_classes": train.num_classes,
              "normalize": args.normalize}
    model = build_model(args.model, seed=args.seed, **kwargs)
    drops = course_schedule(args.model, max(args.epochs, 1))["lr_drop_epochs"] \
        if args.lr_drop is None else tuple(args.lr_drop)
    start = time.perf_counter()
    history = fit(model, train, test=test, epochs=args.epochs, lr=args.lr,
                  batch_size=args.batch_size, momentum=args.momentum,
                  weight_decay=args.weight_decay, lr_drop_epochs=drops, seed=args.seed,
                  progress=not args.no_progress and not args.json, checkpoint_path=args.out,
                  arch=args.model, arch_kwargs=kwargs,
                  metadata={"data_provenance": str(getattr(train, "provenance", "")),
                            "n_test": len(test.y)})
    seconds = time.perf_counter() - start
    payload = {"checkpoint": str(args.out), "arch": args.model, "dataset": args.data,
               "n_train": len(train.y), "n_test": len(test.y), "epochs": args.epochs,
               "clean_accuracy": history.test_accuracy, "seconds": seconds,
               "history": history.to_dict()}
    rows = [("checkpoint", args.out), ("arch", args.model), ("dataset", args.data),
            ("train / test samples", f"{len(train.y)} / {len(test.y)}"),
            ("epochs", args.epochs), ("clean test accuracy", history.test_accuracy),
            ("training time (s)", round(seconds, 1))]
    emit(args, payload, rows, title="advrobust train")
    return 0
