"""The report's figures, drawn with matplotlib from the rows of a campaign store.

Each function takes plain rows (dicts from :meth:`ResultStore.rows`) and returns a matplotlib
figure; :func:`to_svg` / :func:`to_png_uri` turn it into text the HTML embeds inline.
"""

from __future__ import annotations

import base64
import io
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["adversarial_grid", "bracket_chart", "curves", "decided_by", "radius_histogram",
           "stage_times", "to_png_uri", "to_svg"]

COLORS = {"verified": "#2e7d32", "falsified": "#c62828", "unknown": "#f9a825",
          "error": "#6a1b9a"}
Row = dict[str, Any]
#: One colour per stage / attack name in every figure.
STAGE_COLORS = {"clean": "#ff9800", "ibp": "#80cbc4", "crown": "#2e7d32", "lp": "#00838f",
                "bab": "#3949ab", "milp": "#8e24aa", "undecided": "#bdbdbd", "pgd": "#c62828",
                "apgd-ce": "#ad1457", "apgd-t": "#d84315", "square": "#6d4c41"}
_EXTRA = ("#1565c0", "#558b2f", "#f9a825", "#4e342e", "#37474f", "#00695c")


def stage_color(name: str) -> str:
    """The colour of a stage or attack name (fixed for known names)."""
    return STAGE_COLORS.get(name, _EXTRA[sum(map(ord, name)) % len(_EXTRA)])


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_svg(fig: Any) -> str:
    """The figure as an inline ``<svg>`` element (XML prolog dropped); closes it."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    _pyplot().close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def to_png_uri(fig: Any, dpi: int = 90) -> str:
    """The figure as a ``data:image/png;base64,...`` URI; closes it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    _pyplot().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _by(rows: Sequence[Row], key: Callable[[Row], Any]) -> dict[Any, list[Row]]:
    out: dict[Any, list[Row]] = defaultdict(list)
    for r in rows:
        out[key(r)].append(r)
    return dict(sorted(out.items()))


def _verdict(r: Row) -> str:
    return "error" if r["status"] == "error" else str(r["verdict"])


def curves(rows: Sequence[Row], title: str) -> Any:
    """Clean >= empirical robust (not falsified) >= certified accuracy against eps; the band
    between the last two is undecided."""
    plt = _pyplot()
    groups = _by(rows, lambda r: r["eps"])
    eps = np.array(list(groups))
    n = np.array([len(g) for g in groups.values()])
    clean = np.array([sum(r["clean_pred"] == r["label"] for r in g) for g in groups.values()])
    upper = np.array([sum(_verdict(r) != "falsified" for r in g) for g in groups.values()])
    cert = np.array([sum(_verdict(r) == "verified" for r in g) for g in groups.values()])
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    ax.plot(eps, clean / n, "k--", label="clean")
    ax.plot(eps, upper / n, "o-", color=COLORS["falsified"], label="empirical robust (upper)")
    ax.plot(eps, cert / n, "s-", color=COLORS["verified"], label="certified (lower)")
    ax.fill_between(eps, cert / n, upper / n, color=COLORS["unknown"], alpha=0.35,
                    label="undecided")
    ax.set(xlabel="eps", ylabel="accuracy", ylim=(-0.02, 1.02), title=title)
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    return fig


