"""Universal adversarial perturbations: one perturbation ``v`` that fools a model on most inputs.

Moosavi-Dezfooli, Fawzi, Fawzi and Frossard, "Universal adversarial perturbations", CVPR 2017.
``method="deepfool"`` is the paper's algorithm: sweep the data; wherever ``x + v`` is still
classified as ``x``, add the minimal (DeepFool) step that sends ``x + v`` across the boundary and
project ``v`` back onto the lp ball; repeat passes until the fooling rate reaches the goal.
``method="sgd"`` is the course's stochastic-gradient variant: maximise the mean cross-entropy of
``x + v`` against the clean predictions over mini-batches, projecting ``v`` onto the ball after
every step. ``method="lagrangian"`` is its penalised (Lagrangian) form: the size of ``v`` also
enters the objective, ``mean CE(x + v) - penalty * ||v||_2^2``, so the ascent trades fooling
against energy inside the ball instead of only at its surface (``penalty=0`` is ``"sgd"``).

The fooling rate is the paper's: the fraction of inputs whose predicted label changes,
``k(clip(x + v)) != k(x)``. Saving (npz), loading and plotting helpers live in
:mod:`advrobust.attacks._universal_io`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.attacks.base import Attack, AttackOutput, Oracle
from advrobust.attacks.deepfool import DeepFool
from advrobust.core._validation import check_choice, check_float, check_int
from advrobust.core.checks import check_batch
from advrobust.core.modes import eval_mode
from advrobust.core.threat import LpBall, Norm
from advrobust.errors import InvalidInputError, InvalidThreatModelError

__all__ = ["UniversalPerturbation", "UniversalResult", "apply_universal", "fooling_rate"]

_CHUNK = 1024  # samples per forward when measuring a fooling rate


@dataclass(frozen=True)
class UniversalResult:
    """A universal perturbation and how well it fooled its training set.

    Attributes:
        perturbation: (C, H, W) (the shape of one input) perturbation ``v`` in the threat's ball.
        fooling_rate_train: fraction of the training inputs whose label ``v`` changes.
        history: training fooling rate after each pass over the data.
        threat: the threat ``v`` was fitted for (norm, eps, input box).
        method: ``"deepfool"``, ``"sgd"`` or ``"lagrangian"``.
    """

    perturbation: Tensor
    fooling_rate_train: float
    history: tuple[float, ...]
    threat: LpBall
    method: str


def apply_universal(x: Tensor, perturbation: Tensor, threat: LpBall) -> Tensor:
    """``clip_box(x + v)`` for a batch x (N, ...) and v shaped like one input.

    The clip moves coordinates towards ``x``, so the result stays in the threat set of ``x``
    whenever ``v`` is in the ball.
    """
    if tuple(perturbation.shape) != tuple(x.shape[1:]):
        raise InvalidInputError(
            f"The perturbation must have the shape of one input {tuple(x.shape[1:])}. Got "
            f"{tuple(perturbation.shape)} instead.")
    return threat.clip_box(x + perturbation.to(x).unsqueeze(0))


def _predict(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i:i + _CHUNK]).argmax(1) for i in range(0, x.shape[0], _CHUNK)])


def fooling_rate(model: nn.Module, x: Tensor, perturbation: Tensor, threat: LpBall) -> float:
    """Fraction of inputs x (N, ...) whose predicted label changes under ``v``.

    The model runs in eval mode (restored afterwards); ``v`` must lie in the threat's ball.
    """
    with eval_mode(model, who="fooling_rate"):
        clean = _predict(model, x)
        adv = _predict(model, apply_universal(x, perturbation, threat))
    return float((clean != adv).float().mean())


def _project_ball(v: Tensor, threat: LpBall) -> Tensor:
    """Project ``v`` (1, ...) onto the threat's lp ball around 0 (no input box)."""
    free = LpBall(threat.norm, threat.eps, -math.inf, math.inf)
    return free.project(torch.zeros_like(v), v)


