"""Pictures: the atoms (positive and negative parts) and example attacks.

matplotlib's Agg canvas is used directly: no display needed, no global backend change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from advrobust.attacks.dictionary._dictionary import Dictionary

__all__ = ["plot_atoms", "plot_dictionary_examples"]


def _figure(rows: int, cols: int, size: float) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size * cols, size * rows + 0.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _show(ax: Any, img: Tensor, title: str, signed: bool = False) -> None:
    """Draw one (C, H, W) image: grey for one channel, RGB for three; ``signed``: blue-red."""
    img = img.detach().cpu().float()
    if signed:
        arr = img.mean(0) if img.dim() == 3 else img
        bound = float(arr.abs().max()) or 1.0
        ax.imshow(arr.numpy(), cmap="RdBu_r", vmin=-bound, vmax=bound)
    elif img.dim() == 3 and img.shape[0] == 3:
        ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
    else:
        ax.imshow((img[0] if img.dim() == 3 else img).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_title(title, fontsize=7)
    ax.set_axis_off()


def plot_atoms(path: str | Path, dictionary: Dictionary, max_atoms: int = 20) -> Path:
    """Draw each atom's positive part (top row) and negative part (bottom row) as images.

    Each part is scaled by the atom's largest absolute value, so both rows of one atom share a
    scale (white = the largest coefficient), as in the deck's figure.
    """
    images = dictionary.atom_images()[:max_atoms]
    m = images.shape[0]
    fig, axes = _figure(2, m, 1.4)
    for j in range(m):
        scale = float(images[j].abs().max()) or 1.0
        pos, neg = images[j].clamp_min(0) / scale, (-images[j]).clamp_min(0) / scale
        _show(axes[0, j], pos, f"atom {j} +")
        _show(axes[1, j], neg, f"atom {j} -")
    fig.suptitle(f"{dictionary.method} dictionary, {dictionary.num_atoms} atoms, "
                 f"lambda1={dictionary.lambda1:g}, lambda2={dictionary.lambda2:g}", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def plot_dictionary_examples(path: str | Path, x: Tensor, x_adv: Tensor, clean_pred: Tensor,
                             adv_pred: Tensor, y: Tensor | None = None,
                             columns: int = 8) -> Path:
    """Example attacks: the image (top), ``D v`` (middle, blue-red) and the attacked image
    (bottom), with the labels predicted before and after."""
    k = min(columns, x.shape[0])
    fig, axes = _figure(3, k, 1.4)
    for j in range(k):
        label = "" if y is None else f"y={int(y[j])} "
        _show(axes[0, j], x[j], f"{label}pred={int(clean_pred[j])}")
        _show(axes[1, j], x_adv[j] - x[j], "D v", signed=True)
        _show(axes[2, j], x_adv[j], f"pred={int(adv_pred[j])}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
