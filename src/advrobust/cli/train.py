"""``advrobust train``: train a reference architecture (optionally with a defense), write a
checkpoint, and optionally report its robustness bracket."""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path
from typing import Any

from advrobust.cli._common import (
    OutputLock,
    add_data_args,
    add_json_arg,
    check_output,
    emit,
    seed_arg,
)
from advrobust.cli.evaluate import report_rows
from advrobust.errors import InvalidParameterError

__all__ = ["register", "run"]

EXAMPLE = """examples:
  advrobust train --model mlp2 --data digits --epochs 30 --batch-size 50 --out mlp2_digits.pt
  advrobust train --model mlp2 --data digits --epochs 30 --batch-size 50 --out mlp2_digits.pt \\
      --resume mlp2_digits.pt           # after Ctrl-C: continue from the last finished epoch
  advrobust train --model cnn --data mnist --data-dir ../shared/data/mnist --epochs 10 \\
      --out cnn_mnist.pt                 # course recipe: SGD lr 0.1, batch 100, lr/10 at epoch 6
  advrobust train --model lenet --data cifar10 --data-dir cifar-10-batches-py --momentum 0.9 \\
      --normalize 0.491,0.482,0.447 0.247,0.243,0.262 --out lenet_cifar.pt

defenses (--defense; the checkpoint records the defense and its parameters):
  advrobust train --model cnn --data mnist --defense pgd --eps 0.3 --attack-steps 10 \\
      --ramp 0.2 --optimizer adam --lr 5e-3 --lr-schedule cyclic --report 200 --out pgd.pt
  advrobust train --model cnn --data mnist --defense fgsm --eps 0.3 --alpha 0.375 --ramp 0.3 \\
      --out fgsm.pt                      # fast FGSM (Wong, Rice & Kolter 2020)
  advrobust train --model mlp2 --data digits --defense trades --eps 0.1 --beta 6 --out t.pt
  advrobust train --model mlp2 --data digits --defense tv-lip --eps 0.1 --lam 0.01 --out tv.pt
  advrobust train --model cnn --data mnist --defense crown-ibp --eps 0.1 --warmup 0.1 \\
      --ramp 0.5 --report 100 --out cibp.pt  # certified training; report adds CROWN accuracy
  advrobust train --model cnn --data mnist --defense noise --sigma 0.25 --out smooth.pt
  advrobust train --model lenet --data mnist --defense consistency --sigma 0.5 --lam 5 \\
      --out cons.pt                      # then: advrobust smooth certify --model cons.pt
  advrobust train --model cnn --data mnist --defense dict-adv --dictionary dict.npz --out d.pt

  defense     parameters (other flags are an error)
  standard    -
  pgd         --eps --norm --attack-steps --attack-step-size --warmup --ramp
  fgsm        --eps --norm --alpha --warmup --ramp
  trades      --eps --norm --beta --attack-steps --attack-step-size --warmup --ramp
  tv          --eps --norm --fd-step --double-backprop
  tv-lip      --eps --norm --lam --fd-step --double-backprop
  ibp         --eps --norm --warmup --ramp --kappa-end
  crown-ibp   --eps --norm --warmup --ramp --kappa-end
  noise       --sigma   (gaussian: the same)
  consistency --sigma --noise-samples --lam --eta
  smoothadv   --sigma --eps --attack-steps --noise-samples --warmup
  dict-adv    --dictionary --attack-steps --attack-step-size --augmented-weight
  dict-noise  --dictionary --laplace-scale --augmented-weight
  gloro       --eps --norm (l2 only) --warmup --ramp --beta (TRADES form)
"""

