"""Run a model in eval mode without disturbing the caller's model."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["eval_mode", "model_device", "model_dtype"]


@contextmanager
def eval_mode(model: nn.Module, who: str = "advrobust") -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with parameter gradients off; restore both on exit or error.

    Warns (once per call site, through ``warnings``) when the model was in training mode, since the
    method then runs on a different function than the caller's training-mode model.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    if model.training:
        warnings.warn(
            f"{who}: the model was in training mode; it runs in eval mode (dropout off, batch-norm "
            "running statistics) and is restored to training mode afterwards.",
            UserWarning, stacklevel=3)
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)


def model_device(model: nn.Module) -> torch.device | None:
    """Device of the model's first parameter or buffer, None for a parameter-free model."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return None


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """Floating dtype of the model's first floating parameter, None if it has none."""
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return None
