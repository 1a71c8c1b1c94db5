"""``advrobust evaluate``: clean, PGD, strongest-ensemble and certified accuracy side by side."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from advrobust.cli._common import (
    add_data_args,
    add_json_arg,
    add_model_arg,
    add_progress_args,
    check_model_data,
    check_output,
    emit,
    load_data,
    load_model,
    progress_enabled,
    seed_arg,
)
from advrobust.cli._save import SUFFIXES, add_save_args, open_writer

__all__ = ["register", "report_rows", "run"]

EXAMPLE = """examples:
  advrobust evaluate --model pgd.pt --data mnist --data-dir ../shared/data/mnist --eps 0.3 --n 200
  advrobust evaluate --model ibp.pt --data mnist --eps 0.1 --n 1000 --no-ensemble --json

Reading: clean >= ensemble <= PGD, and certified <= both. A PGD accuracy well above the
ensemble's is the mark of gradient masking (the report warns); the true robust accuracy lies
between the certified and the ensemble column.
"""


def register(sub: Any) -> None:
    """Add the ``evaluate`` command."""
    p = sub.add_parser(
        "evaluate", help="clean, PGD, ensemble and certified accuracy side by side",
        description="Evaluate a checkpoint on the first --n samples: clean accuracy, PGD-40 "
                    "robust accuracy, the strongest ensemble's (APGD-CE, APGD-T, Square) and "
                    "the certified accuracy of a cascade of sound bounds (IBP, CROWN-IBP, "
                    "CROWN), all on the same samples and threat set, so that gradient masking "
                    "shows as a gap between them.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arg(p)
    add_data_args(p, default="mnist", split="test")
    p.add_argument("--eps", type=float, required=True, help="radius of the threat ball")
    p.add_argument("--norm", default="linf", choices=("linf", "l2", "l1"),
                   help="threat norm (default: linf)")
    p.add_argument("--pgd-steps", type=int, default=40, help="PGD iterations (default: 40)")
    p.add_argument("--pgd-restarts", type=int, default=1, help="PGD restarts (default: 1)")
    p.add_argument("--no-ensemble", action="store_true", help="skip the (slow) ensemble")
    p.add_argument("--ensemble-steps", type=int, default=100,
                   help="APGD iterations of the ensemble (default: 100, AutoAttack's)")
    p.add_argument("--ensemble-queries", type=int, default=5000,
                   help="Square queries of the ensemble (default: 5000, AutoAttack's)")
    p.add_argument("--no-certify", action="store_true",
                   help="skip certification (slow on large convolutional models)")
    p.add_argument("--batch-size", type=int, default=100, help="samples per call (default: 100)")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the attacks' random starts")
    add_progress_args(p)
    add_save_args(p, "index, label, prediction, clean correct, robust to PGD, robust to the "
                     "ensemble, certified")
    add_json_arg(p)
    p.set_defaults(func=run)


COLUMNS = ("index", "label", "prediction", "clean_correct", "pgd_robust", "ensemble_robust",
           "certified")


def report_rows(report: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """Table rows of a :func:`~advrobust.evaluation.robustness_report` (none for None)."""
    if report is None:
        return []
    rows: list[tuple[str, Any]] = [("report", f"{report['n']} test samples, {report['threat']}")]
    for key in ("clean_accuracy", "pgd_accuracy", "ensemble_accuracy", "certified_accuracy"):
        value = report[key]
        rows.append((f"  {key.replace('_', ' ')}", "not run" if value is None else value))
    rows += [("  note", n) for n in report["notes"]]
    rows += [("  warning", w) for w in report["warnings"]]
    return rows


def run(args: argparse.Namespace) -> int:
    """Load, evaluate, print the report (or JSON)."""
    from advrobust.core.threat import LpBall
    from advrobust.evaluation import robustness_report

    threat = LpBall(args.norm, args.eps)
    if args.save is not None:
        check_output(args.save, "--save", force=args.force, suffixes=SUFFIXES)
    checkpoint = load_model(args.model)
    data = load_data(args)
    check_model_data(checkpoint, data)
    report = robustness_report(checkpoint.model, data, threat, certify=not args.no_certify,
                               ensemble=not args.no_ensemble, pgd_steps=args.pgd_steps,
                               pgd_restarts=args.pgd_restarts, batch_size=args.batch_size,
                               ensemble_steps=args.ensemble_steps,
                               ensemble_queries=args.ensemble_queries,
                               seed=args.seed, progress=progress_enabled(args),
                               per_sample=True)
    rows = report.pop("per_sample")
    writer = open_writer(args.save, COLUMNS, args.force)  # after the run: Ctrl-C leaves none
    if writer is not None:
        from advrobust.evaluation import predict

        pred = predict(checkpoint.model, data.x)
        writer.write([{"index": i, "label": data.y[i], "prediction": pred[i],
                       **{k: None if v is None else bool(v[i]) for k, v in rows.items()}}
                      for i in range(len(data.y))])
        print(f"advrobust evaluate: saved {writer.close()}", file=sys.stderr)
    payload = {"model": str(args.model), "arch": checkpoint.arch, "data": args.data,
               "split": args.split, **report}
    emit(args, payload, [("model", args.model), *report_rows(report)],
         title=f"advrobust evaluate ({threat})")
    return 0