#: ``build_objective`` parameter -> (flag, type, help) of the --defense options.
_DEFENSE_FLAGS: dict[str, tuple[str, Any, str]] = {
    "eps": ("--eps", float, "radius of the threat set to train against"),
    "norm": ("--norm", str, "norm of the threat set: linf, l2 or l1 (default: linf)"),
    "steps": ("--attack-steps", int, "inner attack steps per batch (pgd, trades: default 10; "
                                     "dict-adv: sparse-coding steps, default 5)"),
    "step_size": ("--attack-step-size", float, "inner attack step (default: 2.5 eps / steps; "
                                               "dict-adv: coding step, default 1)"),
    "alpha": ("--alpha", float, "fast-FGSM step (default: 1.25 eps)"),
    "beta": ("--beta", float, "TRADES robustness weight (trades: default 6; gloro: none = "
                              "cross-entropy on the augmented logits, else GloRo's TRADES "
                              "loss with this weight)"),
    "lam": ("--lam", float, "Lipschitz penalty weight of tv-lip (default: 0.01; larger "
                            "trades clean accuracy for a flatter loss: 0.1 gave 0.41 on digits); "
                            "KL weight of consistency (default: 5)"),
    "h": ("--fd-step", float, "finite-difference step of tv / tv-lip (default: 0.01)"),
    "double_backprop": ("--double-backprop", bool, "tv / tv-lip: exact gradient norm by "
                                                   "double backpropagation"),
    "warmup": ("--warmup", float, "fraction of training at eps 0 before the ramp (pgd, fgsm, "
                                  "trades: default 0; ibp, crown-ibp: 0.1)"),
    "ramp": ("--ramp", float, "fraction of training over which eps ramps up to --eps (pgd, "
                              "fgsm, trades: default none; ibp, crown-ibp: 0.5)"),
    "kappa_end": ("--kappa-end", float, "final weight of the clean loss of ibp / crown-ibp "
                                        "(default: 0.5)"),
    "sigma": ("--sigma", float, "noise standard deviation of noise / gaussian / consistency / "
                                "smoothadv"),
    "m": ("--noise-samples", int, "noisy copies per input of consistency (default: 2) and "
                                  "smoothadv (default: 1)"),
    "eta": ("--eta", float, "entropy weight of consistency (default: 0.5)"),
    "dictionary": ("--dictionary", str, "dictionary file (.npz from 'advrobust dictionary "
                                        "learn') of dict-adv / dict-noise"),
    "scale": ("--laplace-scale", float, "Laplace scale of dict-noise (default: fitted to the "
                                        "dictionary's codes)"),
    "augmented_weight": ("--augmented-weight", float, "weight of the augmented term of "
                                                      "dict-adv / dict-noise (default: 0.5)"),
}


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a float or comma-separated floats, got {text!r}") from None


#: ``advrobust.models.MODELS``' names, spelled out so that ``train --help`` does not import
#: torch (tests/cli/test_verify_help.py keeps the two equal).
MODELS = ("mlp2", "mlp4", "small", "cnn", "lenet", "lenet-wide", "lenet-large", "resnet8",
          "minmax-mlp", "minmax-mlp-wide", "minmax-2c2f")


