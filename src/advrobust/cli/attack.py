"""``advrobust attack``: run any registered attack on a checkpoint over a dataset, report metrics.

Attack classes are found by their ``cli_name`` among the subclasses of
:class:`~advrobust.attacks.Attack`; each is built from its constructor signature: the common
flags (``--steps``, ``--step-size``, ``--restarts``) go to the parameters of the same name when the
attack has them, ``--param NAME=VALUE`` sets any other one, converted to the parameter's type.
``--help`` lists every attack with its parameters and defaults. An attack's own ``norm``
parameter (C&W, DeepFool) follows ``--norm`` unless ``--param norm=...`` sets it.

Two attacks are built from other attacks: ``ensemble`` (``--members NAME,NAME,...``, each member
configured by ``--param MEMBER.NAME=VALUE`` and by the common flags it takes) and ``transfer``
(``--source-model CKPT --source-attack NAME``, the common flags and ``--param`` configuring the
source attack). ``universal`` fits one perturbation on the selected images, reports its fooling
rate on held-out images of the other split and writes it with ``--save-perturbation FILE.npz``
and ``--plot FILE.png``. Every report carries the sanity checks of
:func:`advrobust.evaluation.sanity_checks` (also under ``"sanity"`` in ``--json`` output), the
number of samples whose budget ran out (``exhausted``) and of samples that were already
misclassified (``already_adversarial``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from advrobust.cli._attack_build import attack_classes, attack_help, build_attack
from advrobust.cli._common import (
    add_data_args,
    add_json_arg,
    add_model_arg,
    add_progress_args,
    check_model_data,
    check_output,
    check_plot_path,
    emit,
    forecast,
    held_interrupt,
    interrupted,
    load_data,
    load_model,
    progress_enabled,
    seed_arg,
)
from advrobust.cli._save import SUFFIXES, SampleWriter, add_save_args, keep_finished, open_writer
from advrobust.errors import DatasetNotFoundError, InvalidParameterError

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

__all__ = ["attack_classes", "build_attack", "register", "run"]

EXAMPLE = """examples:
  advrobust attack --model runs/cnn.pt --data mnist --attack pgd --norm linf --eps 0.1 --n 1000
  advrobust attack --model runs/cnn.pt --attack pgd --norm l2 --eps 2 --step-size 0.1 --json
  advrobust attack --model runs/cnn.pt --attack fgsm --eps 0.1 --unbounded --plot fgsm.png
  advrobust attack --model runs/cnn.pt --attack pgd --eps 0.1 --param loss=margin --target 3
  advrobust attack --model runs/cnn.pt --attack cw --norm l2 --eps 3 --param lr=0.1
  advrobust attack --model runs/cnn.pt --attack strongest --eps 0.1 --json
  advrobust attack --model runs/cnn.pt --attack ensemble --members pgd,deepfool,square \\
      --norm l2 --eps 2 --param pgd.steps=100 --param square.queries=1000
  advrobust attack --model runs/cnn.pt --attack transfer --source-model runs/mlp.pt \\
      --source-attack pgd --eps 0.1 --steps 40
  advrobust attack --model runs/cnn.pt --split train --n 2000 --attack universal --norm l2 \\
      --eps 4 --save-perturbation uap.npz --plot uap.png --heldout-n 1000
  advrobust attack --model runs/cnn.pt --attack universal-apply --norm l2 --eps 4 \\
      --param perturbation=uap.npz
