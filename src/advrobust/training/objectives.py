"""The standard training objective: cross-entropy on clean inputs."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.training.objective import Objective

__all__ = ["Standard"]


class Standard(Objective):
    """Mean cross-entropy of the model's logits on the clean batch (no defense).

    Example:
        >>> fit(model, train, objective=Standard())  # the default objective of fit
    """

    def __init__(self) -> None:
        pass

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: float) -> Tensor:
        """Mean cross-entropy of ``model(x)`` (B, K) against labels ``y`` (B,)."""
        return F.cross_entropy(model(x), y)
