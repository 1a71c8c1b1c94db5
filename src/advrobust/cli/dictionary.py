"""``advrobust dictionary``: learn an adversarial dictionary (ADiL / SADiL) and draw it.

``learn`` fits a dictionary on the first ``--n`` images of a split, reports the fooling rate,
rMSE and code sparsity on those images and on held-out images of the other split (coded with the
dictionary fixed), and writes an ``.npz`` file (also when learning stops on a non-finite
objective: the last finite iterate, with ``status`` "nan"); ``plot`` draws its atoms. The
dictionary attacks new inputs through ``advrobust attack --attack dictionary --param
dictionary=FILE.npz [--param dataset=NAME]`` (the file's input shape, and with ``dataset`` its
recorded dataset, are checked).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from advrobust.cli._common import (
    OutputLock,
    add_data_args,
    add_force_arg,
    add_json_arg,
    add_model_arg,
    add_progress_args,
    check_output,
    check_plot_path,
    emit,
    load_data,
    progress_enabled,
    seed_arg,
)
from advrobust.errors import InvalidParameterError

__all__ = ["register", "run"]

#: ``advrobust.attacks.dictionary.AdversarialLoss`` values, spelled out so that ``dictionary
#: --help`` does not import torch (tests/cli/test_cli_help_no_torch.py keeps the two equal).
LOSSES = ("ce", "margin")

EXAMPLE = """examples:
  advrobust dictionary learn --model runs/cnn.pt --data mnist --split train --n 1000 \\
      --atoms 10 --lambda1 0.1 --lambda2 0.001 --out dict.npz
  advrobust dictionary learn --model runs/cnn.pt --data mnist --split train --n 10000 \\
      --atoms 10 --stochastic --batch-size 128 --epochs 5 --out dict.npz
  advrobust dictionary plot dict.npz --out atoms.png
  advrobust attack --model runs/cnn.pt --data mnist --attack dictionary --norm l2 --eps 10 \\
      --dictionary dict.npz
"""


def register(sub: Any) -> None:
    """Add the ``dictionary`` command and its ``learn`` / ``plot`` subcommands."""
    p = sub.add_parser(
        "dictionary", help="learn and draw adversarial dictionaries (ADiL / SADiL)",
        description="Adversarial dictionary learning: perturbations D v_i with a dictionary D "
                    "of atoms shared by the data set and a sparse code v_i per image.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    _register_learn(actions)
    plot = actions.add_parser("plot", help="draw the atoms of a dictionary file",
                              epilog=EXAMPLE,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    plot.add_argument("dictionary", type=Path, help="file written by 'dictionary learn'")
    plot.add_argument("--out", type=Path, required=True, help="PNG file to write")
    plot.add_argument("--max-atoms", type=int, default=20, help="atoms drawn (default: 20)")
    add_force_arg(plot)
    add_json_arg(plot)
    plot.set_defaults(func=run)
    p.set_defaults(func=run)


def _register_learn(actions: Any) -> None:
    p = actions.add_parser("learn", help="learn a dictionary on a model and a data set",
                           epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arg(p)
    add_data_args(p, default="mnist", split="train")
    p.add_argument("--atoms", type=int, default=10, help="number of atoms M (default: 10)")
    p.add_argument("--lambda1", type=float, default=0.1, help="l1 weight (default: 0.1)")
    p.add_argument("--lambda2", type=float, default=0.001, help="energy weight (default: 0.001)")
    p.add_argument("--loss", default="margin", choices=LOSSES,
                   help="adversarial loss: margin (C&W, default) or ce")
    p.add_argument("--kappa", type=float, default=1.0, help="margin-loss confidence (default: 1)")
    p.add_argument("--target", default=None,
                   help="targeted: a class index, or 'second' (most probable wrong class)")
    p.add_argument("--step-size", type=float, default=1.0, help="step gamma (default: 1)")
    p.add_argument("--iterations", type=int, default=100, help="ADiL iterations (default: 100)")
    p.add_argument("--stochastic", action="store_true", help="use SADiL (minibatches)")
    p.add_argument("--batch-size", type=int, default=128, help="SADiL minibatch (default: 128)")
    p.add_argument("--epochs", type=int, default=5, help="SADiL epochs (default: 5)")
    p.add_argument("--heldout-n", type=int, default=None,
                   help="held-out images of the other split to evaluate on (0: none; "
                        "default: 500, or the whole split when it is smaller)")
    p.add_argument("--coding-steps", type=int, default=20,
                   help="coding iterations for held-out images (default: 20)")
    p.add_argument("--seed", type=seed_arg, default=0,
                   help="seed of the initial atoms (default: 0)")
    p.add_argument("--out", type=Path, required=True,
                   help="dictionary file (.npz) to write (refused if it exists, unless --force)")
    add_force_arg(p)
    p.add_argument("--plot", type=Path, default=None, help="also draw the atoms to this PNG")
    p.add_argument("--examples", type=Path, default=None,
                   help="draw example attacks (image, D v, attacked image) to this PNG")
    add_progress_args(p)
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``dictionary learn`` or ``dictionary plot``; returns the exit status."""
    if args.action == "plot":
        return _plot(args)
    with OutputLock(args.out, "--out"):  # one writer of --out at a time
        return _learn(args)


def _plot(args: argparse.Namespace) -> int:
    from advrobust.attacks.dictionary import load_dictionary, plot_atoms

    check_plot_path(args.out, "--out", force=args.force)
    d = load_dictionary(args.dictionary)
    plot_atoms(args.out, d, max_atoms=args.max_atoms)
    emit(args, {"dictionary": str(args.dictionary), "atoms": d.num_atoms,
                "input_shape": list(d.input_shape), "plot": str(args.out)})
    return 0


