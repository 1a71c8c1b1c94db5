"""Gradient-norm detection of adversarial inputs.

Adversarial examples sit close to a decision boundary, where the loss is steep: the norm of
``grad_x CE(f(x), predicted label)`` is larger there than on clean inputs. The detector flags
inputs whose score exceeds a threshold calibrated on clean data to a target false-positive rate
(the course's gradient-based detector; cf. Hendrycks & Gimpel 2017 for calibrated scores).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.core._validation import check_choice, check_float, check_int
from advrobust.core.config import Configurable
from advrobust.core.modes import eval_mode
from advrobust.core.threat import Norm, lp_norm
from advrobust.errors import InvalidInputError, NotFittedError

__all__ = ["GradientNormDetector", "gradient_norm_score"]


def gradient_norm_score(model: nn.Module, x: Tensor, norm: str | Norm = "l2",
                        create_graph: bool = False) -> Tensor:
    """Per-sample ``||grad_x CE(f(x), argmax f(x))||`` (N,) with the model as it is.

    Args:
        model: classifier returning logits; run in its current mode (callers use eval mode).
        x: inputs (N, ...).
        norm: norm of the gradient.
        create_graph: keep the graph so the score can be differentiated w.r.t. ``x`` (used by
            evasive attacks).

    Returns:
        (N,) scores; with ``create_graph`` they carry a graph back to ``x``.
    """
    p = Norm.parse(norm, owner="gradient_norm_score")
    xr = x if (create_graph and x.requires_grad) else x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xr)
        loss = F.cross_entropy(logits, logits.argmax(dim=1).detach(), reduction="sum")
        (grad,) = torch.autograd.grad(loss, xr, create_graph=create_graph)
    return lp_norm(grad, p)


class GradientNormDetector(Configurable):
    """Flags inputs whose loss-gradient norm exceeds a threshold calibrated on clean data.

    ``fit(model, clean_x)`` stores the model and sets ``threshold_`` to the ``1 - fpr`` quantile
    of the clean scores, so about a fraction ``fpr`` of clean inputs is flagged.

    Args:
        norm: norm of the input gradient (``"l2"``, ``"linf"``, ``"l1"``).
        fpr: target false-positive rate on clean inputs, in (0, 1).
        batch_size: inputs scored per backward pass.

    Attributes (after ``fit``):
        model_: the model the detector guards (used in eval mode, never modified).
        threshold_: the calibrated threshold.
        clean_scores_: the sorted clean scores used for calibration.

    Example:
        >>> det = GradientNormDetector(fpr=0.05).fit(model, x_clean)
        >>> flagged = det.predict(x_suspect)
    """

    def __init__(self, *, norm: str = "l2", fpr: float = 0.05, batch_size: int = 256) -> None:
        self.norm = check_choice(norm, "norm", "GradientNormDetector", ("l2", "linf", "l1"))
        self.fpr = check_float(fpr, "fpr", "GradientNormDetector", low=0.0, high=1.0,
                               low_open=True, high_open=True)
        self.batch_size = check_int(batch_size, "batch_size", "GradientNormDetector", low=1)
        self.model_: nn.Module | None = None
        self.threshold_: float | None = None
        self.clean_scores_: Tensor | None = None

    def fit(self, model: nn.Module, clean_x: Tensor) -> GradientNormDetector:
        """Calibrate the threshold on clean inputs (N, ...); returns ``self``."""
        if not torch.is_tensor(clean_x) or clean_x.dim() < 2 or clean_x.shape[0] < 2:
            raise InvalidInputError(
                "'clean_x' must be a batch of at least 2 clean inputs shaped (N, ...). Got "
                f"{tuple(clean_x.shape) if torch.is_tensor(clean_x) else type(clean_x).__name__}"
                " instead.")
        scores = self._scores(model, clean_x)
        self.model_ = model
        self.clean_scores_ = scores.sort().values
        self.threshold_ = float(torch.quantile(scores.double(), 1.0 - self.fpr))
        return self

    def _scores(self, model: nn.Module, x: Tensor) -> Tensor:
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise InvalidInputError(
                f"'x' must be a floating-point torch.Tensor. Got {type(x).__name__} instead.")
        if not bool(torch.isfinite(x).all()):
            raise InvalidInputError("'x' contains NaN or inf values.")
        with eval_mode(model, who="GradientNormDetector"):
            parts = [gradient_norm_score(model, chunk, self.norm).detach()
                     for chunk in x.split(self.batch_size)]
        return torch.cat(parts)

    def _check_fitted(self) -> nn.Module:
        if self.model_ is None or self.threshold_ is None:
            raise NotFittedError(
                "This GradientNormDetector is not fitted yet: call fit(model, clean_x) to "
                "calibrate its threshold before score, predict or evaluation.")
        return self.model_

    def score(self, x: Tensor) -> Tensor:
        """Gradient-norm scores (N,) of inputs (N, ...)."""
        return self._scores(self._check_fitted(), x)

    def predict(self, x: Tensor) -> Tensor:
        """(N,) bool: True where the input is flagged as adversarial."""
        self._check_fitted()
        return self.score(x) > self.threshold_  # type: ignore[operator]

    def differentiable_score(self, x: Tensor) -> Tensor:
        """Scores (N,) differentiable w.r.t. ``x`` (for evasive attacks); the model must already
        be in the mode the attack uses (eval)."""
        return gradient_norm_score(self._check_fitted(), x, self.norm, create_graph=True)
