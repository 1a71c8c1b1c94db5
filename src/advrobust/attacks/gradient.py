"""Gradient attacks: FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018).

Both ascend a loss by normalised steepest-ascent steps of the threat's norm (``sign`` for
linf, the unit gradient for l2, a sparse unit step for l1; see :meth:`LpBall.ascent_direction`)
and project back onto the threat set after every step, so every iterate is feasible.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from advrobust.attacks._objective import (
    BestIterate,
    attack_score,
    make_loss,
    parse_losses,
)
from advrobust.attacks.base import Attack, AttackOutput, Oracle
from advrobust.core._validation import check_bool, check_float, check_int, check_seed
from advrobust.core.result import AttackResult
from advrobust.core.threat import LpBall, Norm

__all__ = ["FGSM", "PGD", "fgsm", "pgd"]


class FGSM(Attack):
    """Fast gradient sign method: one steepest-ascent step of length ``eps``.

    ``x_adv = proj_S(x + eps * d)``, with ``d`` the normalised ascent direction of the loss at
    ``x`` (``sign(grad)`` for linf: the exact optimum of a linear model). Untargeted runs ascend
    the cross-entropy (or the negative margin); targeted runs ascend the targeted objective.
    Costs one forward and one backward pass. Goodfellow, Shlens & Szegedy, "Explaining and
    harnessing adversarial examples", ICLR 2015.

    Args:
        loss: untargeted loss, ``"ce"`` (cross-entropy) or ``"margin"`` (``-margin``).
        targeted_loss: targeted objective, ``"target-vs-true"`` (``f_target - f_y``) or
            ``"target-vs-all"`` (``f_target - sum_{t != target} f_t``).
        l1_sparsity: for l1 threats, the fraction of coordinates a step moves (0: the single
            largest-gradient coordinate, the exact l1 steepest ascent).
    """

    cli_name: ClassVar[str] = "fgsm"

    def __init__(self, *, loss: str = "ce", targeted_loss: str = "target-vs-true",
                 l1_sparsity: float = 0.0) -> None:
        self.loss = loss
        self.targeted_loss = targeted_loss
        self.l1_sparsity = l1_sparsity
        self._loss, self._targeted = parse_losses(loss, targeted_loss, "FGSM")
        self._sparsity = check_float(l1_sparsity, "l1_sparsity", "FGSM", low=0.0, high=1.0)

    def _run(self, oracle: Oracle, x: Tensor, y: Tensor, threat: LpBall, target: Tensor | None,
             generator: torch.Generator | None, clean_logits: Tensor) -> AttackOutput:
        loss_fn = make_loss(self._loss, self._targeted, y, target)
        _, _, grad = oracle.value_and_grad(x, loss_fn)
        step = threat.ascent_direction(grad, x, self._sparsity) * threat.eps
        return AttackOutput(threat.project(x, x + step))


class PGD(Attack):
    """Projected gradient descent on the loss, with random restarts; the best point is kept.

    Each restart starts at a random point of the threat set (``random_start``; otherwise the
    first restart starts at ``x`` and later ones at random points) and takes ``steps`` steps
    ``x <- proj_S(x + step_size * d)``. For every sample the attack returns the lowest-margin
    point it evaluated over all steps and restarts (for targeted runs: target reached first,
    then the smallest ``max_{t != target} f_t - f_target``), the clean input included. The
    margins come from the same forward pass that gives each step's gradient, so keeping the
    best point costs no extra model evaluation (one forward per restart scores the last
    iterate). Madry et al., "Towards deep learning models resistant to adversarial attacks",
    ICLR 2018; l1 steps as in SLIDE, Tramer & Boneh, NeurIPS 2019.

    Args:
        steps: gradient steps per restart, >= 1.
        step_size: step length in the threat's norm; ``None`` means ``2.5 * eps / steps``
            (Madry et al.), so a run can cross the ball a little more than once.
        restarts: number of runs; the per-sample best over all of them is returned.
        random_start: start the first run at a random point of the set instead of ``x``.
        loss: untargeted loss, ``"ce"`` or ``"margin"``.
        targeted_loss: targeted objective, ``"target-vs-true"`` or ``"target-vs-all"``.
        l1_sparsity: for l1 threats, the fraction of coordinates each step moves (0: the single
            largest; default 0.01, SLIDE's 99th-percentile rule).

    Cost: ``restarts * (steps + 1)`` forward and ``restarts * steps`` backward passes.
    """

    cli_name: ClassVar[str] = "pgd"

    def __init__(self, *, steps: int = 40, step_size: float | None = None, restarts: int = 1,
                 random_start: bool = True, loss: str = "ce",
                 targeted_loss: str = "target-vs-true", l1_sparsity: float = 0.01) -> None:
        self.steps = steps
        self.step_size = step_size
        self.restarts = restarts
        self.random_start = random_start
        self.loss = loss
        self.targeted_loss = targeted_loss
        self.l1_sparsity = l1_sparsity
        check_int(steps, "steps", "PGD", low=1)
        if step_size is not None:
            check_float(step_size, "step_size", "PGD", low=0.0, low_open=True)
        check_int(restarts, "restarts", "PGD", low=1)
        check_bool(random_start, "random_start", "PGD")
        self._loss, self._targeted = parse_losses(loss, targeted_loss, "PGD")
        self._sparsity = check_float(l1_sparsity, "l1_sparsity", "PGD", low=0.0, high=1.0)

    def resolved_step_size(self, threat: LpBall) -> float:
        """The step length used against ``threat`` (``2.5 * eps / steps`` by default)."""
        if self.step_size is None:
            return 2.5 * threat.eps / self.steps
        return float(self.step_size)

    def _run(self, oracle: Oracle, x: Tensor, y: Tensor, threat: LpBall, target: Tensor | None,
             generator: torch.Generator | None, clean_logits: Tensor) -> AttackOutput:
        loss_fn = make_loss(self._loss, self._targeted, y, target)
        alpha = self.resolved_step_size(threat)
        best = BestIterate(x, attack_score(clean_logits, y, target))
        for restart in range(self.restarts):
            random = self.random_start or restart > 0
            xk = threat.sample(x, generator) if random else x
            for _ in range(self.steps):
                logits, _, grad = oracle.value_and_grad(xk, loss_fn)
                best.update(xk, attack_score(logits, y, target))
                step = threat.ascent_direction(grad, xk, self._sparsity)
                xk = threat.project(x, xk + alpha * step)
            best.update(xk, attack_score(oracle(xk), y, target))
        return AttackOutput(best.x, exhausted=best.score >= 0, info={"step_size": alpha})


def _generator(seed: int | None, x: Tensor) -> torch.Generator | None:
    if seed is None:
        return None
    return torch.Generator(device=x.device).manual_seed(check_seed(seed, "seed", "pgd"))


def fgsm(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str | Norm = "linf",
         lo: float = 0.0, hi: float = 1.0, target: Tensor | None = None, loss: str = "ce",
         targeted_loss: str = "target-vs-true") -> AttackResult:
    """Run :class:`FGSM` in the threat set ``LpBall(norm, eps, lo, hi)``.

    Args:
        model: classifier returning logits (N, classes).
        x: inputs (N, ...) in ``[lo, hi]``; y: labels (N,); target: optional classes (N,).
        eps, norm, lo, hi: the threat set. Other arguments: see :class:`FGSM`.

    Returns:
        AttackResult re-checked through ``model``.
    """
    attack = FGSM(loss=loss, targeted_loss=targeted_loss)
    return attack(model, x, y, LpBall(Norm.parse(norm), eps, lo, hi), target=target)


def pgd(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str | Norm = "linf",
        steps: int = 40, step_size: float | None = None, restarts: int = 1,
        random_start: bool = True, loss: str = "ce", targeted_loss: str = "target-vs-true",
        lo: float = 0.0, hi: float = 1.0, target: Tensor | None = None,
        seed: int | None = 0) -> AttackResult:
    """Run :class:`PGD` in the threat set ``LpBall(norm, eps, lo, hi)``.

    Args:
        model: classifier returning logits (N, classes).
        x: inputs (N, ...) in ``[lo, hi]``; y: labels (N,); target: optional classes (N,).
        eps, norm, lo, hi: the threat set. seed: seeds a fresh ``torch.Generator`` for the
            random starts (``None``: torch's default generator). Others: see :class:`PGD`.

    Returns:
        AttackResult re-checked through ``model``.
    """
    attack = PGD(steps=steps, step_size=step_size, restarts=restarts, random_start=random_start,
                 loss=loss, targeted_loss=targeted_loss)
    return attack(model, x, y, LpBall(Norm.parse(norm), eps, lo, hi), target=target,
                  generator=_generator(seed, x))