def register(sub: Any) -> None:
    """Add the ``train`` command."""
    p = sub.add_parser(
        "train", help="train a reference model and save a checkpoint",
        description="Train one of the reference architectures with SGD on cross-entropy (the "
                    "course recipe by default) or with a defense (--defense: adversarial, "
                    "regularised, certified, noise or dictionary training), report the test "
                    "error per epoch, and write a checkpoint with its metadata (dataset, "
                    "epochs, seed, defense and its parameters, clean accuracy). --report adds "
                    "clean / PGD / ensemble / CROWN-certified accuracy side by side.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=MODELS, metavar="ARCH",
                   help=f"architecture: {', '.join(MODELS)}")
    add_data_args(p, split="train")
    p.add_argument("--test-n", type=int, default=None,
                   help="evaluate on only the first N test samples (default: all)")
    _add_checkpoint_args(p)
    _add_optimizer_args(p)
    _add_model_args(p)
    _add_defense_args(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_json_arg(p)
    p.set_defaults(func=run)


def _add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    """The checkpoint to write, and the one to resume from."""
    p.add_argument("--out", type=Path, required=True,
                   help="checkpoint file to write (after every epoch; refused if it exists, "
                        "unless --force or --resume names it)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    p.add_argument("--resume", type=Path, default=None, metavar="CKPT",
                   help="continue an interrupted run from its last per-epoch checkpoint "
                        "(optimizer, schedule and random streams included); give the same "
                        "flags as the interrupted command")


def _add_optimizer_args(p: argparse.ArgumentParser) -> None:
    """Epochs, batch size, optimizer and learning-rate schedule."""
    p.add_argument("--epochs", type=int, default=10, help="passes over the data (default: 10)")
    p.add_argument("--lr", type=float, default=0.1,
                   help="learning rate (default: 0.1; the peak rate with --lr-schedule cyclic)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                   help="sgd (with --momentum) or adam (default: sgd)")
    p.add_argument("--lr-schedule", choices=("step", "cyclic"), default="step",
                   help="step: --lr-drop drops; cyclic: 0 -> lr over 40%% of the batches, "
                        "then back to 0 (default: step)")
    p.add_argument("--batch-size", type=int, default=100, help="batch size (default: 100)")
    p.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (default: 0)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="L2 penalty (default: 0)")
    p.add_argument("--lr-drop", type=int, nargs="*", default=None, metavar="EPOCH",
                   help="epoch counts after which the lr is divided by 10 (default: half the "
                        "epochs for cnn, none otherwise; give no value for no drop)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    """Input normalization, seed, augmentation and weight averaging."""
    p.add_argument("--normalize", nargs=2, type=_floats, default=None, metavar=("MEAN", "STD"),
                   help="put a per-channel Normalize layer first, e.g. 0.1307 0.3081 "
                        "(comma-separated for several channels)")
    p.add_argument("--seed", type=seed_arg, default=0, help="weight-init, shuffling and defense "
                                                       "seed (default: 0)")
    p.add_argument("--shift", type=int, default=0, metavar="PIXELS",
                   help="data augmentation: move every training image by a random offset of "
                        "up to PIXELS in each direction, zeros filled in (default: 0, none)")
    p.add_argument("--ema", type=float, default=None, metavar="DECAY",
                   help="keep an exponential moving average of the weights (decay per step, "
                        "in [0, 1), e.g. 0.999) and write it as the checkpoint's weights "
                        "(default: none, the last iterate)")


#: ``advrobust.training.defenses.DEFENSES``' names, spelled out for the same reason.
DEFENSES = ("standard", "pgd", "fgsm", "trades", "tv", "tv-lip", "ibp", "crown-ibp", "noise",
            "gaussian", "consistency", "smoothadv", "dict-adv", "dict-noise", "gloro")


def _add_defense_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("defense", "training objective and its parameters (see the table "
                                        "below)")
    g.add_argument("--defense", default="standard", choices=DEFENSES, metavar="NAME",
                   help=f"training objective: {', '.join(DEFENSES)} (default: standard)")
    for param, (flag, kind, text) in _DEFENSE_FLAGS.items():
        if kind is bool:
            g.add_argument(flag, dest=f"defense_{param}", action="store_const", const=True,
                           default=None, help=text)
        else:
            g.add_argument(flag, dest=f"defense_{param}", type=kind, default=None, help=text,
                           metavar=flag[2:].upper().replace("-", "_"))
    r = p.add_argument_group("report", "robustness of the trained model")
    r.add_argument("--report", type=int, nargs="?", const=200, default=None, metavar="N",
                   help="after training, report clean, PGD-40, strongest-ensemble and "
                        "CROWN-certified accuracy side by side on the first N test samples "
                        "(default N: 200) at --report-eps (gradient masking shows as a gap)")
    r.add_argument("--report-eps", type=float, default=None,
                   help="eps of the report (default: --eps; required without it)")
    r.add_argument("--report-no-ensemble", action="store_true",
                   help="skip the (slow) strongest ensemble in the report")
    r.add_argument("--report-no-certify", action="store_true",
                   help="skip CROWN in the report (slow on large convolutional models)")


def _objective(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The objective of ``--defense`` and the parameters given for it (by parameter name)."""
    from advrobust.training.defenses import build_objective, defense_params

    given = {param: getattr(args, f"defense_{param}") for param in _DEFENSE_FLAGS
             if getattr(args, f"defense_{param}", None) is not None}
    accepted = defense_params(args.defense)
    wrong = [_DEFENSE_FLAGS[param][0] for param in given if param not in accepted]
    if wrong:
        takes = [_DEFENSE_FLAGS[q][0] for q in accepted if q in _DEFENSE_FLAGS]
        raise InvalidParameterError(
            f"--defense {args.defense} does not take {', '.join(wrong)}; it takes: "
            f"{', '.join(takes) or 'no parameters'}.")
    missing = [_DEFENSE_FLAGS[q][0] for q, d in accepted.items()
               if d is inspect.Parameter.empty and q not in given]
    if missing:
        raise InvalidParameterError(
            f"--defense {args.defense} needs {', '.join(missing)}.")
    params = dict(given)
    if params.get("sigma") == 0:  # the objectives allow it (the clean loss); a user means noise
        raise InvalidParameterError(
            f"--defense {args.defense} needs --sigma > 0 (with 0 no noise is added: that is "
            "plain training, --defense none). Got --sigma 0 instead.")
    if "seed" in accepted:
        params["seed"] = args.seed
    return build_objective(args.defense, **params), params


def _report_threat(args: argparse.Namespace) -> Any:
    """The threat set of ``--report`` (checked before training), or None without it."""
    if args.report is None:
        return None
    from advrobust.core.threat import LpBall, Norm

    eps = args.report_eps if args.report_eps is not None else args.defense_eps
    if eps is None:
        raise InvalidParameterError("--report needs --report-eps (or --eps).")
    if args.report < 1:
        raise InvalidParameterError(f"--report N must be >= 1. Got {args.report}.")
    norm = Norm.parse(args.defense_norm or "linf", owner="advrobust train --norm")
    return LpBall(norm, eps)


def _report(args: argparse.Namespace, threat: Any, model: Any, test: Any) -> Any:
    """``robustness_report`` of the trained model on ``threat``, or None without one."""
    if threat is None:
        return None
    from advrobust.evaluation.robustness import robustness_report

    model.eval()  # the model is ours (built here); evaluate it as it will be used
    return robustness_report(model, test, threat, n=min(args.report, len(test.y)),
                             ensemble=not args.report_no_ensemble,
                             certify=not args.report_no_certify, seed=args.seed)


def _test_data(args: argparse.Namespace) -> Any:
    from advrobust.data import load_dataset

    test = load_dataset(args.data, split="test", root=args.data_dir)
    if args.test_n is not None:
        if args.test_n < 1:
            raise InvalidParameterError(f"--test-n must be >= 1. Got {args.test_n}.")
        test = test.take(args.test_n)
    return test


def run(args: argparse.Namespace) -> int:
    """Train, evaluate, write ``--out``; prints a summary (or JSON)."""
    objective, defense_params = _objective(args)
    threat = _report_threat(args)
    resuming = args.resume is not None and args.resume.resolve() == args.out.resolve()
    _check_resume(args, resuming)  # before --out: a missing --resume is the first thing to fix
    check_output(args.out, "--out", force=args.force or resuming)
    with OutputLock(args.out, "--out"):
        if not (args.force or resuming):
            check_output(args.out, "--out", force=False)  # again, now that we hold the lock
        started = time.time()
        try:
            return _train(args, objective, defense_params, threat)
        except KeyboardInterrupt:
            if args.out.is_file() and args.out.stat().st_mtime >= started:
                print(f"\nadvrobust train: the checkpoint of the last finished epoch is in "
                      f"{args.out}; continue with --resume {args.out}", file=sys.stderr)
            raise


def _check_resume(args: argparse.Namespace, resuming: bool) -> None:
    """Refuse a --resume file that is not there, up front; names an existing --out too (the
    next refusal the user would meet) so that both are fixed in one go."""
    if args.resume is None or args.resume.is_file():
        return
    reason = "is a directory" if args.resume.is_dir() else "does not exist"
    message = (f"--resume {str(args.resume)!r} {reason}: there is no checkpoint to continue "
               "from (drop --resume to train from scratch).")
    if not (args.force or resuming) and args.out.exists():
        message += (f" Also, --out {str(args.out)!r} exists already: pass --force to "
                    "overwrite it, or --resume it to continue its training.")
    raise InvalidParameterError(message)


def _resumed(args: argparse.Namespace, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """The model and training state of ``--resume`` (checked against this command's flags)."""
    from advrobust.models import load_checkpoint

    ckpt = load_checkpoint(args.resume)
    if ckpt.training_state is None:
        raise InvalidParameterError(
            f"--resume {str(args.resume)!r} holds no training state (written by another tool "
            "or an older advrobust); it cannot be resumed.")
    have = {"arch": ckpt.arch, **ckpt.arch_kwargs}
    want = {"arch": args.model, **kwargs}
    differ = [f"{k}: {have.get(k)!r} in the checkpoint, {v!r} now" for k, v in want.items()
              if have.get(k) != v]
    if differ:
        raise InvalidParameterError(f"--resume {str(args.resume)!r} does not match this "
                                    f"command ({'; '.join(differ)}).")
    return ckpt.model, ckpt.training_state


def _train(args: argparse.Namespace, objective: Any, defense_params: dict[str, Any],
           threat: Any) -> int:
    from advrobust.cli._common import load_data
    from advrobust.training import fit

    train, test = load_data(args, announce=False), _test_data(args)
    kwargs = {"input_shape": list(train.input_shape), "num_classes": train.num_classes,
              "normalize": args.normalize}
    model, state = _initial_model(args, kwargs)
    drops = _lr_drops(args)
    defense = {"name": args.defense, "params": defense_params}
    start = time.perf_counter()
    history = fit(model, train, test=test, epochs=args.epochs, lr=args.lr,
                  batch_size=args.batch_size, momentum=args.momentum,
                  weight_decay=args.weight_decay, lr_drop_epochs=drops, seed=args.seed,
                  objective=objective, optimizer=args.optimizer, lr_schedule=args.lr_schedule,
                  shift=args.shift, ema=args.ema,
                  progress=not args.no_progress and not args.json, checkpoint_path=args.out,
                  arch=args.model, arch_kwargs=kwargs,
                  metadata={"data_provenance": str(getattr(train, "provenance", "")),
                            "n_test": len(test.y), "defense": defense}, resume=state)
    seconds = time.perf_counter() - start
    _warn_at_chance(args, history.test_accuracy, train.num_classes)
    report = _report(args, threat, model, test)
    payload, rows = _summary(args, train, test, defense, history, seconds, report)
    emit(args, payload, rows, title="advrobust train")
    return 0


def _initial_model(args: argparse.Namespace, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """The model to train and the training state to resume (None: a fresh run)."""
    from advrobust.models import build_model

    if args.resume is not None:
        return _resumed(args, kwargs)
    return build_model(args.model, seed=args.seed, **kwargs), None


def _lr_drops(args: argparse.Namespace) -> tuple[int, ...]:
    """The epochs after which the step schedule divides the lr by 10 (none when cyclic)."""
    from advrobust.training import course_schedule

    drops = course_schedule(args.model, max(args.epochs, 1))["lr_drop_epochs"] \
        if args.lr_drop is None else tuple(args.lr_drop)
    if args.lr_schedule == "cyclic":
        if args.lr_drop:
            raise InvalidParameterError(
                "--lr-drop cannot be combined with --lr-schedule cyclic.")
        drops = ()
    return drops


def _warn_at_chance(args: argparse.Namespace, accuracy: float | None,
                    num_classes: int) -> None:
    """Warn where the clean test accuracy is no better than guessing."""
    chance = 1.0 / num_classes
    if accuracy is not None and accuracy < 1.5 * chance:
        import warnings

        warnings.warn(f"the clean test accuracy {accuracy:.3f} is at chance level "
                      f"({chance:.3f} for {num_classes} classes): the model learned "
                      f"nothing useful. Try a smaller --lr (got {args.lr:g}) or more --epochs "
                      f"(got {args.epochs}).", UserWarning,
                      stacklevel=3)  # _train's stacklevel 2, one frame deeper


def _summary(args: argparse.Namespace, train: Any, test: Any, defense: dict[str, Any],
             history: Any, seconds: float, report: Any
             ) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """The JSON payload and the table rows of the finished run."""
    payload = {"checkpoint": str(args.out), "arch": args.model, "dataset": args.data,
               "n_train": len(train.y), "n_test": len(test.y), "epochs": args.epochs,
               "defense": defense, "clean_accuracy": history.test_accuracy,
               "seconds": seconds, "history": history.to_dict(), "report": report}
    rows = [("checkpoint", args.out), ("arch", args.model), ("dataset", args.data),
            ("train / test samples", f"{len(train.y)} / {len(test.y)}"),
            ("defense", _describe(defense)), ("epochs", args.epochs),
            ("clean test accuracy", history.test_accuracy),
            ("training time (s)", round(seconds, 1))] + report_rows(report)
    return payload, rows


def _describe(defense: dict[str, Any]) -> str:
    params = ", ".join(f"{k}={v}" for k, v in defense["params"].items())
    return f"{defense['name']}({params})"
