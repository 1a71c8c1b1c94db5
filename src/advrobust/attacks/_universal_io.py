"""Saving, loading and plotting universal perturbations (npz + PNG)."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from advrobust.attacks.universal import UniversalPerturbation, UniversalResult, fooling_rate
from advrobust.core._npz import npz_reason
from advrobust.core.threat import LpBall, Norm
from advrobust.errors import DataFormatError, MissingFileError

__all__ = ["load_universal", "plot_universal", "run_universal", "save_universal"]

_FORMAT = "advrobust-universal-v1"


def save_universal(path: str | Path, result: UniversalResult) -> Path:
    """Write ``result`` to an ``.npz`` file (no pickles) and return its path.

    Keys: ``perturbation`` (C, H, W) float32, ``input_shape``, ``norm``, ``eps``, ``lo``, ``hi``,
    ``method``, ``fooling_rate_train``, ``history``, ``format``.
    """
    path = Path(path)
    v = result.perturbation.detach().cpu().numpy()
    with path.open("wb") as fh:
        np.savez(fh, perturbation=v, input_shape=np.asarray(v.shape, dtype=np.int64),
                 norm=np.asarray(result.threat.norm.value), eps=np.asarray(result.threat.eps),
                 lo=np.asarray(result.threat.lo), hi=np.asarray(result.threat.hi),
                 method=np.asarray(result.method),
                 fooling_rate_train=np.asarray(result.fooling_rate_train),
                 history=np.asarray(result.history, dtype=np.float64),
                 format=np.asarray(_FORMAT))
    return path


def load_universal(path: str | Path) -> UniversalResult:
    """Read a file written by :func:`save_universal`.

    Raises:
        MissingFileError: no such file (a FileNotFoundError).
        DataFormatError: the file is not a universal-perturbation npz (missing keys, bad shape).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"No universal perturbation file at {path}.")
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["format"]) != _FORMAT:
                raise DataFormatError(f"{path} is not an {_FORMAT} file.")
            v = torch.from_numpy(np.array(data["perturbation"], dtype=np.float32))
            if tuple(v.shape) != tuple(int(s) for s in data["input_shape"]):
                raise DataFormatError(f"{path}: perturbation shape does not match input_shape.")
            threat = LpBall(Norm.parse(str(data["norm"])), float(data["eps"]), float(data["lo"]),
                            float(data["hi"]))
            return UniversalResult(v, float(data["fooling_rate_train"]),
                                   tuple(float(h) for h in data["history"]), threat,
                                   str(data["method"]))
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, DataFormatError):
            raise
        raise DataFormatError(
            f"{path} is not a universal-perturbation npz file: {npz_reason(exc)}") from exc


def plot_universal(path_png: str | Path, result: UniversalResult) -> Path:
    """Save a PNG of the perturbation (diverging colours, one panel per channel) and the
    training fooling rate per pass. Uses matplotlib's Agg canvas: no display needed and no
    global backend change."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    v = result.perturbation.detach().cpu().double()
    img = v.reshape(1, 1, -1) if v.dim() == 1 else v.reshape(-1, *v.shape[-2:])
    bound = float(img.abs().max()) or 1.0
    fig = Figure(figsize=(3 * (img.shape[0] + 1), 3))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, img.shape[0] + 1)
    for c in range(img.shape[0]):
        shown = axes[c].imshow(img[c].numpy(), cmap="RdBu_r", vmin=-bound, vmax=bound)
        axes[c].set_axis_off()
        axes[c].set_title(f"channel {c}")
        fig.colorbar(shown, ax=axes[c], fraction=0.046)
    axes[-1].plot(range(1, len(result.history) + 1), result.history, marker="o")
    axes[-1].set_xlabel("pass")
    axes[-1].set_ylabel("fooling rate (train)")
    axes[-1].set_ylim(0, 1)
    fig.suptitle(f"universal {result.method}, {result.threat}, "
                 f"fooling rate {result.fooling_rate_train:.2f}")
    fig.tight_layout()
    path_png = Path(path_png)
    fig.savefig(path_png, dpi=100)
    return path_png


def run_universal(uap: UniversalPerturbation, model: nn.Module, x: Tensor, y: Tensor,
                  threat: LpBall, *, x_heldout: Tensor | None = None,
                  generator: torch.Generator | None = None, save_path: str | Path | None = None,
                  plot_path: str | Path | None = None) -> tuple[UniversalResult, dict[str, Any]]:
    """What ``advrobust attack --attack universal`` does: fit on (x, y), optionally measure
    the fooling rate on held-out inputs, save the npz and the PNG.

    Returns:
        The result and a JSON-ready summary (fooling rates, norm, passes, files written).
    """
    result = uap.fit(model, x, y, threat, generator=generator)
    summary: dict[str, Any] = {
        "method": result.method, "threat": str(threat),
        "perturbation_norm": float(threat.norm_of(result.perturbation.unsqueeze(0))[0]),
        "fooling_rate_train": result.fooling_rate_train, "history": list(result.history),
        "fooling_rate_heldout": None if x_heldout is None
        else fooling_rate(model, x_heldout, result.perturbation, threat)}
    if save_path is not None:
        summary["saved"] = str(save_universal(save_path, result))
    if plot_path is not None:
        summary["plot"] = str(plot_universal(plot_path, result))
    return result, summary
