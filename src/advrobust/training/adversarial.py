"""Adversarial training: an attack inside the loss (robust optimisation).

``min_theta E[max_{x' in S(x)} loss(f_theta(x'), y)]``: by Danskin's theorem the gradient of the
inner maximum is the gradient of the loss at the maximiser, so training on the attack's point
follows the robust objective (Madry et al. 2018).

Mode decision: every inner attack runs with the model in **eval mode** (dropout off, batch-norm
running statistics, which adversarial batches then do not pollute); the outer loss is computed in
the mode the model had when the objective was called (training mode inside ``fit``). The model's
modes are restored on exit and on error. Madry et al. attacked in training mode; on the
batch-norm-free models used here both choices give the same function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.core._validation import check_float, check_int
from advrobust.core.threat import LpBall
from advrobust.errors import InvalidParameterError
from advrobust.training._defense_utils import GeneratorCache, attack_mode
from advrobust.training.objective import Objective
from advrobust.training.ramps import EpsSchedule, Ramp

__all__ = ["AdversarialPGD", "FastFGSM", "TRADES"]


def _check_threat(threat: object, owner: str) -> LpBall:
    if not isinstance(threat, LpBall):
        raise InvalidParameterError(
            f"The 'threat' parameter of {owner} must be an LpBall. "
            f"Got {type(threat).__name__} instead.")
    return threat


def _check_seed(seed: object, owner: str) -> None:
    if seed is not None:
        check_int(seed, "seed", owner, low=0)


def _resolve(schedule: object, threat: LpBall, owner: str) -> Ramp | None:
    """The concrete eps ramp of an optional :class:`EpsSchedule` (None: constant eps)."""
    if schedule is None:
        return None
    if not isinstance(schedule, EpsSchedule):
        raise InvalidParameterError(
            f"The 'schedule' parameter of {owner} must be an EpsSchedule or None. "
            f"Got {type(schedule).__name__} instead.")
    return schedule.resolve(threat.eps, owner)


def _threat_at(threat: LpBall, ramp: Ramp | None, progress: float) -> LpBall:
    return threat if ramp is None else threat.with_eps(ramp(progress))


class AdversarialPGD(Objective):
    """PGD adversarial training: cross-entropy at a PGD point of the threat set.

    Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards deep learning models resistant to
    adversarial attacks" (ICLR 2018). The inner maximisation is :class:`advrobust.attacks.PGD`
    (random start, cross-entropy loss) run in eval mode.

    Args:
        threat: the threat set to train against.
        steps: PGD steps per batch (Madry et al.: 40 on MNIST; 7-10 is common).
        step_size: PGD step; None means ``2.5 * eps / steps`` (of the current eps).
        seed: seed of the random starts (None: drawn from torch's default generator once).
        schedule: optional eps ramp up to ``threat.eps`` (None: the full eps from the start).
    """

    def __init__(self, *, threat: LpBall, steps: int = 10, step_size: float | None = None,
                 seed: int | None = None, schedule: EpsSchedule | None = None) -> None:
        self.threat = _check_threat(threat, "AdversarialPGD")
        self.schedule = schedule
        self._ramp = _resolve(schedule, threat, "AdversarialPGD")
        self.steps = check_int(steps, "steps", "AdversarialPGD", low=1)
        if step_size is not None:
            check_float(step_size, "step_size", "AdversarialPGD", low=0.0, low_open=True)
        _check_seed(seed, "AdversarialPGD")
        self.step_size = step_size
        self.seed = seed
        self._gens = GeneratorCache(seed)

    def adversarial_examples(self, model: nn.Module, x: Tensor, y: Tensor,
                             progress: float = 1.0) -> Tensor:
        """PGD points (B, ...) inside the threat set (at ``progress``'s eps), detached."""
        from advrobust.attacks import PGD

        threat = _threat_at(self.threat, self._ramp, progress)
        if threat.eps == 0:
            return x.detach()
        attack = PGD(steps=self.steps, step_size=self.step_size, random_start=True)
        with attack_mode(model):
            result = attack(model, x.detach(), y, threat, generator=self._gens.get(x.device))
        return result.x_adv.detach()

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: float) -> Tensor:
        x_adv = self.adversarial_examples(model, x, y, progress)
        return F.cross_entropy(model(x_adv), y)


class FastFGSM(Objective):
    """Fast adversarial training: one FGSM step from a uniform random start.

    Wong, Rice & Kolter, "Fast is better than free: revisiting adversarial training" (ICLR 2020):
    ``delta ~ U(S(x))``, ``delta += alpha * sign(grad)``, projected back onto the set; with
    ``alpha = 1.25 eps`` this matches PGD training at the cost of one extra backward pass. The step
    is the threat's steepest-ascent direction, so l2 / l1 threats work too.

    Args:
        threat: the threat set to train against.
        alpha: step size; None means ``1.25 * eps`` (the paper's choice; with a schedule, of
            the current eps; a given alpha is scaled by ``eps(progress) / eps``).
        seed: seed of the random starts.
        schedule: optional eps ramp up to ``threat.eps`` (None: the full eps from the start).
    """

    def __init__(self, *, threat: LpBall, alpha: float | None = None,
                 seed: int | None = None, schedule: EpsSchedule | None = None) -> None:
        self.threat = _check_threat(threat, "FastFGSM")
        self.schedule = schedule
        self._ramp = _resolve(schedule, threat, "FastFGSM")
        if alpha is not None:
            check_float(alpha, "alpha", "FastFGSM", low=0.0, low_open=True)
        _check_seed(seed, "FastFGSM")
        self.alpha = alpha
        self.seed = seed
        self._gens = GeneratorCache(seed)

    def adversarial_examples(self, model: nn.Module, x: Tensor, y: Tensor,
                             progress: float = 1.0) -> Tensor:
        """Fast-FGSM points (B, ...) inside the threat set around ``x``, detached."""
        threat, x0 = _threat_at(self.threat, self._ramp, progress), x.detach()
        if threat.eps == 0:
            return x0
        scale = threat.eps / self.threat.eps
        alpha = scale * self.alpha if self.alpha is not None else 1.25 * threat.eps
        with attack_mode(model), torch.enable_grad():
            start = threat.sample(x0, generator=self._gens.get(x.device)).requires_grad_(True)
            loss = F.cross_entropy(model(start), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, start)
        step = start.detach() + alpha * threat.ascent_direction(grad, start.detach())
        return threat.project(x0, step).detach()

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: float) -> Tensor:
        x_adv = self.adversarial_examples(model, x, y, progress)
        return F.cross_entropy(model(x_adv), y)


