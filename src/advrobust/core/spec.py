"""Specifications and losses: what "robust" means for one sample.

A specification is a matrix ``C`` (N, K, num_classes) and an offset ``d`` (N, K): the sample is
robust when every row of ``C f(x') + d`` stays positive over the threat set. The default rows are
``e_y - e_t`` for every ``t != y``, whose minimum is the margin ``f_y - max_{t != y} f_t``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor

from advrobust.errors import InvalidInputError

__all__ = [
    "Spec",
    "TargetedLoss",
    "cross_entropy_loss",
    "dlr_loss",
    "margin",
    "margin_loss",
    "targeted_loss",
    "targeted_margin",
]


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """``f_y - max_{t != y} f_t`` per sample, (N, K) -> (N,). Positive means correct."""
    true = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    others = logits.scatter(1, y.unsqueeze(1), float("-inf"))
    return true - others.amax(dim=1)


def targeted_margin(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """``f_y - f_target`` per sample: negative once the target outranks the true class."""
    return (logits.gather(1, y.unsqueeze(1)) - logits.gather(1, target.unsqueeze(1))).squeeze(1)


def cross_entropy_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample cross-entropy (N,); an untargeted attack maximises it."""
    return F.cross_entropy(logits, y, reduction="none")


def margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample negative margin (N,) (the C&W logit loss without the hinge)."""
    return -margin(logits, y)


def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Difference-of-logits-ratio loss of Croce & Hein 2020 (to maximise), (N,)."""
    sorted_logits, _ = logits.sort(dim=1)
    top_is_y = (sorted_logits[:, -1] == logits.gather(1, y.unsqueeze(1)).squeeze(1))
    best_other = torch.where(top_is_y, sorted_logits[:, -2], sorted_logits[:, -1])
    true = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    scale = (sorted_logits[:, -1] - sorted_logits[:, -3]).clamp_min(1e-12)
    return -(true - best_other) / scale


class TargetedLoss(str, Enum):
    """The two targeted objectives of the course material (both to maximise)."""

    TARGET_VS_TRUE = "target-vs-true"  # f_target - f_y
    TARGET_VS_ALL = "target-vs-all"  # f_target - sum_{t != target} f_t


def targeted_loss(logits: Tensor, y: Tensor, target: Tensor,
                  kind: TargetedLoss = TargetedLoss.TARGET_VS_TRUE) -> Tensor:
    """Per-sample targeted objective to maximise, (N,)."""
    tgt = logits.gather(1, target.unsqueeze(1)).squeeze(1)
    if TargetedLoss(kind) is TargetedLoss.TARGET_VS_TRUE:
        return tgt - logits.gather(1, y.unsqueeze(1)).squeeze(1)
    return tgt - (logits.sum(dim=1) - tgt)


@dataclass(frozen=True)
class Spec:
    """Robustness property ``C f(x') + d > 0`` for every row.

    Attributes:
        C: (N, K, num_classes) output coefficients.
        d: (N, K) offsets (zero for margin specs).
    """

    C: Tensor
    d: Tensor

    @staticmethod
    def margins(y: Tensor, num_classes: int) -> Spec:
        """Rows ``e_y - e_t`` for every ``t != y``: K = num_classes - 1."""
        n = y.shape[0]
        eye = torch.eye(num_classes, device=y.device)
        others = torch.arange(num_classes, device=y.device).expand(n, num_classes)
        keep = others != y.unsqueeze(1)
        t = others[keep].reshape(n, num_classes - 1)
        c = eye[y].unsqueeze(1) - eye[t]
        return Spec(c, torch.zeros(n, num_classes - 1, device=y.device))

    @staticmethod
    def targeted(y: Tensor, target: Tensor, num_classes: int) -> Spec:
        """A single row ``e_y - e_target`` per sample."""
        eye = torch.eye(num_classes, device=y.device)
        c = (eye[y] - eye[target]).unsqueeze(1)
        return Spec(c, torch.zeros(y.shape[0], 1, device=y.device))

    @staticmethod
    def from_matrix(c: Tensor, d: Tensor | None = None, n: int | None = None) -> Spec:
        """Any matrix: (K, classes) shared by the batch (give ``n``) or (N, K, classes)."""
        if c.dim() == 2:
            if n is None:
                raise InvalidInputError("A (K, classes) spec matrix needs the batch size 'n'.")
            c = c.unsqueeze(0).expand(n, *c.shape)
        if c.dim() != 3:
            raise InvalidInputError(
                f"Spec matrix must be (K, classes) or (N, K, classes); got {tuple(c.shape)}.")
        if d is None:
            d = torch.zeros(c.shape[:2], dtype=c.dtype, device=c.device)
        elif d.dim() == 1:
            d = d.unsqueeze(0).expand(c.shape[0], -1)
        return Spec(c, d)

    @property
    def num_rows(self) -> int:
        """K, the number of rows per sample."""
        return int(self.C.shape[1])

    def check(self, n: int, num_classes: int) -> None:
        """Raise if the spec does not fit a batch of ``n`` samples and ``num_classes`` outputs."""
        if self.C.shape[0] != n or self.C.shape[2] != num_classes:
            raise InvalidInputError(
                f"The specification must compare the model's {num_classes} outputs (rows of "
                f"width {num_classes}) for {n} sample(s); it compares {self.C.shape[2]} outputs "
                f"for {self.C.shape[0]} sample(s).")
        if tuple(self.d.shape) != tuple(self.C.shape[:2]):
            raise InvalidInputError(
                f"Spec offset d must be shaped {tuple(self.C.shape[:2])}; "
                f"got {tuple(self.d.shape)}.")

    def apply(self, logits: Tensor) -> Tensor:
        """``C f + d`` for logits (N, classes) -> (N, K)."""
        c = self.C.to(logits.dtype)
        return torch.einsum("nkc,nc->nk", c, logits) + self.d.to(logits.dtype)
