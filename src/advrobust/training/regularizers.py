"""Input-gradient regularisers: the first-order (total-variation) view of robust training.

For a small ball of radius eps in the norm ``p``, the worst-case loss is, to first order,

    max_{||d||_p <= eps} loss(x + d)  ~  loss(x) + eps * ||grad_x loss(x)||_q      (1/p + 1/q = 1)

so penalising the dual norm of the input gradient (the loss's total variation over the data) is
a cheap surrogate of adversarial training; penalising its maximum over the batch bounds the
loss's Lipschitz constant on the data. Both follow Finlay & Oberman, "Scaleable input gradient
regularization for adversarial robustness" (2019), and Finlay, Abbasi & Oberman (2018).

The gradient norm is computed by the paper's finite-difference trick: with the steepest-ascent
direction ``d`` of the gradient in the threat norm (detached; ``<grad, d> = ||grad||_q``),

    ||grad_x loss(x)||_q  ~  (loss(x + h d) - loss(x)) / h,

whose derivative w.r.t. the weights needs only ordinary backpropagation through two forward
passes. ``double_backprop=True`` differentiates the exact norm instead (``create_graph``), for
comparison; it costs a second-order backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.core._validation import check_bool, check_choice, check_float
from advrobust.core.threat import LpBall, Norm, lp_norm
from advrobust.errors import InvalidParameterError
from advrobust.training.objective import Objective

__all__ = ["Composite", "GradientNormPenalty", "LipschitzPenalty", "input_gradient_norm"]

_NORMS = ("linf", "l2", "l1")


def input_gradient_norm(model: nn.Module, x: Tensor, y: Tensor, norm: str | Norm = "l2", *,
                        method: str = "finite-difference", h: float = 1e-2
                        ) -> tuple[Tensor, Tensor]:
    """Per-sample loss and dual norm of its input gradient, differentiable w.r.t. the weights.

    Args:
        model: classifier returning logits; used in its current mode.
        x: inputs (N, ...).
        y: labels (N,).
        norm: the threat norm ``p``; the gradient is measured in its dual norm ``q``.
        method: ``"finite-difference"`` (Finlay & Oberman; no double backpropagation) or
            ``"double-backprop"`` (exact norm, second-order backward).
        h: Euclidean length of the finite-difference step.

    Returns:
        ``(loss, gnorm)``: per-sample cross-entropy (N,) at ``x`` and ``||grad_x loss||_q`` (N,).
    """
    p = Norm.parse(norm, owner="input_gradient_norm")
    check_choice(method, "method", "input_gradient_norm", ("finite-difference", "double-backprop"))
    check_float(h, "h", "input_gradient_norm", low=0.0, low_open=True)
    xr = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(xr), y, reduction="none")
    if method == "double-backprop":
        (grad,) = torch.autograd.grad(loss.sum(), xr, create_graph=True)
        return loss, lp_norm(grad, p.dual)
    (grad,) = torch.autograd.grad(loss.sum(), xr, retain_graph=True)
    # Any box works here: ascent_direction only uses the norm (the step leaves the data box).
    direction = LpBall(p, 0.0, lo=-float("inf"), hi=float("inf")).ascent_direction(grad.detach())
    # Step a Euclidean length h along d (whatever the norm), then rescale to <grad, d>.
    length = lp_norm(direction, Norm.L2).clamp_min(1e-12)
    step = direction * (h / length).reshape((-1,) + (1,) * (x.dim() - 1))
    loss_h = F.cross_entropy(model(x.detach() + step), y, reduction="none")
    return loss, (loss_h - loss) * length / h


def _check_common(owner: str, norm: str, h: float, double_backprop: bool,
                  base: Objective | None) -> None:
    check_choice(norm, "norm", owner, _NORMS)
    check_float(h, "h", owner, low=0.0, low_open=True)
    check_bool(double_backprop, "double_backprop", owner)
    if base is not None and not isinstance(base, Objective):
        raise InvalidParameterError(
            f"The 'base' parameter of {owner} must be an Objective or None. "
            f"Got {type(base).__name__} instead.")


class _GradientPenalty(Objective):
    """Shared body: ``base loss (clean CE if no base) + weight * reduce(||grad_x loss||_q)``."""

    norm: str
    h: float
    double_backprop: bool
    base: Objective | None

    def _weight(self) -> float:
        raise NotImplementedError(f"{type(self).__name__} does not implement _weight()")

    def _reduce(self, gnorm: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement _reduce()")

    def prepare(self, model: nn.Module, input_shape: Sequence[int]) -> None:
        """Delegate to ``base``."""
        if self.base is not None:
            self.base.prepare(model, input_shape)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: float) -> Tensor:
        method = "double-backprop" if self.double_backprop else "finite-difference"
        loss, gnorm = input_gradient_norm(model, x, y, self.norm, method=method, h=self.h)
        base = loss.mean() if self.base is None else self.base(model, x, y, progress)
        return base + self._weight() * self._reduce(gnorm)


class GradientNormPenalty(_GradientPenalty):
    """Total-variation regulariser ``E[loss(x)] + eps * E[||grad_x loss(x)||_q]``.

    Finlay & Oberman, "Scaleable input gradient regularization for adversarial robustness"
    (2019): the first-order expansion of the worst-case loss over an lp ball of radius ``eps``.

    Args:
        eps: radius of the ball the penalty stands for (its weight), >= 0.
        norm: threat norm ``p`` (``"linf"``, ``"l2"``, ``"l1"``); the gradient is measured in
            the dual norm (l1 for linf).
        h: finite-difference step.
        double_backprop: differentiate the exact gradient norm (slower) instead.
        base: objective the penalty is added to; None means cross-entropy on clean inputs.
    """

    def __init__(self, *, eps: float, norm: str = "linf", h: float = 1e-2,
                 double_backprop: bool = False, base: Objective | None = None) -> None:
        check_float(eps, "eps", "GradientNormPenalty", low=0.0)
        _check_common("GradientNormPenalty", norm, h, double_backprop, base)
        self.eps = eps
        self.norm = norm
        self.h = h
        self.double_backprop = double_backprop
        self.base = base

    def _weight(self) -> float:
        return float(self.eps)

    def _reduce(self, gnorm: Tensor) -> Tensor:
        return gnorm.mean()


class LipschitzPenalty(_GradientPenalty):
    """Lipschitz regulariser ``base + lam * max_i ||grad_x loss(x_i)||_q`` over the batch.

    Finlay, Abbasi & Oberman, "Improved robustness to adversarial examples using Lipschitz
    regularization of the loss" (2018): the largest input gradient on the data estimates the
    loss's Lipschitz constant. Combine with :class:`GradientNormPenalty` through ``base`` (the
    "tv-lip" defense).

    Args:
        lam: weight of the penalty, >= 0.
        norm: threat norm ``p``; the gradient is measured in the dual norm.
        h: finite-difference step.
        double_backprop: differentiate the exact gradient norm (slower) instead.
        base: objective the penalty is added to; None means cross-entropy on clean inputs.
    """

    def __init__(self, *, lam: float, norm: str = "l2", h: float = 1e-2,
                 double_backprop: bool = False, base: Objective | None = None) -> None:
        check_float(lam, "lam", "LipschitzPenalty", low=0.0)
        _check_common("LipschitzPenalty", norm, h, double_backprop, base)
        self.lam = lam
        self.norm = norm
        self.h = h
        self.double_backprop = double_backprop
        self.base = base

    def _weight(self) -> float:
        return float(self.lam)

    def _reduce(self, gnorm: Tensor) -> Tensor:
        return gnorm.amax()


class Composite(Objective):
    """Weighted sum of objectives: ``sum_k weights[k] * objectives[k](model, x, y, progress)``.

    Args:
        objectives: at least one :class:`Objective`.
        weights: one non-negative weight per objective (default all 1).
    """

    def __init__(self, *, objectives: Sequence[Objective],
                 weights: Sequence[float] | None = None) -> None:
        if len(objectives) == 0 or not all(isinstance(o, Objective) for o in objectives):
            raise InvalidParameterError(
                "The 'objectives' parameter of Composite must be a non-empty sequence of "
                f"Objective. Got {objectives!r} instead.")
        if weights is not None:
            if len(weights) != len(objectives):
                raise InvalidParameterError(
                    "The 'weights' parameter of Composite must have one weight per objective "
                    f"({len(objectives)}). Got {len(weights)} instead.")
            for w in weights:
                check_float(w, "weights", "Composite", low=0.0)
        self.objectives = tuple(objectives)
        self.weights = None if weights is None else tuple(weights)

    def prepare(self, model: nn.Module, input_shape: Sequence[int]) -> None:
        """Prepare every part."""
        for obj in self.objectives:
            obj.prepare(model, input_shape)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: float) -> Tensor:
        weights = self.weights or (1.0,) * len(self.objectives)
        terms = [w * obj(model, x, y, progress) for w, obj in zip(weights, self.objectives,
                                                                  strict=True)]
        return torch.stack(terms).sum()
