"""Helpers shared by the minimum-norm, l0 and query-based attacks of the catalogue.

Minimum-norm attacks (C&W, DeepFool, L-BFGS, Boundary) search for the smallest perturbation that
changes the decision; the threat's ``eps`` is the ceiling of that search: a point is only kept as
the answer when it lies inside the threat set.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from advrobust.core.threat import LpBall
from advrobust.errors import InvalidInputError, InvalidThreatModelError

__all__ = [
    "already_adversarial",
    "check_finite_box",
    "check_query_outputs",
    "decision",
    "default_target",
    "flat_view",
    "to_probabilities",
]


def decision(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """(N,) bool: classified as ``target`` (targeted) or not as ``y`` (untargeted)."""
    pred = logits.argmax(dim=1)
    return pred == target if target is not None else pred != y


def already_adversarial(clean_logits: Tensor, y: Tensor, target: Tensor | None,
                        who: str) -> Tensor:
    """(N,) bool of samples whose clean point already succeeds; warns when there are any.

    Those samples are returned unchanged (norm 0, success) by the minimum-norm attacks.
    """
    done = decision(clean_logits, y, target)
    count = int(done.sum())
    if count:
        what = "classified as their target" if target is not None else "misclassified"
        warnings.warn(
            f"{who}: {count} of {done.numel()} samples are already {what} at the clean point; "
            "they are returned unchanged (norm 0, success) and flagged in "
            "info['already_adversarial'].", UserWarning, stacklevel=4)
    return done


def default_target(clean_logits: Tensor, y: Tensor) -> Tensor:
    """The most likely class other than ``y`` at the clean point, (N,)."""
    return clean_logits.scatter(1, y.unsqueeze(1), float("-inf")).argmax(dim=1)


def check_finite_box(threat: LpBall, who: str) -> None:
    """Raise unless the threat's input box is bounded on both sides."""
    if math.isinf(threat.lo) or math.isinf(threat.hi):
        raise InvalidThreatModelError(
            f"{who} needs a bounded input box (finite lo and hi) for its change of variables. "
            f"Got box=[{threat.lo:g}, {threat.hi:g}] instead.")


def check_query_outputs(clean_logits: Tensor, who: str) -> None:
    """Raise if the model's outputs cannot be class scores: fewer than two classes, or
    non-finite values (black-box attacks read nothing else than these outputs)."""
    if clean_logits.shape[1] < 2:
        raise InvalidInputError(
            f"{who} queries the model's outputs as class scores (logits or probabilities) and "
            f"needs at least 2 classes. Got outputs of shape {tuple(clean_logits.shape)}.")
    if not bool(torch.isfinite(clean_logits).all()):
        raise InvalidInputError(
            f"{who} queries the model's outputs as class scores (logits or probabilities), but "
            "they contain NaN or inf values.")


def to_probabilities(outputs: Tensor, outputs_are_probabilities: bool) -> Tensor:
    """Softmax of logits, or the outputs unchanged when they already are probabilities."""
    return outputs if outputs_are_probabilities else outputs.softmax(dim=1)


def flat_view(t: Tensor) -> Tensor:
    """(N, ...) -> (N, D) view."""
    return t.reshape(t.shape[0], -1)