class UniversalPerturbation(Attack):
    """Universal adversarial perturbation (Moosavi-Dezfooli et al. 2017); also an attack.

    ``fit(model, x, y, threat)`` learns one ``v`` for a dataset; :func:`fooling_rate` measures it
    on held-out data. Called as an attack, the perturbation is fitted on the batch itself and
    applied to it (``info["universal"]`` holds the :class:`UniversalResult`); to apply a
    perturbation learned elsewhere use :meth:`as_attack`.

    Args:
        method: ``"deepfool"`` (the paper's algorithm; linf and l2 threats), ``"sgd"``
            (projected stochastic gradient ascent on the cross-entropy; any norm) or
            ``"lagrangian"`` (the same on the cross-entropy minus ``penalty * ||v||_2^2``).
        max_passes: maximum passes over the data.
        target_fooling_rate: stop once the training fooling rate reaches it (the paper's
            ``1 - delta``).
        overshoot: DeepFool's push past the boundary.
        deepfool_steps: DeepFool iterations per sample.
        batch_size: samples per update. With ``"deepfool"``, 1 is the paper's sequential
            algorithm; larger batches add the mean DeepFool step of the batch's unfooled samples.
        step_size: ``"sgd"`` / ``"lagrangian"`` step in the threat's norm (None: ``eps / 4``).
        penalty: ``"lagrangian"``: weight of ``||v||_2^2`` in the objective, >= 0.

    Shapes: x (N, C, H, W) or any (N, ...); the perturbation has the shape of one input.
    """

    cli_name: ClassVar[str] = "universal"
    targeted: ClassVar[bool] = False

    def __init__(self, *, method: str = "deepfool", max_passes: int = 5,
                 target_fooling_rate: float = 0.8, overshoot: float = 0.02,
                 deepfool_steps: int = 50, batch_size: int = 1,
                 step_size: float | None = None, penalty: float = 0.1) -> None:
        owner = "UniversalPerturbation"
        self.method = check_choice(method, "method", owner, ("deepfool", "sgd", "lagrangian"))
        self.max_passes = check_int(max_passes, "max_passes", owner, low=1)
        self.target_fooling_rate = check_float(target_fooling_rate, "target_fooling_rate", owner,
                                               low=0.0, high=1.0)
        self.overshoot = check_float(overshoot, "overshoot", owner, low=0.0)
        self.deepfool_steps = check_int(deepfool_steps, "deepfool_steps", owner, low=1)
        self.batch_size = check_int(batch_size, "batch_size", owner, low=1)
        self.step_size = (None if step_size is None else
                          check_float(step_size, "step_size", owner, low=0.0, low_open=True))
        self.penalty = check_float(penalty, "penalty", owner, low=0.0)

    # ------------------------------------------------------------------ public API
    def fit(self, model: nn.Module, x: Tensor, y: Tensor, threat: LpBall,
            generator: torch.Generator | None = None) -> UniversalResult:
        """Learn a universal perturbation on ``x`` (N, ...) with labels ``y`` (N,).

        The model runs in eval mode and is restored afterwards. ``y`` is validated; the fooling
        objective uses the model's clean predictions, as in the paper.

        Raises:
            InvalidThreatModelError: ``method="deepfool"`` with an l1 threat.
            InvalidInputError: malformed x / y.
        """
        if self.method == "deepfool" and threat.norm is Norm.L1:
            raise InvalidThreatModelError(
                "UniversalPerturbation(method='deepfool') supports linf and l2 threats; use "
                "method='sgd' for l1.")
        with eval_mode(model, who="UniversalPerturbation"):
            check_batch(model, x, y, threat, who="UniversalPerturbation")
            clean = _predict(model, x)
            v = best = torch.zeros_like(x[:1])
            history: list[float] = []
            for _ in range(self.max_passes):
                order = torch.randperm(x.shape[0], generator=generator).to(x.device)
                for start in range(0, x.shape[0], self.batch_size):
                    idx = order[start:start + self.batch_size]
                    v = self._update(model, x[idx], clean[idx], v, threat)
                adv = _predict(model, apply_universal(x, v[0], threat))
                history.append(float((adv != clean).float().mean()))
                if history[-1] >= max(history):
                    best = v
                if history[-1] >= self.target_fooling_rate:
                    break
        # The rate is not monotone over passes: keep the pass that fooled the most.
        return UniversalResult(best[0].detach(), max(history), tuple(history), threat,
                               self.method)

    @staticmethod
    def as_attack(perturbation: Tensor | UniversalResult) -> FixedPerturbation:
        """An :class:`Attack` adding a fixed (learned) perturbation to every input."""
        v = perturbation.perturbation if isinstance(perturbation, UniversalResult) \
            else perturbation
        return FixedPerturbation(perturbation=v)

    # ------------------------------------------------------------------ steps
    def _update(self, model: nn.Module, xb: Tensor, kb: Tensor, v: Tensor,
                threat: LpBall) -> Tensor:
        xv = apply_universal(xb, v[0], threat)
        if self.method != "deepfool":
            return self._sgd_step(model, xb, kb, v, threat)
        with torch.no_grad():
            still = model(xv).argmax(1) == kb
        if not bool(still.any()):
            return v
        step = self._deepfool_step(model, xv[still], kb[still], threat)
        return _project_ball(v + step, threat)

    def _deepfool_step(self, model: nn.Module, xv: Tensor, kb: Tensor,
                       threat: LpBall) -> Tensor:
        """Mean minimal DeepFool step (1, ...) sending the points ``xv`` across the boundary."""
        span = threat.hi - threat.lo
        radius = span * xv[0].numel() if math.isfinite(span) else 1e6
        wide = LpBall(threat.norm, radius, threat.lo, threat.hi)
        attack = DeepFool(norm=threat.norm.value, overshoot=self.overshoot,
                          steps=self.deepfool_steps)
        res = attack(model, xv, kb, wide)
        delta = (res.x_adv - xv) * res.success.reshape((-1,) + (1,) * (xv.dim() - 1))
        return delta.mean(dim=0, keepdim=True)

    def _sgd_step(self, model: nn.Module, xb: Tensor, kb: Tensor, v: Tensor,
                  threat: LpBall) -> Tensor:
        """One projected ascent step on the mean cross-entropy of ``x + v`` (v shared), minus
        ``penalty * ||v||_2^2`` for the Lagrangian variant."""
        vr = v.detach().requires_grad_(True)
        weight = self.penalty if self.method == "lagrangian" else 0.0
        with torch.enable_grad():
            loss = F.cross_entropy(model(threat.clip_box(xb + vr)), kb) - weight * vr.pow(2).sum()
            (grad,) = torch.autograd.grad(loss, vr)
        step = self.step_size if self.step_size is not None else threat.eps / 4
        return _project_ball(v + step * threat.ascent_direction(grad), threat)

    # ------------------------------------------------------------------ as an attack
    def _run(self, oracle: Oracle, x: Tensor, y: Tensor, threat: LpBall, target: Tensor | None,
             generator: torch.Generator | None, clean_logits: Tensor) -> AttackOutput:
        result = self.fit(oracle.model, x, y, threat, generator)
        x_adv = apply_universal(x, result.perturbation, threat)
        # The passes ran out before the goal was reached: unbroken samples are budget-limited.
        out_of_passes = result.fooling_rate_train < self.target_fooling_rate
        exhausted = (oracle(x_adv).argmax(1) == y) & out_of_passes
        return AttackOutput(x_adv, exhausted=exhausted,
                            info={"universal": result,
                                  "fooling_rate_train": result.fooling_rate_train})