"""

def register(sub: Any) -> None:
    """Add the ``attack`` command."""
    p = sub.add_parser(
        "attack", help="attack a trained model and report robust accuracy",
        description="Attack the first --n images of a dataset with any registered attack (listed "
                    "below) inside an lp ball intersected with the input box; report clean and "
                    "robust accuracy, fooling rate, rMSE, perturbation norms, budgets exhausted "
                    "and sanity checks (gradient masking, probabilities, randomness).",
        epilog=EXAMPLE + "\n" + attack_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arg(p)
    add_data_args(p, default="mnist")
    _add_attack_args(p)
    _add_composite_args(p)
    _add_run_args(p)
    _add_output_args(p)
    add_progress_args(p)
    add_save_args(p, "index, label, prediction, adversarial prediction, success, margin, norm, "
                     "exhausted, method, seconds")
    add_json_arg(p)
    p.set_defaults(func=run)


def _add_attack_args(p: argparse.ArgumentParser) -> None:
    """The attack, its threat ball and its parameters."""
    p.add_argument("--attack", default="pgd", help="attack name, listed below (default: pgd)")
    p.add_argument("--norm", default="linf", help="threat norm: linf, l2 or l1 (default: linf)")
    p.add_argument("--eps", type=float, required=True, help="radius of the threat ball")
    p.add_argument("--steps", type=int, default=None, help="iterations (attacks that take it)")
    p.add_argument("--step-size", type=float, default=None, help="step length in the norm")
    p.add_argument("--restarts", type=int, default=None, help="random restarts")
    p.add_argument("--dictionary", type=Path, default=None, metavar="DICT.npz",
                   help="dictionary file of 'advrobust dictionary learn' (--attack dictionary)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="any other constructor parameter of the attack (repeatable); "
                        "MEMBER.NAME=VALUE for an ensemble member")


def _add_composite_args(p: argparse.ArgumentParser) -> None:
    """The attacks built from other attacks: ensemble members, transfer surrogate."""
    p.add_argument("--members", default=None, metavar="NAME,NAME,...",
                   help="attacks of --attack ensemble, run as a cascade in this order")
    p.add_argument("--source-model", type=Path, default=None, metavar="CKPT",
                   help="surrogate checkpoint of --attack transfer")
    p.add_argument("--source-attack", default="pgd", metavar="NAME",
                   help="attack run on the surrogate by --attack transfer (default: pgd)")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    """Target, seed, batching and the input box."""
    p.add_argument("--target", type=int, default=None, metavar="CLASS",
                   help="targeted attack towards CLASS (samples of that class are skipped)")
    p.add_argument("--seed", type=seed_arg, default=0,
                   help="seed of the random starts (default: 0)")
    p.add_argument("--batch-size", type=int, default=100, help="samples per attack call")
    p.add_argument("--lo", type=float, default=None, help="lower end of the input box (0)")
    p.add_argument("--hi", type=float, default=None, help="upper end of the input box (1)")
    p.add_argument("--unbounded", action="store_true", help="no input box (lo=-inf, hi=inf)")


def _add_output_args(p: argparse.ArgumentParser) -> None:
    """Example, plot and universal-perturbation files."""
    p.add_argument("--save-examples", type=Path, default=None, metavar="FILE.npz",
                   help="write x, x_adv, y and clean / adversarial predictions to FILE.npz")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                   help="draw originals, adversarials and perturbations to FILE.png (universal: "
                        "the perturbation and its fooling rate per pass)")
    p.add_argument("--save-perturbation", type=Path, default=None, metavar="FILE.npz",
                   help="--attack universal: write the perturbation to FILE.npz (reusable with "
                        "--attack universal-apply --param perturbation=FILE.npz)")
    p.add_argument("--heldout-n", type=int, default=500, metavar="N",
                   help="--attack universal: fooling rate also measured on the first N images "
                        "of the other split (0: none; default: 500)")


def _threat(args: argparse.Namespace) -> Any:
    from advrobust.core.threat import LpBall

    if args.unbounded and (args.lo is not None or args.hi is not None):
        raise InvalidParameterError("--unbounded cannot be combined with --lo / --hi.")
    if args.unbounded:
        return LpBall(args.norm, args.eps, -math.inf, math.inf)
    lo = 0.0 if args.lo is None else args.lo
    hi = 1.0 if args.hi is None else args.hi
    return LpBall(args.norm, args.eps, lo, hi)


def _select(x: torch.Tensor, y: torch.Tensor, target: int | None, num_classes: int
            ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Drop the samples whose label is the target; return x, y and how many were dropped."""
    if target is None:
        return x, y, 0
    if not 0 <= target < num_classes:
        raise InvalidParameterError(
            f"--target must be a class in [0, {num_classes - 1}]. Got {target} instead.")
    keep = y != target
    if not bool(keep.any()):
        raise InvalidParameterError(f"every selected sample has label {target} (--target).")
    return x[keep], y[keep], int((~keep).sum())


