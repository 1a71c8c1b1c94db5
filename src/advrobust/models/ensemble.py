"""An ensemble of classifiers as one classifier: the log of the members' mean softmax.

``Ensemble([f1, f2, f3])(x) = log((softmax f1(x) + softmax f2(x) + softmax f3(x)) / 3)``. The
output is a vector of log-probabilities, i.e. valid logits (``softmax`` of it gives back the mean
probabilities, its argmax is the soft-voting prediction), so every part of the library that
expects logits (attacks' margins, the probability-output sanity check, randomized smoothing)
takes it as it is. Averaging independently trained members lowers the variance of the base
classifier under noise, which raises the smoothed classifier's certified radii (Horvath et al.,
"Boosting randomized smoothing with variance reduced classifiers", ICLR 2022).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from advrobust.errors import InvalidInputError, InvalidParameterError

__all__ = ["Ensemble"]


class Ensemble(nn.Module):
    """Soft-voting ensemble: log of the mean of the members' softmax outputs.

    Args:
        members: at least one ``nn.Module`` mapping a batch of inputs to ``(B, K)`` logits, all
            with the same number of classes K. They become submodules, so ``.eval()`` /
            ``.to(device)`` on the ensemble reach every member.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        members = list(members)
        if not members:
            raise InvalidParameterError("Ensemble: 'members' must hold at least one model. "
                                        "Got an empty list instead.")
        bad = [i for i, m in enumerate(members) if not isinstance(m, nn.Module)]
        if bad:
            raise InvalidParameterError(
                f"Ensemble: every member must be a torch.nn.Module. Members {bad} are "
                f"{[type(members[i]).__name__ for i in bad]} instead.")
        self.members = nn.ModuleList(members)
        self.training = any(m.training for m in members)  # the members' mode, not a new one

    def __len__(self) -> int:
        return len(self.members)

    def forward(self, x: Tensor) -> Tensor:
        outs = [m(x) for m in self.members]
        shapes = {tuple(o.shape) for o in outs}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise InvalidInputError(
                "Ensemble: every member must return (batch, classes) logits of the same shape. "
                f"Got shapes {[tuple(o.shape) for o in outs]} instead.")
        logp = torch.stack([torch.log_softmax(o, dim=-1) for o in outs])
        return torch.logsumexp(logp, dim=0) - math.log(len(outs))
