"""Auto-PGD (APGD) and its targeted DLR variant (Croce & Hein, ICML 2020).

"Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
attacks". APGD is PGD with momentum whose step size needs no tuning: it starts at ``2 eps`` and
is halved at fixed checkpoints whenever progress stalls (condition 1: too few steps increased the
loss; condition 2: the step size was not cut at the previous checkpoint and the best loss did not
improve since), each cut restarting from the best point found so far.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor

from advrobust.attacks.base import Attack, AttackOutput, Oracle
from advrobust.core._validation import check_bool, check_choice, check_float, check_int
from advrobust.core.spec import cross_entropy_loss, dlr_loss, margin
from advrobust.core.threat import LpBall, Norm
from advrobust.errors import InvalidInputError

__all__ = ["APGD", "APGDTargeted", "apgd_checkpoints", "dlr_targeted_loss"]

LossFn = Callable[[Tensor], Tensor]
_MOMENTUM = 0.75  # alpha of the paper's update x_{k+1} = x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1})


def apgd_checkpoints(steps: int) -> list[int]:
    """Iterations ``w_j = ceil(p_j * steps)`` at which APGD may halve its step size.

    ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` (Croce & Hein 2020).
    """
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    points = sorted({math.ceil(round(q * steps, 6)) for q in p if q <= 1.0})
    return [w for w in points if 0 < w <= steps]


def dlr_targeted_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR loss to maximise, (N,): ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``.

    With fewer than four classes the third-ranked logit stands in for the fourth.
    """
    ranked, _ = logits.sort(dim=1, descending=True)
    k = logits.shape[1]
    third, fourth = ranked[:, min(2, k - 1)], ranked[:, min(3, k - 1)]
    scale = (ranked[:, 0] - (third + fourth) / 2).clamp_min(1e-12)
    diff = logits.gather(1, y.unsqueeze(1)) - logits.gather(1, target.unsqueeze(1))
    return -diff.squeeze(1) / scale


def _bview(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


class _APGDBase(Attack):
    """The APGD loop shared by :class:`APGD` and :class:`APGDTargeted`."""

    norms: ClassVar[frozenset[Norm]] = frozenset({Norm.LINF, Norm.L2})
    steps: int
    restarts: int
    rho: float
    random_start: bool

    def _check_common(self, steps: int, restarts: int, rho: float, random_start: bool) -> None:
        owner = type(self).__name__
        check_int(steps, "steps", owner, low=1)
        check_int(restarts, "restarts", owner, low=1)
        check_float(rho, "rho", owner, low=0.0, high=1.0)
        check_bool(random_start, "random_start", owner)

    def _single_run(self, oracle: Oracle, x: Tensor, threat: LpBall, loss_fn: LossFn,
                    score_fn: LossFn, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """One APGD run of ``self.steps`` iterations; returns (best point, its score) per sample.

        ``loss_fn`` (logits -> (N,)) is maximised; ``score_fn`` (logits -> (N,), negative means
        success) picks the per-sample worst case that is returned.
        """
        steps, rho = self.steps, self.rho
        x_adv = threat.sample(x, generator) if self.random_start else x.clone()
        logits, loss, grad = oracle.value_and_grad(x_adv, loss_fn)
        best_adv, best_score = x_adv, score_fn(logits)
        x_max, loss_max, grad_max = x_adv, loss, grad
        eta = torch.full((x.shape[0],), 2.0 * threat.eps, dtype=x.dtype, device=x.device)
        x_prev, loss_prev = x_adv, loss
        increases = torch.zeros_like(loss)
        checkpoints, last_w = apgd_checkpoints(steps), 0
        loss_max_at_last, cut_at_last = loss_max.clone(), torch.ones_like(loss, dtype=torch.bool)
        for k in range(steps):
            z = threat.project(x, x_adv + _bview(eta, x) * threat.ascent_direction(grad))
            if k > 0:
                step = _MOMENTUM * (z - x_adv) + (1 - _MOMENTUM) * (x_adv - x_prev)
                z = threat.project(x, x_adv + step)
            x_prev, x_adv = x_adv, z
            logits, loss, grad = oracle.value_and_grad(x_adv, loss_fn)
            score = score_fn(logits)
            better = score < best_score
            best_adv = torch.where(_bview(better, x), x_adv, best_adv)
            best_score = torch.minimum(score, best_score)
            increases += (loss > loss_prev).to(loss.dtype)
            loss_prev = loss
            up = _bview(loss > loss_max, x)
            x_max, grad_max = torch.where(up, x_adv, x_max), torch.where(up, grad, grad_max)
            loss_max = torch.maximum(loss, loss_max)
            if k + 1 in checkpoints:
                w = k + 1
                cond1 = increases < rho * (w - last_w)
                cond2 = ~cut_at_last & (loss_max <= loss_max_at_last)
                cut = cond1 | cond2
                eta = torch.where(cut, eta / 2, eta)
                cut_b = _bview(cut, x)
                x_adv, grad = torch.where(cut_b, x_max, x_adv), torch.where(cut_b, grad_max, grad)
                x_prev = torch.where(cut_b, x_max, x_prev)
                loss_prev = torch.where(cut, loss_max, loss_prev)
                increases.zero_()
                loss_max_at_last, cut_at_last, last_w = loss_max.clone(), cut, w
        return best_adv, best_score

    def _restarts(self, oracle: Oracle, x: Tensor, threat: LpBall,
                  loss_fn: Callable[[Tensor], LossFn], score_fn: Callable[[Tensor], LossFn],
                  best: Tensor, best_score: Tensor, generator: torch.Generator | None) -> None:
        """Run ``self.restarts`` APGD runs on the still-unbroken samples, updating in place.

        ``loss_fn(index)`` and ``score_fn(index)`` build the per-sample functions for the subset
        ``index`` of the batch.
        """
        for _ in range(self.restarts):
            idx = (best_score >= 0).nonzero().flatten()
            if idx.numel() == 0:
                return
            adv, score = self._single_run(oracle, x[idx], threat, loss_fn(idx),
                                          score_fn(idx), generator)
            better = score < best_score[idx]
            best[idx[better]] = adv[better]
            best_score[idx] = torch.minimum(best_score[idx], score)


def _score_fn(y: Tensor, target: Tensor | None) -> Callable[[Tensor], LossFn]:
    """Per-subset score (negative = success): untargeted margin, or ``max_{j!=t} f_j - f_t``."""
    if target is None:
        return lambda idx: (lambda logits: margin(logits, y[idx]))
    return lambda idx: (lambda logits: -margin(logits, target[idx]))


class APGD(_APGDBase):
    """Auto-PGD with the cross-entropy or DLR loss (Croce & Hein 2020), linf and l2.

    Untargeted, the attack maximises CE or DLR of the true class; given ``target`` it
    maximises ``-CE(target)`` or the targeted DLR loss. Each restart starts from a random point
    of the set and runs only on samples not yet broken; the per-sample worst case (lowest margin)
    over all iterates and restarts is returned.

    Args:
        loss: ``"ce"`` (cross-entropy) or ``"dlr"`` (difference of logits ratio; needs >= 3
            classes).
        steps: iterations per restart (the paper uses 100).
        restarts: random restarts (1 = the AutoAttack setting of APGD-CE).
        rho: fraction of loss-increasing steps below which the step size is halved (0.75).
        random_start: start from a uniform point of the set (True) or from the clean input.

    Shapes: x (N, ...), y (N,), target (N,) or None; returns x_adv (N, ...).
    """

    cli_name: ClassVar[str] = "apgd"
    targeted: ClassVar[bool] = True

    def __init__(self, *, loss: str = "ce", steps: int = 100, restarts: int = 1,
                 rho: float = 0.75, random_start: bool = True) -> None:
        self.loss = check_choice(loss, "loss", "APGD", ("ce", "dlr"))
        self.steps = steps
        self.restarts = restarts
        self.rho = rho
        self.random_start = random_start
        self._check_common(steps, restarts, rho, random_start)

    def _run(self, oracle: Oracle, x: Tensor, y: Tensor, threat: LpBall, target: Tensor | None,
             generator: torch.Generator | None, clean_logits: Tensor) -> AttackOutput:
        if self.loss == "dlr" and clean_logits.shape[1] < 3:
            raise InvalidInputError(
                f"APGD with loss='dlr' needs a model with >= 3 classes; it has "
                f"{clean_logits.shape[1]}. Use loss='ce'.")
        loss_fn = _loss_builder(self.loss, y, target)
        score_fn = _score_fn(y, target)
        best, best_score = x.clone(), score_fn(torch.arange(x.shape[0]))(clean_logits)
        self._restarts(oracle, x, threat, loss_fn, score_fn, best, best_score, generator)
        return AttackOutput(best, exhausted=best_score >= 0)


def _loss_builder(loss: str, y: Tensor, target: Tensor | None
                  ) -> Callable[[Tensor], LossFn]:
    """Build the per-subset loss to maximise for APGD's ``loss`` choice."""
    def build(idx: Tensor) -> LossFn:
        yi = y[idx]
        if target is None:
            if loss == "ce":
                return lambda logits: cross_entropy_loss(logits, yi)
            return lambda logits: dlr_loss(logits, yi)
        ti = target[idx]
        if loss == "ce":
            return lambda logits: -cross_entropy_loss(logits, ti)
        return lambda logits: dlr_targeted_loss(logits, yi, ti)
    return build


class APGDTargeted(_APGDBase):
    """APGD-T: APGD on the targeted DLR loss, cycling over the top classes (Croce & Hein 2020).

    Without ``target`` (the AutoAttack use) the attack is untargeted: for each of the
    ``n_target_classes`` classes ranked 2nd, 3rd, ... by the clean logits it runs ``restarts``
    APGD runs that push that class above the true one, on the samples not yet misclassified.
    With ``target`` it runs only towards the given class and succeeds when the model predicts it.

    Args:
        steps: iterations per run (100 in AutoAttack).
        n_target_classes: how many top-ranked wrong classes to try (9 in AutoAttack); clipped to
            the number of classes minus one.
        restarts: runs per target class.
        rho: step-size-halving threshold (0.75).
        random_start: start each run from a uniform point of the set.

    Shapes: x (N, ...), y (N,), target (N,) or None; returns x_adv (N, ...).
    """

    cli_name: ClassVar[str] = "apgd-t"
    targeted: ClassVar[bool] = True

    def __init__(self, *, steps: int = 100, n_target_classes: int = 9, restarts: int = 1,
                 rho: float = 0.75, random_start: bool = True) -> None:
        self.steps = steps
        self.n_target_classes = n_target_classes
        self.restarts = restarts
        self.rho = rho
        self.random_start = random_start
        self._check_common(steps, restarts, rho, random_start)
        check_int(n_target_classes, "n_target_classes", "APGDTargeted", low=1)

    def _run(self, oracle: Oracle, x: Tensor, y: Tensor, threat: LpBall, target: Tensor | None,
             generator: torch.Generator | None, clean_logits: Tensor) -> AttackOutput:
        score_fn = _score_fn(y, target)
        best, best_score = x.clone(), score_fn(torch.arange(x.shape[0]))(clean_logits)
        if target is not None:
            loss_fn = _loss_builder("dlr", y, target)
            self._restarts(oracle, x, threat, loss_fn, score_fn, best, best_score, generator)
            return AttackOutput(best, exhausted=best_score >= 0)
        ranking = clean_logits.argsort(dim=1, descending=True)
        n_classes = min(self.n_target_classes, clean_logits.shape[1] - 1)
        for rank in range(1, n_classes + 1):
            loss_fn = _loss_builder("dlr", y, ranking[:, rank])
            self._restarts(oracle, x, threat, loss_fn, score_fn, best, best_score, generator)
        return AttackOutput(best, exhausted=best_score >= 0)
