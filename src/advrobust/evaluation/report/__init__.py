"""One self-contained HTML report of a campaign store (jinja2 template, inline figures).

The page needs no network access: plots are inline SVG, image grids inline PNG (data URIs).
It shows the summary table, robustness curves (clean >= empirical robust >= certified against
eps, the band between the last two undecided), per-sample bracket charts coloured by verdict,
which stage decided and which attack broke what, adversarial examples with perturbation heat
maps, certified-radius histograms, time per stage, the sanity checks and the config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from advrobust.evaluation.campaign.export import summary_rows
from advrobust.evaluation.campaign.store import ResultStore, unpack
from advrobust.evaluation.campaign.unit_sanity import black_box_findings

__all__ = ["build_report", "write_report"]

_TEMPLATES = Path(__file__).parent / "templates"


def _examples(store: ResultStore, rows: list[dict[str, Any]], limit: int = 8) -> list[Any]:
    """Up to ``limit`` falsified units with a witness, at the smallest eps that has them."""
    items: list[Any] = []
    for r in sorted(rows, key=lambda r: (r["eps"], r["sample"])):
        if r["verdict"] != "falsified" or r["witness"] is None or len(items) >= limit:
            continue
        got = store.sample(r["sample"])
        if got is None:
            continue
        x = got[1]
        w = unpack(r["witness"], (-1,)).reshape(x.shape)
        pred_note = f"#{r['sample']} eps {r['eps']:g}\n{r['attack'] or ''}"
        items.append((x, w, pred_note))
    return items


def _sections(store: ResultStore, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from advrobust.evaluation.report import figures as F

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["norm"]), []).append(r)
    sections = []
    for (model, norm), group in groups.items():
        name = f"{model}, {norm}"
        figs = [
            {"svg": F.to_svg(F.curves(group, f"{name}: robustness curves")),
             "caption": "Clean, empirical robust (not falsified: an upper bound) and certified "
                        "(verified: a lower bound) accuracy; the shaded band is undecided."},
            {"svg": F.to_svg(F.bracket_chart(group, f"{name}: per-sample brackets")),
             "caption": "Per sample, the worst-case margin lies between the two ends of its "
                        "bar (lower bound from certificates, upper from the best witness); "
                        "unbounded lower ends are drawn at the bottom."},
            {"svg": F.to_svg(F.decided_by(group, f"{name}: who decided what")),
             "caption": "Stage that decided each unit, and what produced the counterexample "
                        "of each falsified unit."},
            {"svg": F.to_svg(F.radius_histogram(group, f"{name}: certified radius")),
             "caption": "Largest eps of the grid each sample is certified at, and the "
                        "smallest it is broken at."}]
        examples = _examples(store, group)
        if examples:
            figs.append({"png": F.to_png_uri(F.adversarial_grid(examples)),
                         "caption": "Counterexamples: clean input, adversarial input and the "
                                    "perturbation (red +, blue -)."})
        sections.append({"title": name, "figures": figs})
    sections.append({"title": "Time per stage", "figures": [
        {"svg": F.to_svg(F.stage_times(rows)),
         "caption": "Wall time of each stage, summed over the units it ran on."}]})
    return sections


def build_report(store_path: str | Path) -> str:
    """The report of the store at ``store_path`` as one HTML string.

    Raises:
        StoreError: no store there, or not a readable one.
    """
    import jinja2

    with ResultStore(store_path, readonly=True) as store:
        meta, rows = store.meta(), list(store.rows())
        summary = summary_rows(store)
        sections = _sections(store, rows) if rows else []
        per_unit = black_box_findings(store)
    config = json.loads(meta.get("config", "{}"))
    sanity = {k.split(":", 1)[1]: json.loads(v) for k, v in meta.items()
              if k.startswith("sanity:")}
    for model, found in per_unit.items():
        sanity[model] = sanity.get(model, []) + found
    errors = [{"unit": f"{r['model']} #{r['sample']} {r['norm']} eps {r['eps']:g}",
               "message": r["error"]} for r in rows if r["status"] == "error"]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_TEMPLATES),
                             autoescape=jinja2.select_autoescape(["html"]))
    return env.get_template("report.html").render(
        title=", ".join(m["name"] for m in config.get("models", [])) or "empty",
        store=str(store_path), version=meta.get("version", "?"),
        created=meta.get("created", "?"), n_units=len(rows), n_errors=len(errors),
        summary=summary, sections=sections, sanity=sanity, errors=errors[:50],
        config=json.dumps(config, indent=2, sort_keys=True))


def write_report(store_path: str | Path, out: str | Path) -> Path:
    """Write :func:`build_report` to ``out``; returns the path."""
    path = Path(out)
    path.write_text(build_report(store_path), encoding="utf-8")
    return path