@dataclass(frozen=True)
class _Samples:
    """The attacked samples: inputs ``x`` (N, ...), labels ``y`` (N,), their positions in the
    dataset ``index`` (N,), and how many samples of the ``--target`` class were ``skipped``."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    skipped: int


def run(args: argparse.Namespace) -> int:
    """Run the ``attack`` command; returns the exit status."""
    import torch

    from advrobust.attacks import UniversalPerturbation
    from advrobust.cli._attack_report import report_rows
    from advrobust.evaluation import evaluate_attack

    _check_composite_flags(args)
    attack = build_attack(args.attack, args)
    threat = _threat(args)
    universal = isinstance(attack, UniversalPerturbation)
    _check_universal_flags(args, universal)
    _check_outputs(args)
    checkpoint = load_model(args.model)
    model = checkpoint.model
    samples = _samples(args, checkpoint)
    generator = torch.Generator().manual_seed(args.seed)
    attack, params, extra, fit_seconds = _prepare_attack(args, attack, universal, model,
                                                         samples, threat, generator)
    writer = open_writer(args.save, COLUMNS, args.force)
    batches: list[Any] = []
    on_batch = _batch_callback(args, writer, batches, model, samples)
    try:
        result = evaluate_attack(model, attack, (samples.x, samples.y), threat,
                                 batch_size=args.batch_size, target=args.target,
                                 generator=generator, progress=progress_enabled(args),
                                 on_batch=on_batch)
    except KeyboardInterrupt:
        return _keep_finished(args, writer, batches, model, samples.x, samples.y)
    if writer is not None:
        print(f"advrobust attack: saved {writer.close()}", file=sys.stderr)
    payload = _payload(args, checkpoint, samples, threat, result, params, extra, fit_seconds)
    _save_examples_and_plot(args, payload, model, samples, result.result, universal)
    title = f"{args.attack} on {args.model} ({threat})"
    emit(args, payload, rows=report_rows(payload), title=title)
    return 0


def _check_outputs(args: argparse.Namespace) -> None:
    """--batch-size and the output files, checked before the model and data are loaded."""
    if args.batch_size < 1:
        raise InvalidParameterError(f"--batch-size must be >= 1. Got {args.batch_size}.")
    check_plot_path(args.plot, "--plot")
    check_output(args.save_examples, "--save-examples", suffixes=(".npz",))
    check_output(args.save_perturbation, "--save-perturbation", suffixes=(".npz",))
    if args.save is not None:
        check_output(args.save, "--save", force=args.force, suffixes=SUFFIXES)


def _samples(args: argparse.Namespace, checkpoint: Any) -> _Samples:
    """The selected images of ``--data`` (checked against the checkpoint), less those of the
    ``--target`` class."""
    import torch

    data = load_data(args)
    check_model_data(checkpoint, data)
    with torch.no_grad():
        num_classes = int(checkpoint.model(data.x[:1]).shape[1])
    index = torch.arange(len(data.y))
    if args.target is not None:
        index = index[data.y != args.target]
    x, y, skipped = _select(data.x, data.y, args.target, num_classes)
    return _Samples(x, y, index, skipped)


def _prepare_attack(args: argparse.Namespace, attack: Any, universal: bool,
                    model: torch.nn.Module, samples: _Samples, threat: Any,
                    generator: torch.Generator
                    ) -> tuple[Any, dict[str, Any], dict[str, Any], float]:
    """The attack to evaluate, its parameters for the report, extra report entries and the
    seconds spent fitting it (a universal perturbation is fitted once on all the selected
    images, then applied like any attack)."""
    from advrobust.cli._attack_report import describe_params

    params, extra, fit_seconds = describe_params(attack), dict[str, Any](), 0.0
    if args.attack == "transfer":
        params["source_model"] = str(args.source_model)
    if universal:
        start = time.perf_counter()
        attack, extra["universal"] = _fit_universal(args, attack, model, samples.x, samples.y,
                                                    threat, generator)
        fit_seconds = time.perf_counter() - start
    return attack, params, extra, fit_seconds


def _batch_callback(args: argparse.Namespace, writer: SampleWriter | None, batches: list[Any],
                    model: torch.nn.Module, samples: _Samples
                    ) -> Callable[[int, Any, float], None]:
    """The ``on_batch`` of :func:`~advrobust.evaluation.evaluate_attack`: keeps each finished
    batch in ``batches``, writes its rows to ``writer`` and advances the forecast."""
    ahead = forecast(args, len(samples.y))

    def on_batch(start: int, res: Any, seconds: float) -> None:
        with held_interrupt():  # the batch is kept whole or not at all
            batches.append(res)
            if writer is not None:
                _write_rows(writer, model, samples.x, samples.y, samples.index, start, res,
                            seconds, args.attack)
        ahead.update(start + int(res.success.shape[0]))

    return on_batch


def _payload(args: argparse.Namespace, checkpoint: Any, samples: _Samples, threat: Any,
             result: Any, params: dict[str, Any], extra: dict[str, Any], fit_seconds: float
             ) -> dict[str, Any]:
    """The report: metrics, settings, result flags and sanity checks."""
    from advrobust.cli._attack_report import result_flags, sanity_report
    from advrobust.evaluation import summarize_attack

    model, x, y = checkpoint.model, samples.x, samples.y
    summary = summarize_attack(model, x, y, result.result)
    return {**summary, "seconds": fit_seconds + result.seconds, "attack": args.attack,
            "attack_params": params, "threat": str(threat),
            "norm": threat.norm.value, "eps": threat.eps, "lo": threat.lo, "hi": threat.hi,
            "model": str(args.model), "arch": checkpoint.arch, "data": args.data,
            "split": args.split, "target": args.target, "skipped": samples.skipped,
            "seed": args.seed, **extra, **result_flags(result.result),
            "sanity": sanity_report(model, x, y, args.attack, result.result, threat)}


def _save_examples_and_plot(args: argparse.Namespace, payload: dict[str, Any],
                            model: torch.nn.Module, samples: _Samples, adv: Any,
                            universal: bool) -> None:
    """Write --save-examples and --plot (universal: drawn by its fit) and name them in
    ``payload``."""
    from advrobust.cli._attack_report import plot_examples, save_examples
    from advrobust.evaluation import predict

    plot = args.plot is not None and not universal
    if args.save_examples is None and not plot:
        return
    x, y = samples.x, samples.y
    clean_pred, adv_pred = predict(model, x), predict(model, adv.x_adv)
    if args.save_examples is not None:
        save_examples(args.save_examples, x, adv.x_adv, y, clean_pred, adv_pred)
        payload["examples"] = str(args.save_examples)
    if plot:
        plot_examples(args.plot, x, adv.x_adv, y, clean_pred, adv_pred)
        payload["plot"] = str(args.plot)


def _check_composite_flags(args: argparse.Namespace) -> None:
    """--members and --source-model configure one attack each; elsewhere they are an error."""
    if args.attack != "ensemble" and args.members is not None:
        raise InvalidParameterError(
            f"--members applies to --attack ensemble only. Got --attack {args.attack}.")
    if args.attack != "transfer" and args.source_model is not None:
        raise InvalidParameterError(
            f"--source-model applies to --attack transfer only. Got --attack {args.attack}.")


def _check_universal_flags(args: argparse.Namespace, universal: bool) -> None:
    if not universal and args.save_perturbation is not None:
        raise InvalidParameterError(
            f"--save-perturbation applies to --attack universal only. Got --attack "
            f"{args.attack!r}.")
    if universal and args.target is not None:
        raise InvalidParameterError("--attack universal is untargeted; drop --target.")
    if args.heldout_n < 0:
        raise InvalidParameterError(f"--heldout-n must be >= 0. Got {args.heldout_n}.")


def _fit_universal(args: argparse.Namespace, uap: Any, model: torch.nn.Module, x: torch.Tensor,
                   y: torch.Tensor, threat: Any, generator: torch.Generator
                   ) -> tuple[Any, dict[str, Any]]:
    """Fit one perturbation on (x, y), measure it on held-out images, write npz / PNG.

    Returns the attack that applies the fitted perturbation and the JSON-ready summary.
    """
    from advrobust.attacks import UniversalPerturbation, run_universal
    from advrobust.data import load_dataset

    heldout = None
    if args.heldout_n:
        other = "test" if args.split == "train" else "train"
        try:
            data = load_dataset(args.data, split=other, root=args.data_dir)
        except DatasetNotFoundError as exc:
            raise DatasetNotFoundError(
                f"--heldout-n {args.heldout_n}: the held-out fooling rate is measured on the "
                f"{other} split, which is missing (pass --heldout-n 0 to skip it). {exc}"
            ) from None
        heldout = data.take(min(args.heldout_n, len(data))).x
    result, summary = run_universal(uap, model, x, y, threat, x_heldout=heldout,
                                    generator=generator, save_path=args.save_perturbation,
                                    plot_path=args.plot)
    summary["heldout_n"] = 0 if heldout is None else int(heldout.shape[0])
    return UniversalPerturbation.as_attack(result), summary


COLUMNS = ("index", "label", "prediction", "adv_prediction", "success", "margin", "norm",
           "exhausted", "method", "seconds")


def _write_rows(writer: SampleWriter, model: torch.nn.Module, x: torch.Tensor,
                y: torch.Tensor, index: torch.Tensor, start: int, res: Any, seconds: float,
                name: str) -> None:
    """One row per sample of a finished batch; its successful x_adv are the witnesses."""
    from advrobust.evaluation import predict

    n = res.success.shape[0]
    sl = slice(start, start + n)
    clean, adv = predict(model, x[sl]), predict(model, res.x_adv)
    broken = res.info.get("broken_by")
    per = broken if isinstance(broken, list) and len(broken) == n else None
    writer.write([{
        "index": index[sl][i], "label": y[sl][i], "prediction": clean[i],
        "adv_prediction": adv[i], "success": bool(res.success[i]), "margin": res.margin[i],
        "norm": res.norm[i],
        "exhausted": None if res.exhausted is None else bool(res.exhausted[i]),
        "method": str(per[i]) if per is not None and per[i] else name,
        "seconds": seconds / n} for i in range(n)])
    writer.add_witnesses(index[sl][res.success], res.x_adv[res.success])


def _keep_finished(args: argparse.Namespace, writer: SampleWriter | None, batches: list[Any],
                   model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """On Ctrl-C: write what the finished batches found and say so in one line; 130."""
    import torch

    from advrobust.cli._attack_report import save_examples
    from advrobust.evaluation import predict

    done = sum(int(b.success.shape[0]) for b in batches)
    saved = keep_finished(writer)
    if args.save_examples is not None and batches:
        x_adv = torch.cat([b.x_adv for b in batches])
        save_examples(args.save_examples, x[:done], x_adv, y[:done], predict(model, x[:done]),
                      predict(model, x_adv))
        saved.append(f"the {done} finished examples in {args.save_examples}")
    return interrupted(args, done, len(y), saved)