def _kl(clean_log_probs: Tensor, adv_logits: Tensor) -> Tensor:
    """Per-sample ``KL(p_clean || p_adv)`` (N,)."""
    return F.kl_div(F.log_softmax(adv_logits, dim=1), clean_log_probs, reduction="none",
                    log_target=True).sum(dim=1)


class TRADES(Objective):
    """TRADES: ``CE(f(x), y) + beta * KL(f(x) || f(x'))`` with ``x'`` maximising the KL term.

    Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan, "Theoretically principled trade-off between
    robustness and accuracy" (ICML 2019). The inner maximisation starts at ``x + 0.001 N(0, I)``
    and takes ``steps`` steepest-ascent steps on the KL divergence, projected onto the set (its
    loss depends on the clean prediction, so it is not the cross-entropy PGD of the attacks).

    Args:
        threat: the threat set.
        beta: weight of the robustness (KL) term; the paper uses 1-6 (6 on MNIST and CIFAR-10).
        steps: inner steps.
        step_size: inner step; None means ``2.5 * eps / steps`` (of the current eps).
        seed: seed of the random start.
        schedule: optional eps ramp up to ``threat.eps`` (None: the full eps from the start).
    """

    def __init__(self, *, threat: LpBall, beta: float = 6.0, steps: int = 10,
                 step_size: float | None = None, seed: int | None = None,
                 schedule: EpsSchedule | None = None) -> None:
        self.threat = _check_threat(threat, "TRADES")
        self.schedule = schedule
        self._ramp = _resolve(schedule, threat, "TRADES")
        self.beta = check_float(beta, "beta", "TRADES", low=0.0)
        self.steps = check_int(steps, "steps", "TRADES", low=1)
        if step_size is not None:
            check_float(step_size, "step_size", "TRADES", low=0.0, low_open=True)
        _check_seed(seed, "TRADES")
        self.step_size = step_size
        self.seed = seed
        self._gens = GeneratorCache(seed)

    def adversarial_examples(self, model: nn.Module, x: Tensor, progress: float = 1.0) -> Tensor:
        """Points (B, ...) of the threat set maximising the KL divergence from ``f(x)``."""
        threat, x0 = _threat_at(self.threat, self._ramp, progress), x.detach()
        if threat.eps == 0:
            return x0
        step = self.step_size if self.step_size is not None else 2.5 * threat.eps / self.steps
        gen = self._gens.get(x.device)
        with attack_mode(model), torch.enable_grad():
            with torch.no_grad():
                clean = F.log_softmax(model(x0), dim=1)
            noise = 0.001 * torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
            x_adv = threat.project(x0, x0 + noise)
            for _ in range(self.steps):
                xr = x_adv.requires_grad_(True)
                (grad,) = torch.autograd.grad(_kl(clean, model(xr)).sum(), xr)
                x_adv = threat.project(x0, xr.detach() + step * threat.ascent_direction(grad, xr))
        return x_adv.detach()

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: float) -> Tensor:
        x_adv = self.adversarial_examples(model, x, progress)
        logits = model(x)
        robust = _kl(F.log_softmax(logits, dim=1), model(x_adv)).mean()
        return F.cross_entropy(logits, y) + self.beta * robust
