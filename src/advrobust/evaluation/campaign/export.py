"""Tables out of a campaign store: per-threat summaries, unit rows, RobustBench-style entries."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from typing import Any

from advrobust.evaluation.campaign.store import ResultStore

__all__ = ["robustbench_entry", "summary_rows", "units_csv", "summary_csv"]

_UNIT_COLUMNS = ("model", "sample", "norm", "eps", "label", "clean_pred", "clean_margin",
                 "lower", "upper", "verdict", "decided_by", "attack", "status", "error",
                 "lowers", "seconds")


def summary_rows(store: ResultStore) -> list[dict[str, Any]]:
    """One row per (model, norm, eps): counts, accuracies and the undecided share.

    ``robust_accuracy_upper`` (not FALSIFIED) >= true robust accuracy >= ``certified_accuracy``
    (VERIFIED); ``undecided`` is the share between the two (UNKNOWN, errors included).
    """
    rows: dict[tuple[str, str, float], dict[str, Any]] = {}
    for r in store.rows():
        key = (r["model"], r["norm"], r["eps"])
        row = rows.setdefault(key, {"model": key[0], "norm": key[1], "eps": key[2], "n": 0,
                                    "clean_correct": 0, "verified": 0, "falsified": 0,
                                    "unknown": 0, "errors": 0, "seconds": 0.0})
        row["n"] += 1
        row["clean_correct"] += int(r["clean_pred"] is not None and r["clean_pred"] == r["label"])
        if r["status"] == "error":
            row["errors"] += 1
        else:
            row[r["verdict"]] += 1
        row["seconds"] += sum(r["seconds"].values())
    out = []
    for row in rows.values():
        n = row["n"]
        row["clean_accuracy"] = row.pop("clean_correct") / n
        row["certified_accuracy"] = row["verified"] / n
        row["robust_accuracy_upper"] = (n - row["falsified"]) / n
        row["undecided"] = (row["unknown"] + row["errors"]) / n
        out.append(row)
    return out


def _csv(rows: Iterable[dict[str, Any]], columns: Iterable[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, dict) else v for k, v in row.items()})
    return buf.getvalue()


def units_csv(store: ResultStore) -> str:
    """Every unit as a CSV row (witnesses left out; ``lowers`` / ``seconds`` as JSON)."""
    return _csv(store.rows(), _UNIT_COLUMNS)


def summary_csv(store: ResultStore) -> str:
    """:func:`summary_rows` as CSV."""
    rows = summary_rows(store)
    return _csv(rows, list(rows[0]) if rows else ["model"])


def robustbench_entry(store: ResultStore) -> list[dict[str, Any]]:
    """RobustBench-style JSON entries, one per (model, threat): clean, empirical robust
    (attacks: not FALSIFIED, an upper bound) and certified accuracy in percent, as strings
    with two decimals like RobustBench's model cards."""
    meta = store.meta()
    config = json.loads(meta.get("config", "{}"))
    dataset = config.get("data", {}).get("name", "")
    pct = "{:.2f}".format
    return [{"name": row["model"], "dataset": dataset,
             "threat_model": {"linf": "Linf", "l2": "L2", "l1": "L1"}[row["norm"]],
             "eps": row["eps"], "clean_acc": pct(100 * row["clean_accuracy"]),
             "autoattack_acc": pct(100 * row["robust_accuracy_upper"]),
             "certified_acc": pct(100 * row["certified_accuracy"]),
             "undecided": pct(100 * row["undecided"]), "n_samples": row["n"],
             "evaluation": "advrobust campaign", "library_version": meta.get("version", "")}
            for row in summary_rows(store)]
