"""``advrobust smooth``: randomized smoothing (Cohen, Rosenfeld & Kolter 2019) of a checkpoint.

``certify`` runs CERTIFY on the first ``--images`` images and prints the certified accuracy at a
list of radii (optionally plotted against the radius); ``predict`` runs PREDICT and prints how
often the smoothed classifier is right, wrong or abstains. Both are statements about the
smoothed classifier ``g``, never about the base model of the checkpoint.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Any

from advrobust.cli._common import (
    add_json_arg,
    check_model_data,
    check_plot_path,
    emit,
    load_model,
    seed_arg,
)
from advrobust.errors import InvalidInputError, InvalidParameterError

__all__ = ["register", "run"]

EXAMPLE = """examples:
  advrobust train --model lenet --data mnist --data-dir ../shared/data/mnist --defense gaussian \\
      --sigma 0.5 --optimizer adam --lr 0.001 --epochs 40 --lr-drop 30 --out lenet_s05.pt
  advrobust smooth certify --model lenet_s05.pt --data mnist --data-dir ../shared/data/mnist \\
      --sigma 0.5 --n 10000 --alpha 0.001 --n0 100 --images 500 --plot certified.png
  advrobust smooth predict --model lenet_s05.pt --data mnist --sigma 0.5 --n 1000 --alpha 0.001
  advrobust smooth certify --model seed0.pt seed1.pt seed2.pt --data mnist --sigma 0.5   # ensemble

