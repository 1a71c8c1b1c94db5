"""Reporting for ``advrobust attack``: parameters, per-sample flags, sanity checks, table rows,
saved examples and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def describe_params(attack: Any) -> Any:
    """JSON-ready parameters of an attack; nested attacks as ``{"attack": name, ...}``."""
    from advrobust.attacks import Attack, Ensemble, Transfer

    if isinstance(attack, Transfer):
        return {"source_model": type(attack.source_model).__name__,
                "source_attack": {"attack": attack.attack.cli_name,
                                  **describe_params(attack.attack)}}
    if isinstance(attack, Ensemble) and type(attack) is Ensemble:
        return {"members": [{"attack": a.cli_name, **describe_params(a)} for a in attack.attacks],
                "cascade": attack.cascade}
    out: dict[str, Any] = {}
    for key, value in attack.get_params().items():
        if isinstance(value, torch.Tensor):
            value = f"tensor of shape {tuple(value.shape)}"
        elif isinstance(value, Attack):
            value = {"attack": value.cli_name, **describe_params(value)}
        elif isinstance(value, Path):
            value = str(value)  # the table shows 'dict.npz', not PosixPath('dict.npz')
        out[key] = value
    return out


def result_flags(result: Any) -> dict[str, Any]:
    """Per-sample flags of a (merged) result, counted: budgets exhausted, samples already
    adversarial, and the attack-specific facts (transfer rate, who broke what in an ensemble)."""
    from advrobust.attacks.transfer import transfer_rate

    info = result.info
    flags: dict[str, Any] = {
        "exhausted": None if result.exhausted is None else int(result.exhausted.sum())}
    already = info.get("already_adversarial")
    if isinstance(already, torch.Tensor):
        flags["already_adversarial"] = int(already.sum())
    source = info.get("source_success")
    if isinstance(source, torch.Tensor):
        flags["transfer_rate"] = transfer_rate(source, result.success)
        correct = info.get("target_clean_correct")
        if isinstance(correct, torch.Tensor):
            flags["transfer_rate_target_correct"] = transfer_rate(source & correct,
                                                                  result.success)
        flags["source_success_rate"] = float(source.float().mean())
    broken_by = info.get("broken_by")
    if broken_by is not None:
        flat = [b for batch in broken_by for b in (batch if isinstance(batch, list) else [batch])]
        counts: dict[str, int] = {}
        for b in flat:
            counts[str(b)] = counts.get(str(b), 0) + 1
        flags["broken_by"] = counts
    return flags


def sanity_report(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, name: str,
                  result: Any, threat: Any = None) -> list[dict[str, Any]]:
    """The AutoAttack-style sanity checks of this run, as JSON-ready dicts (with ``threat``, a
    minimum-norm attack's failures are cross-checked by PGD in the same set)."""
    from advrobust.evaluation import sanity_checks

    return [w.to_dict() for w in sanity_checks(model, x, y, {name: result}, threat=threat)]


def report_rows(p: dict[str, Any]) -> list[tuple[str, Any]]:
    keys = ["n", "clean_accuracy", "robust_accuracy", "attack_success_rate", "fooling_rate",
            "rmse", "mean_norm", "median_norm", "max_norm", "queries", "seconds"]
    rows = [(k, p[k]) for k in keys]
    rows.insert(0, ("attack", f"{p['attack']} {p['attack_params']}"))
    if p["target"] is not None:
        rows.append(("target", f"{p['target']} ({p['skipped']} samples of that class skipped)"))
    if p["exhausted"] is not None:
        rows.append(("exhausted", f"{p['exhausted']} samples stopped on their budget unbroken"))
    if p.get("already_adversarial"):
        rows.append(("already_adversarial",
                     f"{p['already_adversarial']} samples already misclassified: returned "
                     "unchanged (norm 0)"))
    rows += [(k, p[k]) for k in ("transfer_rate", "transfer_rate_target_correct",
                                 "source_success_rate", "broken_by") if k in p]
    if "universal" in p:
        u = p["universal"]
        rows += [("universal_fooling_rate_train", u["fooling_rate_train"]),
                 ("universal_fooling_rate_heldout", u["fooling_rate_heldout"]),
                 ("universal_norm", u["perturbation_norm"])]
        rows += [(f"universal_{k}", u[k]) for k in ("saved", "plot") if k in u]
    rows += [(k, p[k]) for k in ("examples", "plot") if k in p]
    for w in p["sanity"]:
        rows.append(("sanity warning", f"[{w['code']}] {w['message']} {w['advice']}"))
    if not p["sanity"]:
        rows.append(("sanity", "no warning (probabilities, gradient masking, randomness)"))
    return rows


def save_examples(path: Path, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                   clean_pred: torch.Tensor, adv_pred: torch.Tensor) -> None:
    import numpy as np

    from advrobust.core._atomic import atomic_write

    atomic_write(path, lambda handle: np.savez_compressed(
        handle, x=x.numpy(), x_adv=x_adv.numpy(), y=y.numpy(), pred_clean=clean_pred.numpy(),
        pred_adv=adv_pred.numpy()))


def plot_examples(path: Path, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                  clean_pred: torch.Tensor, adv_pred: torch.Tensor, columns: int = 8) -> None:
    """Grid: originals (top), adversarials (middle), perturbations (bottom), with predictions.

    Samples whose prediction the attack changed come first (in their order), so the grid shows
    what the attack did rather than the first inputs it may have failed on.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    changed = adv_pred != clean_pred
    order = torch.cat([changed.nonzero().flatten(), (~changed).nonzero().flatten()])
    x, x_adv, y, clean_pred, adv_pred = (t[order] for t in (x, x_adv, y, clean_pred, adv_pred))
    k = min(columns, x.shape[0])
    fig, axes = plt.subplots(3, k, figsize=(1.6 * k, 5.2), squeeze=False)
    delta = x_adv - x
    scale = float(delta[:k].abs().max()) or 1.0
    for j in range(k):
        images = (x[j], x_adv[j], delta[j])
        titles = (f"y={int(y[j])} pred={int(clean_pred[j])}", f"pred={int(adv_pred[j])}",
                  f"max|d|={float(delta[j].abs().max()):.2g}")
        for i, (img, title) in enumerate(zip(images, titles, strict=True)):
            arr = img.permute(1, 2, 0).numpy() if img.shape[0] == 3 else img[0].numpy()
            if i == 2 and img.shape[0] == 3:  # imshow ignores cmap/vmin/vmax for RGB:
                arr = 0.5 + arr / (2 * scale)  # map [-scale, scale] to [0, 1] (grey = 0)
            kw = ({"cmap": "seismic", "vmin": -scale, "vmax": scale} if i == 2
                  else {"cmap": "gray", "vmin": 0, "vmax": 1})
            axes[i, j].imshow(arr.clip(0, 1) if (i < 2 and img.shape[0] == 3) else arr, **kw)
            axes[i, j].set_title(title, fontsize=7)
            axes[i, j].axis("off")
    for i, label in enumerate(("original", "adversarial", "perturbation")):
        axes[i, 0].text(-0.15, 0.5, label, rotation=90, va="center", ha="right", fontsize=8,
                        transform=axes[i, 0].transAxes)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
