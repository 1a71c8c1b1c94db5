"""Data handling of the training loop: accepted data forms, checks, batched error rates."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from advrobust.core.checks import check_labels
from advrobust.errors import InvalidInputError

__all__ = ["as_tensors", "check_model_fits", "error_rate"]


def as_tensors(data: Any, name: str) -> tuple[Tensor, Tensor]:
    """``(x, y)`` from a Dataset-like object (``.x``, ``.y``) or an ``(x, y)`` tuple.

    Raises:
        InvalidInputError: not one of those forms; ``x`` not a floating tensor of at least two
            dimensions, with NaN / inf, or empty; ``y`` not integer labels (N,).
    """
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
    elif hasattr(data, "x") and hasattr(data, "y"):
        x, y = data.x, data.y
    else:
        raise InvalidInputError(
            f"'{name}' must be a dataset with .x and .y tensors (advrobust.data.Dataset) or a "
            f"tuple (x, y). Got {type(data).__name__} instead.")
    if not torch.is_tensor(x) or not x.is_floating_point() or x.dim() < 2 or len(x) == 0:
        raise InvalidInputError(
            f"'{name}' inputs must be a non-empty floating torch.Tensor (N, C, H, W). Got "
            f"{type(x).__name__ if not torch.is_tensor(x) else (x.dtype, tuple(x.shape))}.")
    if not bool(torch.isfinite(x).all()):
        raise InvalidInputError(f"'{name}' inputs contain NaN or inf values.")
    if not torch.is_tensor(y) or y.dtype != torch.int64 or tuple(y.shape) != (len(x),):
        raise InvalidInputError(
            f"'{name}' labels must be an int64 torch.Tensor of shape ({len(x)},). Got "
            f"{type(y).__name__ if not torch.is_tensor(y) else (y.dtype, tuple(y.shape))}.")
    return x, y


def check_model_fits(model: nn.Module, x: Tensor, y: Tensor, device: torch.device) -> None:
    """One forward of two samples in eval mode: outputs must be (2, K) with every label < K.

    Raises:
        InvalidInputError: the model rejects the input shape, or has too few outputs.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x[:2].to(device))
    except RuntimeError as exc:
        raise InvalidInputError(
            f"The model cannot run on inputs of shape {tuple(x.shape[1:])}: {exc}") from None
    finally:
        model.train(was_training)
    if not torch.is_tensor(out) or out.dim() != 2 or out.shape[0] != min(len(x), 2):
        raise InvalidInputError(
            f"The model must map inputs (N, {', '.join(map(str, x.shape[1:]))}) to logits "
            f"(N, classes). Got {getattr(out, 'shape', type(out).__name__)}.")
    check_labels(y, len(y), int(out.shape[1]))


def error_rate(model: nn.Module, x: Tensor, y: Tensor, device: torch.device,
               batch_size: int = 100) -> float:
    """Top-1 error of ``model`` on (x, y), in eval mode, restoring the mode afterwards."""
    was_training = model.training
    model.eval()
    wrong = 0
    try:
        with torch.no_grad():
            for i in range(0, len(y), max(batch_size, 500)):
                out = model(x[i:i + max(batch_size, 500)].to(device))
                wrong += int((out.argmax(dim=1) != y[i:i + len(out)].to(out.device)).sum())
    finally:
        model.train(was_training)
    return wrong / len(y)