def _learner(args: argparse.Namespace) -> Any:
    from advrobust.attacks.dictionary import ADiL, SADiL

    common = {"atoms": args.atoms, "lambda1": args.lambda1, "lambda2": args.lambda2,
              "loss": args.loss, "kappa": args.kappa, "step_size": args.step_size,
              "progress": progress_enabled(args)}
    if args.stochastic:
        return SADiL(epochs=args.epochs, batch_size=args.batch_size, **common)
    return ADiL(max_iter=args.iterations, **common)


def _target(raw: str | None, n: int) -> Any:
    import torch

    if raw is None or raw == "second":
        return raw
    try:
        return torch.full((n,), int(raw), dtype=torch.int64)
    except ValueError:
        raise InvalidParameterError(
            f"--target must be a class index or 'second'. Got {raw!r} instead.") from None


def _learn(args: argparse.Namespace) -> int:
    import torch

    from advrobust.attacks.dictionary import evaluate_dictionary, save_dictionary
    from advrobust.cli._common import check_model_data, load_model

    learner = _learner(args)
    check_output(args.out, "--out", suffixes=(".npz",), force=args.force)  # under the lock
    check_plot_path(args.plot, "--plot")
    check_plot_path(args.examples, "--examples")
    if args.heldout_n is not None and args.heldout_n < 0:
        raise InvalidParameterError(f"--heldout-n must be >= 0. Got {args.heldout_n}.")
    if args.coding_steps < 1:  # 0 steps would report all-zero codes as a held-out result
        raise InvalidParameterError(f"--coding-steps must be >= 1. Got {args.coding_steps}.")
    checkpoint = load_model(args.model)
    data = load_data(args)
    check_model_data(checkpoint, data)
    held = _load_heldout(args)
    d = learner.fit(checkpoint.model, data.x, data.y, _target(args.target, len(data.y)),
                    torch.Generator().manual_seed(args.seed), dataset=data.name,
                    model_name=str(args.model))
    save_dictionary(args.out, d)
    iterations = max(1, len(d.history) - 1)
    train = evaluate_dictionary(checkpoint.model, d, data.x, d.codes)
    payload: dict[str, Any] = {
        "method": d.method, "status": d.status, "atoms": d.num_atoms, "n_train": train.n,
        "iterations": iterations, "seconds": d.seconds, "seconds_per_iteration":
        d.seconds / iterations, "objective_first": d.history[0], "objective_last": d.history[-1],
        "train": train.summary(), "out": str(args.out), "params": learner.get_params()}
    held_data, heldout = _heldout(args, checkpoint.model, d, held)
    if heldout is not None:
        payload["heldout"] = heldout.summary()
    if args.plot is not None:
        from advrobust.attacks.dictionary import plot_atoms

        payload["plot"] = str(plot_atoms(args.plot, d))
    if args.examples is not None:
        from advrobust.attacks.dictionary import plot_dictionary_examples

        shown_data, shown = (held_data, heldout) if heldout is not None else (data, train)
        payload["examples"] = str(plot_dictionary_examples(
            args.examples, shown_data.x, shown.x_adv, shown.clean_pred, shown.adv_pred,
            y=shown_data.y))
    emit(args, payload, rows=_rows(payload), title=f"dictionary learn ({d.method})")
    return 0


def _heldout_data(args: argparse.Namespace, n: int | None) -> Any:
    from advrobust.data import load_dataset

    other = "test" if args.split == "train" else "train"
    data = load_dataset(args.data, split=other, root=args.data_dir)
    if n is None:  # the default: up to 500
        return data.take(min(500, len(data)))
    if n > len(data):
        raise InvalidParameterError(
            f"--heldout-n must be at most the {len(data)} samples of the {args.data} {other} "
            f"split. Got {n} instead.")
    return data.take(n)


def _load_heldout(args: argparse.Namespace) -> Any:
    """Held-out data of the other split (checked before learning), or None."""
    from advrobust.errors import DatasetNotFoundError

    if args.heldout_n == 0:
        return None
    try:
        return _heldout_data(args, args.heldout_n)
    except DatasetNotFoundError as exc:
        if args.heldout_n is not None:  # asked for explicitly: say why it cannot be done
            raise DatasetNotFoundError(f"--heldout-n {args.heldout_n}: the other split is "
                                       f"missing (pass --heldout-n 0 to skip it). {exc}") from None
        print(f"advrobust dictionary: no held-out split found, the report covers the training "
              f"images only ({exc})", file=sys.stderr)
        return None


def _heldout(args: argparse.Namespace, model: Any, d: Any, data: Any) -> tuple[Any, Any]:
    """Held-out data and the dictionary's report on them (or Nones)."""
    from advrobust.attacks.dictionary import evaluate_dictionary

    if data is None:
        return None, None
    return data, evaluate_dictionary(model, d, data.x, y=data.y, steps=args.coding_steps,
                                     step_size=args.step_size)


def _rows(p: dict[str, Any]) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [(k, p[k]) for k in (
        "method", "status", "atoms", "n_train", "iterations", "seconds",
        "seconds_per_iteration", "objective_first", "objective_last")]
    for split in ("train", "heldout"):
        if split in p:
            rows += [(f"{split} {k}", v) for k, v in p[split].items() if k != "n"]
    rows += [(k, p[k]) for k in ("out", "plot", "examples") if k in p]
    return rows
