"""Pieces shared by the gradient attacks: the loss to ascend and the best iterate per sample.

An attack ascends a *loss* (cross-entropy, the negative margin, or a targeted objective) but
keeps the point with the lowest *score*: the margin ``f_y - max_{t != y} f_t`` for an
untargeted run, and ``max_{t != target} f_t - f_target`` for a targeted one (negative exactly
when the target wins, so successful points come first and, among failures, the closest one).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import torch
from torch import Tensor

from advrobust.core._validation import check_choice
from advrobust.core.spec import TargetedLoss, cross_entropy_loss, margin, margin_loss
from advrobust.core.spec import targeted_loss as targeted_objective

__all__ = ["BestIterate", "LossKind", "attack_score", "make_loss", "parse_losses"]

LossFn = Callable[[Tensor], Tensor]


class LossKind(str, Enum):
    """Untargeted losses to maximise: cross-entropy or the negative margin (C&W logit loss)."""

    CE = "ce"
    MARGIN = "margin"


def parse_losses(loss: str | LossKind, targeted_loss: str | TargetedLoss,
                 owner: str) -> tuple[LossKind, TargetedLoss]:
    """Validate the ``loss`` and ``targeted_loss`` parameters of an attack.

    Raises:
        InvalidParameterError: a value outside the allowed choices.
    """
    kinds = [k.value for k in LossKind]
    targeted = [k.value for k in TargetedLoss]
    lk = check_choice(getattr(loss, "value", loss), "loss", owner, kinds)
    tk = check_choice(getattr(targeted_loss, "value", targeted_loss), "targeted_loss", owner,
                      targeted)
    return LossKind(lk), TargetedLoss(tk)


def make_loss(kind: LossKind, targeted_kind: TargetedLoss, y: Tensor,
              target: Tensor | None) -> LossFn:
    """The per-sample loss (N,) an attack maximises, as a function of the logits (N, K).

    Untargeted: cross-entropy of ``y`` or ``-margin``. Targeted: the course's objective
    ``f_target - f_y`` (``target-vs-true``) or ``f_target - sum_{t != target} f_t``
    (``target-vs-all``).
    """
    if target is not None:
        return lambda logits: targeted_objective(logits, y, target, targeted_kind)
    if kind is LossKind.MARGIN:
        return lambda logits: margin_loss(logits, y)
    return lambda logits: cross_entropy_loss(logits, y)


def attack_score(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """Per-sample score (N,) of a point, lower is better for the attacker; < 0 means success."""
    return margin(logits, y) if target is None else -margin(logits, target)


class BestIterate:
    """The lowest-score point seen so far for every sample of a batch.

    Args:
        x: (N, ...) the first candidate (usually the clean input).
        score: (N,) its score.
    """

    def __init__(self, x: Tensor, score: Tensor) -> None:
        self.x = x.clone()
        self.score = score.clone()

    def update(self, x: Tensor, score: Tensor) -> None:
        """Keep ``x`` where its score is strictly lower than the best so far."""
        better = score < self.score
        self.score = torch.where(better, score, self.score)
        self.x = torch.where(better.view((-1,) + (1,) * (x.dim() - 1)), x, self.x)
