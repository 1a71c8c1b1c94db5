"""``advrobust detect``: calibrate a gradient-norm detector and measure it against attacks."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from advrobust.cli._common import (
    add_data_args,
    add_json_arg,
    add_model_arg,
    add_progress_args,
    check_model_data,
    check_output,
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
from advrobust.errors import InvalidParameterError

if TYPE_CHECKING:
    import torch

__all__ = ["ATTACKS", "register", "run"]

#: Attack names ``--attacks`` accepts.
ATTACKS: tuple[str, ...] = ("pgd", "fgsm", "cw", "evasive-cw")

_EXAMPLE = """example:
  advrobust detect --model cnn.pt --data mnist --data-dir ../shared/data/mnist \\
      --attacks pgd,cw,evasive-cw --eps 0.1 --fpr 0.05 --n 200"""


def register(subparsers: Any) -> None:
    """Add the ``detect`` command."""
    parser = subparsers.add_parser(
        "detect", help="calibrate a gradient-norm detector and attack it",
        description="Calibrate a gradient-norm detector on clean data of the other split to a "
        "target false-positive rate, then report per attack the detection rate and the median "
        "distortion of detected vs undetected adversarial examples.",
        epilog=_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arg(parser)
    add_data_args(parser)
    parser.add_argument("--attacks", default="pgd,cw,evasive-cw",
                        help=f"comma-separated attacks among {', '.join(ATTACKS)} "
                        "(default: pgd,cw,evasive-cw)")
    parser.add_argument("--eps", type=float, default=0.1,
                        help="linf radius of pgd / fgsm (default: 0.1)")
    parser.add_argument("--l2-eps", type=float, default=10.0,
                        help="l2 ceiling of cw / evasive-cw (default: 10, i.e. unconstrained)")
    parser.add_argument("--fpr", type=float, default=0.05,
                        help="target false-positive rate (default: 0.05)")
    parser.add_argument("--fit-n", type=int, default=None,
                        help="clean samples of the other split used for calibration "
                        "(default: 1000, or the whole split when it is smaller)")
    parser.add_argument("--cw-steps", type=int, default=100,
                        help="Adam steps per constant (default: 100)")
    parser.add_argument("--cw-lr", type=float, default=0.1,
                        help="Adam learning rate of cw / evasive-cw in tanh space (default: "
                        "0.1; the C&W paper's 0.01 rarely moves saturated pixels)")
    parser.add_argument("--cw-search", type=int, default=5,
                        help="binary-search steps of C&W (default: 5)")
    parser.add_argument("--evasion-weight", type=float, default=1.0,
                        help="weight of the detector score in evasive-cw (default: 1)")
    parser.add_argument("--seed", type=seed_arg, default=0,
                        help="seed of the random starts (default: 0)")
    parser.add_argument("--batch-size", type=int, default=100,
                        help="samples per attack call; Ctrl-C keeps the finished batches "
                        "(default: 100)")
    add_progress_args(parser)
    add_save_args(parser, "one row per sample and attack: index, label, prediction, clean "
                          "score and flag, attack, success, detected, adversarial score, norm, "
                          "seconds; witnesses: the successful adversarial examples, with their "
                          "attack in 'method'")
    add_json_arg(parser)
    parser.set_defaults(func=run)


def _parse_attacks(spec: str) -> list[str]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in ATTACKS]
    if unknown or not names:
        raise InvalidParameterError(f"--attacks must be among {{{', '.join(ATTACKS)}}}. Got "
                                    f"{', '.join(unknown) if unknown else repr(spec)} instead.")
    return names


def _build_attacks(args: argparse.Namespace, detector: Any) -> tuple[dict[str, Any],
                                                                     dict[str, Any]]:
    from advrobust.attacks import FGSM, PGD
    from advrobust.attacks.cw import CarliniWagner
    from advrobust.core import LpBall, Norm
    from advrobust.detection import EvasiveCW

    linf, l2 = LpBall(Norm.LINF, args.eps), LpBall(Norm.L2, args.l2_eps)
    cw_kw = {"steps": args.cw_steps, "binary_search_steps": args.cw_search, "lr": args.cw_lr}
    table: dict[str, tuple[Callable[[], Any], Any]] = {
        "pgd": (lambda: PGD(steps=40), linf),
        "fgsm": (FGSM, linf),
        "cw": (lambda: CarliniWagner(norm="l2", **cw_kw), l2),
        "evasive-cw": (lambda: EvasiveCW(detector=detector, weight=args.evasion_weight,
                                         **cw_kw), l2),
    }
    names = _parse_attacks(args.attacks)
    return ({n: table[n][0]() for n in names}, {n: table[n][1] for n in names})


def _calibration_data(args: argparse.Namespace) -> Any:
    from advrobust.data import load_dataset

    if args.fit_n is None:
        other = "train" if args.split == "test" else "test"
        data = load_dataset(args.data, split=other, root=args.data_dir)
        return data.take(min(1000, len(data)))
    if args.fit_n < 2:
        raise InvalidParameterError(f"--fit-n must be >= 2 (the threshold is calibrated on "
                                    f"clean samples). Got {args.fit_n} instead.")
    other = "train" if args.split == "test" else "test"
    data = load_dataset(args.data, split=other, root=args.data_dir)
    if args.fit_n > len(data):
        raise InvalidParameterError(
            f"--fit-n must be at most the {len(data)} samples of the {args.data} {other} split "
            f"(calibration uses the split that is not evaluated). Got {args.fit_n} instead.")
    return data.take(args.fit_n)


COLUMNS = ("index", "label", "prediction", "clean_score", "clean_flagged", "attack",
           "success", "detected", "adv_score", "norm", "seconds")


def run(args: argparse.Namespace) -> int:
    """Run the command; returns the exit status."""
    import torch

    from advrobust.core._validation import check_int
    from advrobust.detection import GradientNormDetector

    _parse_attacks(args.attacks)
    check_int(args.batch_size, "--batch-size", "advrobust detect", low=1)
    if args.save is not None:
        check_output(args.save, "--save", force=args.force, suffixes=SUFFIXES)
    checkpoint = load_model(args.model)
    model = checkpoint.model
    data = load_data(args)
    check_model_data(checkpoint, data)
    detector = GradientNormDetector(fpr=args.fpr).fit(model, _calibration_data(args).x)
    attacks, threats = _build_attacks(args, detector)  # pgd / fgsm: linf; cw: l2 norms
    clean_scores = detector.score(data.x).detach()
    clean_flags = clean_scores > float(detector.threshold_ or 0.0)
    with torch.no_grad():
        pred = model(data.x).argmax(1)
    writer = open_writer(args.save, COLUMNS, args.force)
    batches: list[Any] = []
    ahead = forecast(args, len(data))

    def on_batch(batch: Any) -> None:
        with held_interrupt():  # the batch is kept whole or not at all
            batches.append(batch)
            if writer is not None:
                _write_rows(writer, batch, data.y, pred, clean_scores, clean_flags)
        if batch.attack == list(attacks)[-1]:  # every attack has done this batch
            ahead.update(int(batch.index[-1]) + 1)

    try:
        report = _evaluate(args, detector, model, data, attacks, threats, on_batch)
    except KeyboardInterrupt:
        return _keep_finished(args, writer, detector, clean_flags, batches, attacks, threats,
                              len(data))
    if writer is not None:
        print(f"advrobust detect: saved {writer.close()}", file=sys.stderr)
    _emit(args, report, threats)
    return 0


def _evaluate(args: argparse.Namespace, detector: Any, model: Any, data: Any,
              attacks: dict[str, Any], threats: dict[str, Any],
              on_batch: Callable[[Any], None]) -> Any:
    import torch

    from advrobust.detection import evaluate_detector

    gen = torch.Generator().manual_seed(args.seed)
    return evaluate_detector(detector, model, data.x, data.y, attacks, threats, generator=gen,
                             progress=progress_enabled(args), batch_size=args.batch_size,
                             on_batch=on_batch)


def _emit(args: argparse.Namespace, report: Any, threats: dict[str, Any],
          note: str | None = None) -> None:
    rows: list[tuple[str, Any]] = [("threshold", report.threshold),
                                   ("target FPR", report.target_fpr),
                                   ("clean FPR (evaluated data)", report.clean_fpr)]
    for name, r in report.attacks.items():
        rows += [(f"{name}: success rate", r.success_rate),
                 (f"{name}: detection rate", r.detection_rate),
                 (f"{name}: undetected success rate", r.evasion_rate),
                 (f"{name}: median {threats[name].norm.value} norm detected",
                  r.median_norm_detected),
                 (f"{name}: median {threats[name].norm.value} norm undetected",
                  r.median_norm_undetected)]
    payload = report.as_dict()
    if note is not None:
        rows.insert(0, ("interrupted", note))
        payload["interrupted"] = note
    emit(args, payload, rows, title="Gradient-norm detector")


def _write_rows(writer: SampleWriter, batch: Any, y: torch.Tensor, pred: torch.Tensor,
                clean_scores: torch.Tensor, clean_flags: torch.Tensor) -> None:
    """One row per sample of the batch for this attack; successful x_adv are the witnesses."""
    b = int(batch.index.numel())
    writer.write([{
        "index": i, "label": y[i], "prediction": pred[i], "clean_score": clean_scores[i],
        "clean_flagged": bool(clean_flags[i]), "attack": batch.attack,
        "success": bool(batch.success[k]) if batch.attacked[k] else None,
        "detected": bool(batch.detected[k]) if batch.attacked[k] else None,
        "adv_score": float(batch.score[k]), "norm": float(batch.norm[k]),
        "seconds": batch.seconds / b}
        for k, i in enumerate(batch.index.tolist())])
    writer.add_witnesses(batch.index[batch.success], batch.x_adv[batch.success],
                         tag=batch.attack)


def _keep_finished(args: argparse.Namespace, writer: SampleWriter | None, detector: Any,
                   clean_flags: torch.Tensor, batches: list[Any], attacks: dict[str, Any],
                   threats: dict[str, Any], total: int) -> int:
    """On Ctrl-C: save the rows of the finished batches, print the report over the samples
    every attack finished, say so in one line; returns 130."""
    from advrobust.detection.evaluate import summarize_batches

    last = list(attacks)[-1]
    done = max((int(b.index[-1]) + 1 for b in batches if b.attack == last), default=0)
    saved = keep_finished(writer)
    if done:
        whole = [b for b in batches if int(b.index[-1]) < done]
        report = summarize_batches(detector, clean_flags[:done], whole, threats)
        _emit(args, report, threats, note=f"the first {done} of {total} samples")
        saved.append("the report of the finished samples on stdout")
    return interrupted(args, done, total, saved)