A certificate says: with probability >= 1 - alpha over the noise, the smoothed classifier
g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c) keeps its class on the l2 ball of the radius
given. It says nothing about the base model f. Use the sigma the model was trained with.
"""

DEFAULT_RADII = "0,0.25,0.5,0.75,1,1.25,1.5,1.75,2"


def register(sub: Any) -> None:
    """Add the ``smooth`` command and its ``certify`` / ``predict`` subcommands."""
    p = sub.add_parser(
        "smooth", help="randomized smoothing: certified l2 radii of the smoothed classifier",
        description="Randomized smoothing (Cohen, Rosenfeld & Kolter 2019): certify or predict "
                    "with the Gaussian-smoothed version of a checkpoint's model, using only "
                    "forward passes.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    cert = actions.add_parser("certify", help="CERTIFY: smoothed class and certified l2 radius",
                              epilog=EXAMPLE,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _common_args(cert)
    cert.add_argument("--n0", type=int, default=100,
                      help="selection samples per image (default: 100)")
    cert.add_argument("--radii", default=DEFAULT_RADII,
                      help=f"comma-separated radii of the table (default: {DEFAULT_RADII})")
    cert.add_argument("--plot", type=Path, default=None, metavar="PNG",
                      help="draw certified accuracy against the radius to this PNG file")
    pred = actions.add_parser("predict", help="PREDICT: smoothed class or abstain",
                              epilog=EXAMPLE,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _common_args(pred)
    p.set_defaults(func=run)


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, nargs="+", action="extend",
                   metavar="CKPT",
                   help="checkpoint file written by 'advrobust train'; several (--model A B, or "
                        "--model A --model B) smooth their soft-voting ensemble")
    p.add_argument("--data", default="mnist", help="dataset name: digits, mnist or cifar10 "
                                                   "(default: mnist)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder holding the dataset files (default: $ADVROBUST_DATA/NAME)")
    p.add_argument("--split", default="test", choices=("train", "test"),
                   help="which split to use (default: test)")
    p.add_argument("--images", type=int, default=100,
                   help="smooth the first IMAGES images of the split (default: 100)")
    p.add_argument("--sigma", type=float, required=True, help="noise standard deviation")
    p.add_argument("--n", type=int, default=10_000,
                   help="noise samples per image (estimation samples; default: 10000)")
    p.add_argument("--alpha", type=float, default=0.001,
                   help="error probability of each answer (default: 0.001)")
    p.add_argument("--batch-size", type=int, default=1000,
                   help="noisy copies per forward pass (default: 1000)")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the noise (default: 0)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_json_arg(p)
    p.set_defaults(func=run)


def _radii(text: str) -> list[float]:
    try:
        radii = [float(r) for r in text.split(",")]
    except ValueError:
        raise InvalidParameterError(
            f"--radii must be comma-separated numbers >= 0. Got {text!r} instead.") from None
    bad = [r for r in radii if not r >= 0]
    if bad:
        raise InvalidParameterError(
            f"--radii must be numbers >= 0 (a radius is a distance). Got {bad[0]:g} in "
            f"--radii {text!r} instead.")
    return radii


def _load(args: argparse.Namespace) -> tuple[list[Any], Any, Any, str]:
    """The checkpoints and the first ``--images`` inputs / labels, and a description."""
    from advrobust.data import load_dataset

    if args.images < 1:
        raise InvalidParameterError(f"--images must be an int >= 1. Got {args.images} instead.")
    ckpts = [load_model(path) for path in args.model]
    data = load_dataset(args.data, split=args.split, root=args.data_dir)
    for ckpt in ckpts:
        check_model_data(ckpt, data)
    if args.images > len(data):
        raise InvalidInputError(
            f"--images must be at most the {len(data)} images of the {args.data} {args.split} "
            f"split. Got {args.images} instead.")
    what = f"{data.name} {args.split}, {args.images} images"
    if len(ckpts) > 1:
        what += f", ensemble of {len(ckpts)} models"
    return ckpts, data.x[:args.images], data.y[:args.images], what


def _smoothed(args: argparse.Namespace, ckpts: list[Any]) -> Any:
    """``Smoothed`` of the checkpoint's model, or of the soft-voting ensemble of several
    (validates --sigma); warns when a checkpoint records a different training sigma."""
    from advrobust.models import Ensemble
    from advrobust.smoothing import Smoothed

    for path, ckpt in zip(args.model, ckpts, strict=True):
        trained = (ckpt.metadata.get("defense") or {}).get("params", {}).get("sigma")
        if trained is not None and float(trained) != args.sigma:
            warnings.warn(f"{path} was trained with noise sigma={trained} but --sigma is "
                          f"{args.sigma}: certified radii are usually best at the training "
                          "sigma.", UserWarning, stacklevel=2)
    model = ckpts[0].model if len(ckpts) == 1 else Ensemble([c.model for c in ckpts])
    return Smoothed(model, args.sigma)


def run(args: argparse.Namespace) -> int:
    """Run ``smooth certify`` or ``smooth predict``; print a table (or JSON)."""
    return _certify(args) if args.action == "certify" else _predict(args)


def _certify(args: argparse.Namespace) -> int:
    import torch

    from advrobust.smoothing import CERTIFIES, max_certifiable_radius

    radii = _radii(args.radii)
    check_plot_path(args.plot, "--plot")  # before the (long) certification, not after it
    ckpts, x, y, what = _load(args)
    smoothed = _smoothed(args, ckpts)
    start = time.perf_counter()
    cert = smoothed.certify(x, n0=args.n0, n=args.n, alpha=args.alpha,
                            batch_size=args.batch_size,
                            generator=torch.Generator().manual_seed(args.seed),
                            progress=not args.no_progress and not args.json)
    seconds = time.perf_counter() - start
    accuracy = cert.certified_accuracy(y, radii)
    r_max = max_certifiable_radius(args.sigma, args.n, args.alpha)
    payload = {"certifies": CERTIFIES, "confidence": cert.confidence, "data": what,
               "sigma": args.sigma, "n0": args.n0, "n": args.n, "alpha": args.alpha,
               "radii": radii, "certified_accuracy": accuracy,
               "abstained": int(cert.abstained.sum()), "max_certifiable_radius": r_max,
               "seconds": seconds, "seconds_per_image": seconds / len(y),
               "samples": cert.to_dict(y)}
    rows: list[tuple[str, Any]] = [
        ("certifies", "the smoothed classifier g, not the base model"),
        ("confidence per image", f"{cert.confidence:g} (alpha={args.alpha:g})"),
        ("settings", f"sigma={args.sigma:g}, n0={args.n0}, n={args.n}"),
        ("abstained", f"{int(cert.abstained.sum())} of {len(y)}"),
        ("largest certifiable radius", r_max)]
    rows += [(f"certified accuracy at r={r:g}", a) for r, a in zip(radii, accuracy, strict=True)]
    rows += [("seconds per image", seconds / len(y))]
    if args.plot is not None:
        _plot(cert, y, r_max, args.plot, f"{what}, sigma={args.sigma:g}, n={args.n}, "
                                         f"alpha={args.alpha:g}")
        rows.append(("plot", str(args.plot)))
    emit(args, payload, rows, title=f"advrobust smooth certify ({what})")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import torch

    from advrobust.smoothing import CERTIFIES

    ckpts, x, y, what = _load(args)
    smoothed = _smoothed(args, ckpts)
    start = time.perf_counter()
    pred = smoothed.predict(
        x, n=args.n, alpha=args.alpha, batch_size=args.batch_size,
        generator=torch.Generator().manual_seed(args.seed),
        progress=not args.no_progress and not args.json)
    seconds = time.perf_counter() - start
    right = int((pred.prediction == y).sum())
    abstained = int(pred.abstained.sum())
    payload = {"certifies": CERTIFIES, "confidence": pred.confidence, "data": what,
               "sigma": args.sigma, "n": args.n, "alpha": args.alpha,
               "accuracy": right / len(y), "abstained": abstained,
               "wrong": len(y) - right - abstained, "seconds": seconds,
               "prediction": pred.prediction.tolist(), "label": y.tolist()}
    rows = [("about", "the smoothed classifier g, not the base model"),
            ("confidence per answer", f"{pred.confidence:g} (alpha={args.alpha:g})"),
            ("settings", f"sigma={args.sigma:g}, n={args.n}"),
            ("accuracy (abstentions count as wrong)", right / len(y)),
            ("abstained", abstained), ("wrong", len(y) - right - abstained),
            ("seconds per image", seconds / len(y))]
    emit(args, payload, rows, title=f"advrobust smooth predict ({what})")
    return 0


def _plot(cert: Any, y: Any, r_max: float, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.linspace(0.0, max(r_max, 1e-3) * 1.02, 200)
    acc = cert.certified_accuracy(y, grid.tolist())
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=100)
    ax.plot(grid, acc, drawstyle="steps-post")
    ax.axvline(r_max, color="grey", linestyle=":", label="largest certifiable radius")
    ax.set(xlabel="l2 radius", ylabel="certified accuracy (smoothed classifier)",
           ylim=(0, 1.02))
    ax.set_title(title, fontsize=7, loc="left")
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
