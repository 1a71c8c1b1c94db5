"""Folding of elementwise affine records into standard layers (used by ``network._onnx_chain``).

A :class:`Scale` (``x * scale + shift``, from Add / Sub / Mul / Div with a constant or an eval-mode
BatchNormalization) is folded into the Linear / Conv2d just before it (a bias addition, a
batch-norm), else into the next Linear when only reshapes separate them (an input normalisation),
else emitted as a diagonal Linear or a depthwise 1x1 Conv2d.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advrobust.errors import UnsupportedLayerError

__all__ = ["Item", "Scale", "resolve"]


@dataclass
class Scale:
    """``x * scale + shift`` elementwise; both tensors have the full per-sample shape."""

    scale: Tensor
    shift: Tensor


Item = nn.Module | Scale


# ---------------------------------------------------------------------- folding
def _merge_scales(items: list[Item]) -> list[Item]:
    out: list[Item] = []
    for item in items:
        prev = out[-1] if out else None
        if isinstance(item, Scale) and isinstance(prev, Scale):
            out[-1] = Scale(prev.scale * item.scale, prev.shift * item.scale + item.shift)
        else:
            out.append(item)
    return out


def _per_channel(t: Tensor) -> Tensor | None:
    """(C,) if ``t`` (C, H, W) is constant over each channel, else None."""
    flat = t.reshape(t.shape[0], -1)
    return flat[:, 0] if bool((flat == flat[:, :1]).all()) else None


def _fold_back(prev: Item | None, s: Scale) -> bool:
    """Fold ``s`` into the Linear / Conv2d just before it."""
    if isinstance(prev, nn.Linear):
        scale, shift = s.scale, s.shift
    elif isinstance(prev, nn.Conv2d) and s.scale.dim() == 3:
        scale, shift = _per_channel(s.scale), _per_channel(s.shift)  # type: ignore[assignment]
        if scale is None or shift is None:
            return False
    else:
        return False
    view = (-1,) + (1,) * (prev.weight.dim() - 1)
    with torch.no_grad():
        prev.weight.copy_(prev.weight.double() * scale.reshape(view))
        prev.bias.copy_(prev.bias.double() * scale + shift)  # type: ignore[union-attr]
    return True


def _fold_forward(rest: list[Item], s: Scale) -> bool:
    """Fold ``s`` into the next Linear when only reshapes separate them."""
    for item in rest:
        if isinstance(item, nn.Linear):
            if item.in_features != s.scale.numel():
                return False
            w = item.weight.double()
            with torch.no_grad():
                item.bias.copy_(item.bias.double() + w @ s.shift.reshape(-1))
                item.weight.copy_(w * s.scale.reshape(1, -1))
            return True
        if not isinstance(item, nn.Flatten | nn.Unflatten):
            return False
    return False


def _as_module(s: Scale, source: str) -> nn.Module:
    """A diagonal Linear (flat inputs) or a depthwise 1x1 Conv2d (per-channel constants)."""
    if s.scale.dim() == 1:
        layer = nn.Linear(s.scale.numel(), s.scale.numel())
        with torch.no_grad():
            layer.weight.copy_(torch.diag(s.scale))
            layer.bias.copy_(s.shift)
        return layer
    scale = _per_channel(s.scale) if s.scale.dim() == 3 else None
    shift = _per_channel(s.shift) if s.shift.dim() == 3 else None
    if scale is None or shift is None:
        raise UnsupportedLayerError(
            f"{source}: an elementwise Add/Sub/Mul/Div with per-position constants on a "
            f"{tuple(s.scale.shape)} tensor cannot be folded into a neighbouring layer.")
    conv = nn.Conv2d(scale.numel(), scale.numel(), 1, groups=scale.numel())
    assert conv.bias is not None
    with torch.no_grad():
        conv.weight.copy_(scale.reshape(-1, 1, 1, 1))
        conv.bias.copy_(shift)
    return conv


def resolve(items: list[Item], source: str) -> list[nn.Module]:
    """Standard layers only: every :class:`Scale` folded into a neighbour or made a layer."""
    items = _merge_scales(items)
    out: list[nn.Module] = []
    for i, item in enumerate(items):
        if not isinstance(item, Scale):
            out.append(item)
        elif not (_fold_back(out[-1] if out else None, item)
                  or _fold_forward(items[i + 1:], item)):
            out.append(_as_module(item, source))
    return out