class FixedPerturbation(Attack):
    """Add one fixed perturbation ``v`` (shape of one input) to every input of the batch.

    Used to evaluate a universal perturbation on new data as an attack. ``v`` must lie in the
    threat's ball; the result is ``clip_box(x + v)``.

    Args:
        perturbation: tensor shaped like one input (C, H, W), or the path of an ``.npz`` file
            written by :func:`advrobust.attacks.save_universal`.

    Raises:
        InvalidThreatModelError: ``v`` is larger than the threat's eps.
    """

    cli_name: ClassVar[str] = "universal-apply"
    targeted: ClassVar[bool] = False

    def __init__(self, *, perturbation: Tensor | str) -> None:
        self.perturbation = perturbation

    def _tensor(self) -> Tensor:
        if isinstance(self.perturbation, Tensor):
            return self.perturbation
        from advrobust.attacks._universal_io import load_universal

        return load_universal(self.perturbation).perturbation

    def _run(self, oracle: Oracle, x: Tensor, y: Tensor, threat: LpBall, target: Tensor | None,
             generator: torch.Generator | None, clean_logits: Tensor) -> AttackOutput:
        v = self._tensor().to(x)
        size = float(threat.norm_of(v.unsqueeze(0))[0])
        if size > threat.eps * (1 + 1e-5) + 1e-6:
            raise InvalidThreatModelError(
                f"The perturbation's {threat.norm.value} norm ({size:.4g}) exceeds the threat's "
                f"eps ({threat.eps:g}).")
        return AttackOutput(apply_universal(x, v, threat))