def bracket_chart(rows: Sequence[Row], title: str, max_samples: int = 200) -> Any:
    """Per sample, the bracket [lower bound, upper bound] on the worst-case margin, one panel
    per eps, samples sorted by their upper bound, coloured by verdict."""
    plt = _pyplot()
    groups = _by(rows, lambda r: r["eps"])
    fig, axes = plt.subplots(1, len(groups), figsize=(3.0 * len(groups) + 0.6, 3.0),
                             sharey=True, squeeze=False)
    finite = [v for r in rows for v in (r["lower"], r["upper"]) if v is not None]
    floor = min(finite) if finite else -1.0
    for ax, (eps, group) in zip(axes[0], groups.items(), strict=True):
        group = sorted(group, key=lambda r: r["upper"] if r["upper"] is not None else 0)
        group = group[:: max(1, len(group) // max_samples)]
        xs = np.arange(len(group))
        lo = [r["lower"] if r["lower"] is not None else floor for r in group]
        hi = [r["upper"] if r["upper"] is not None else floor for r in group]
        ax.vlines(xs, lo, hi, colors=[COLORS[_verdict(r)] for r in group], linewidth=1.2)
        ax.axhline(0, color="k", linewidth=0.6)
        ax.set(title=f"eps = {eps:g}", xlabel="sample (sorted)")
    axes[0][0].set_ylabel("margin bracket")
    handles = [plt.Line2D([], [], color=c, label=v) for v, c in COLORS.items()]
    fig.legend(handles=handles, loc="upper right", fontsize=8)
    fig.suptitle(title, fontsize=10, y=1.06)
    return fig


def decided_by(rows: Sequence[Row], title: str) -> Any:
    """Left: which stage decided the units at each eps; right: which attack broke what."""
    plt = _pyplot()
    groups = _by(rows, lambda r: r["eps"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, pick in ((left, lambda r: r["decided_by"] or "undecided"),
                     (right, lambda r: r["attack"] if _verdict(r) == "falsified" else None)):
        counts = {eps: Counter(pick(r) for r in g) for eps, g in groups.items()}
        names = sorted({k for c in counts.values() for k in c if k})
        bottom = np.zeros(len(groups))
        labels = [f"{e:g}" for e in groups]
        for name in names:
            values = np.array([counts[e].get(name, 0) for e in groups])
            ax.bar(labels, values, bottom=bottom, label=name, color=stage_color(name))
            bottom += values
        ax.set(xlabel="eps", ylabel="units")
        ax.legend(fontsize=7)
    left.set_title("decided by (stage)", fontsize=9)
    right.set_title("falsified by (attack / witness source)", fontsize=9)
    fig.suptitle(title, fontsize=10, y=1.04)
    return fig


def radius_histogram(rows: Sequence[Row], title: str) -> Any:
    """Per sample the largest eps of the grid it is VERIFIED at (0 when none) and the smallest
    it is FALSIFIED at: a histogram over the grid."""
    plt = _pyplot()
    grid = sorted({r["eps"] for r in rows})
    certified: dict[int, float] = defaultdict(float)
    broken: dict[int, float] = {}
    for r in rows:
        if _verdict(r) == "verified":
            certified[r["sample"]] = max(certified[r["sample"]], r["eps"])
        if _verdict(r) == "falsified":
            broken[r["sample"]] = min(broken.get(r["sample"], np.inf), r["eps"])
    samples = sorted({r["sample"] for r in rows})
    labels = ["0"] + [f"{e:g}" for e in grid]
    cert = Counter(certified.get(s, 0.0) for s in samples)
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    pos = np.arange(len(labels))
    ax.bar(pos - 0.2, [cert.get(0.0, 0)] + [cert.get(e, 0) for e in grid], 0.4,
           color=COLORS["verified"], label="largest certified eps")
    fals = Counter(broken.values())
    ax.bar(pos + 0.2, [sum(1 for s in samples if s not in broken)] + [fals.get(e, 0)
                                                                     for e in grid], 0.4,
           color=COLORS["falsified"], label="smallest falsified eps ('0': never)")
    ax.set_xticks(pos, labels)
    ax.set(xlabel="eps", ylabel="samples", title=title)
    ax.legend(fontsize=8)
    return fig


def stage_times(rows: Sequence[Row]) -> Any:
    """Total seconds spent per stage over all units."""
    plt = _pyplot()
    totals: Counter[str] = Counter()
    for r in rows:
        totals.update(r["seconds"])
    fig, ax = plt.subplots(figsize=(5.2, 2.8))
    names = sorted(totals, key=totals.__getitem__, reverse=True) or ["none"]
    ax.barh(names, [totals.get(n, 0.0) for n in names],
            color=[stage_color(n) for n in names])
    ax.invert_yaxis()
    ax.set(xlabel="seconds (summed over units)", title="time per stage")
    return fig


def _picture(a: np.ndarray) -> np.ndarray:
    """(C, H, W) -> what imshow takes: (H, W) grey or (H, W, C) colour."""
    return a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)


def adversarial_grid(items: Sequence[tuple[np.ndarray, np.ndarray, str]]) -> Any:
    """Columns of (clean, adversarial, perturbation heat map) for up to 8 witnesses;
    ``items`` are (clean, witness, caption) with images (C, H, W)."""
    plt = _pyplot()
    fig, axes = plt.subplots(3, len(items), figsize=(1.5 * len(items) + 0.4, 4.8),
                             squeeze=False)
    for j, (x, w, caption) in enumerate(items):
        delta = (w - x).reshape(x.shape)
        bound = float(np.abs(delta).max()) or 1.0
        axes[0][j].imshow(_picture(x), cmap="gray", vmin=0, vmax=1)
        axes[1][j].imshow(_picture(np.clip(w, 0, 1).reshape(x.shape)), cmap="gray", vmin=0, vmax=1)
        axes[2][j].imshow(delta.sum(0), cmap="RdBu_r", vmin=-bound, vmax=bound)
        axes[0][j].set_title(caption, fontsize=7)
        for i in range(3):
            axes[i][j].set_xticks([])
            axes[i][j].set_yticks([])
    for i, name in enumerate(("clean", "adversarial", "perturbation")):
        axes[i][0].set_ylabel(name, fontsize=8)
    return fig
