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
    forecast,
    held_interrupt,
    interrupted,
    load_data,
    load_model,
    progress_enabled,
    seed_arg,
)
from advrobust.cli._save import SUFFIXES, add_save_args, keep_finished, open_writer

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
    """Load, evaluate batch by batch, print the report (or JSON)."""
    from advrobust.core._validation import check_int
    from advrobust.core.progress import progress_bar
    from advrobust.core.threat import LpBall
    from advrobust.evaluation import predict

    threat = LpBall(args.norm, args.eps)
    check_int(args.batch_size, "--batch-size", "advrobust evaluate", low=1)
    if args.save is not None:
        check_output(args.save, "--save", force=args.force, suffixes=SUFFIXES)
    checkpoint = load_model(args.model)
    data = load_data(args)
    check_model_data(checkpoint, data)
    writer = open_writer(args.save, COLUMNS, args.force)
    pred, parts, n = predict(checkpoint.model, data.x), [], len(data.y)
    spans = [(s, min(s + args.batch_size, n)) for s in range(0, n, args.batch_size)]
    ahead = forecast(args, n)
    bar = progress_bar(total=len(spans), desc="evaluate", unit="batch",
                       disable=not progress_enabled(args) or len(spans) < 2)
    try:  # batch by batch: the rows of finished batches are on disk when Ctrl-C comes
        for s, e in spans:
            part = _evaluate(args, checkpoint.model, data, s, e, threat,
                             progress_enabled(args) and len(spans) == 1)
            with held_interrupt():  # the batch is kept whole or not at all
                parts.append(part)
                if writer is not None:
                    rows = part["per_sample"]
                    writer.write([{"index": i, "label": data.y[i], "prediction": pred[i],
                                   **{k: None if v is None else bool(v[i - s])
                                      for k, v in rows.items()}} for i in range(s, e)])
            ahead.update(e)
            bar.update(1)
    except KeyboardInterrupt:
        done = spans[len(parts) - 1][1] if parts else 0
        saved = keep_finished(writer)
        if parts:
            _emit(args, checkpoint, threat, merge_reports(parts),
                  note=f"the first {done} of {n} samples")
            saved.append("the report of the finished samples on stdout")
        return interrupted(args, done, n, saved)
    finally:
        bar.close()
    if writer is not None:
        print(f"advrobust evaluate: saved {writer.close()}", file=sys.stderr)
    _emit(args, checkpoint, threat, merge_reports(parts))
    return 0


def _evaluate(args: argparse.Namespace, model: Any, data: Any, start: int, end: int,
              threat: Any, progress: bool) -> dict[str, Any]:
    from advrobust.evaluation import robustness_report

    return robustness_report(model, (data.x[start:end], data.y[start:end]), threat,
                             certify=not args.no_certify, ensemble=not args.no_ensemble,
                             pgd_steps=args.pgd_steps, pgd_restarts=args.pgd_restarts,
                             batch_size=args.batch_size, ensemble_steps=args.ensemble_steps,
                             ensemble_queries=args.ensemble_queries,
                             seed=args.seed, progress=progress, per_sample=True)


def merge_reports(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One :func:`~advrobust.evaluation.robustness_report` of consecutive batches' reports.

    Accuracies are recomputed from the per-sample rows; seconds and ``certified_by`` counts
    add up; notes and warnings are kept once each (a warning of one batch names its
    samples).
    """
    import torch

    from advrobust.evaluation.robustness import _check_order

    if len(parts) == 1:
        single = dict(parts[0])
        single.pop("per_sample", None)
        return single
    rows: dict[str, Any] = {k: None if parts[0]["per_sample"][k] is None
                            else torch.cat([p["per_sample"][k] for p in parts])
                            for k in parts[0]["per_sample"]}
    report: dict[str, Any] = {"n": sum(p["n"] for p in parts), "threat": parts[0]["threat"],
                              "seconds": {}, "notes": [], "warnings": []}
    for key, row in (("clean_accuracy", "clean_correct"), ("pgd_accuracy", "pgd_robust"),
                     ("ensemble_accuracy", "ensemble_robust"),
                     ("certified_accuracy", "certified")):
        report[key] = None if rows.get(row) is None else float(rows[row].float().mean())
    start = 0
    for p in parts:
        for k, v in p["seconds"].items():
            report["seconds"][k] = report["seconds"].get(k, 0.0) + v
        for k, v in (p.get("certified_by") or {}).items():
            report.setdefault("certified_by", {})
            report["certified_by"][k] = report["certified_by"].get(k, 0) + v
        report["notes"] += [m for m in p["notes"] if m not in report["notes"]]
        report["warnings"] += [f"samples {start}-{start + p['n'] - 1}: {w}"
                               for w in p["warnings"] if not w.startswith("certified accuracy")]
        start += p["n"]
    _check_order(report)
    return report


def _emit(args: argparse.Namespace, checkpoint: Any, threat: Any, report: dict[str, Any],
          note: str | None = None) -> None:
    payload = {"model": str(args.model), "arch": checkpoint.arch, "data": args.data,
               "split": args.split, **report}
    rows = [("model", args.model), *report_rows(report)]
    if note is not None:
        payload["interrupted"] = note
        rows.insert(0, ("interrupted", note))
    emit(args, payload, rows, title=f"advrobust evaluate ({threat})")
