"""Plots of the two experiments (matplotlib is imported here, on first use, never at start-up)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from advrobust.experiments.init_attack import InitAttackResult
from advrobust.experiments.robust_net import RobustNetResult

__all__ = ["plot_init_attack", "plot_robust_net"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _groups(result: InitAttackResult) -> dict[tuple[str, str], list[Any]]:
    groups: dict[tuple[str, str], list[Any]] = {}
    for row in result.rows:
        groups.setdefault((row.activation, row.k_spec), []).append(row)
    return groups


def plot_init_attack(result: InitAttackResult, path: str | Path) -> Path:
    """Flip rate, ``||grad f||``, ``|f(x)|`` and the needed step against d, theory dashed.

    Returns:
        The path written (PNG).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5), sharex=True)
    (ax_flip, ax_grad), (ax_f, ax_step) = axes
    for i, ((act, kspec), rows) in enumerate(_groups(result).items()):
        color, label = f"C{i}", f"{act}, k={kspec}"
        ds = [r.d for r in rows]
        ax_flip.plot(ds, [r.flip_rate for r in rows], "o-", color=color, label=label)
        ax_flip.plot(ds, [r.theory.linear_flip_rate(r.step) for r in rows], "--", color=color)
        ax_grad.errorbar(ds, [float(r.grad_norm.mean()) for r in rows],
                         yerr=[float(r.grad_norm.std()) if r.grad_norm.numel() > 1 else 0.0
                               for r in rows], fmt="o-", color=color,
                         capsize=3)
        ax_grad.plot(ds, [r.theory.grad_sq ** 0.5 for r in rows], "--", color=color)
        ax_f.plot(ds, [float(r.f.abs().mean()) for r in rows], "o-", color=color)
        ax_f.plot(ds, [r.theory.f_abs_mean for r in rows], "--", color=color)
        ax_step.plot(ds, [float(r.needed_step.median()) for r in rows], "o-", color=color)
        ax_step.plot(ds, [float(r.linear_step.median()) for r in rows], "x:", color=color)
        ax_step.plot(ds, [r.theory.linear_step_median() for r in rows], "--", color=color)
    ax_flip.set_ylabel(f"flip rate, one step of norm <= {result.step:g}")
    ax_flip.set_ylim(0, 1.02)
    ax_flip.legend(fontsize=8, title="measured (o), theory (--)", title_fontsize=8)
    ax_grad.set_ylabel("||grad f(x)||  (mean +- sd)")
    ax_f.set_ylabel("|f(x)|  (mean)")
    ax_step.set_ylabel("step norm needed (median)\nline search (o), |f|/||grad|| (x)")
    for ax in (ax_f, ax_step):
        ax.set_xlabel("input dimension d  (||x|| = sqrt(d))")
    for ax in axes.flat:
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    fig.suptitle("Random two-layer networks at initialisation: one gradient step flips the sign")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def plot_robust_net(result: RobustNetResult, path: str | Path) -> Path:
    """Radii of the constructed and the trained network against ``sqrt(d)``.

    Returns:
        The path written (PNG).
    """
    plt = _pyplot()
    rows = sorted(result.rows, key=lambda r: r.d)
    xs = [r.d ** 0.5 for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.plot(xs, [r.bound for r in rows], "k--", label="theorem: (1-c)/4 sqrt(d)")
    ax.plot(xs, [r.exact for r in rows], "k:", label="constructed, exact: (1-c)/2 sqrt(d)")
    ax.plot(xs, [float(r.constructed.certified.min()) for r in rows], "s", color="C0",
            label="constructed: CROWN certified (min over points)")
    ax.plot(xs, [float(r.constructed.attack.min()) for r in rows], "^", color="C0", mfc="none",
            label="constructed: best attack (min)")
    med = torch.tensor([float(r.trained.attack.median()) for r in rows])
    lo = med - torch.tensor([float(r.trained.attack.min()) for r in rows])
    hi = torch.tensor([float(r.trained.attack.max()) for r in rows]) - med
    ax.errorbar(xs, med.tolist(), yerr=[lo.tolist(), hi.tolist()], fmt="^-", color="C3",
                capsize=3, label="trained (GD): best attack (median, min-max)")
    ax.plot(xs, [float(r.trained.certified.median()) for r in rows], "s-", color="C3",
            mfc="none", label="trained: CROWN certified (median)")
    ax.set_xlabel("sqrt(d)")
    ax.set_ylabel("l2 robust radius at the data points")
    c = rows[0].c if rows else 0.0
    ax.set_title(f"Vardi, Yehudai & Shamir 2022: robust net exists, GD finds another (c={c:g})",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
