"""FAB-T: the targeted Fast Adaptive Boundary attack, a minimum-norm attack (linf, l2).

Croce, F. and Hein, M. "Minimally distorted adversarial examples with a fast adaptive boundary
attack", ICML 2020; its targeted version is the FAB-T member of AutoAttack (Croce & Hein, ICML
2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks").
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from advrobust.attacks._minnorm import already_adversarial, decision, flat_view
from advrobust.attacks.base import Attack, AttackOutput, Oracle
from advrobust.core._validation import check_float, check_int
from advrobust.core.threat import LpBall, Norm

__all__ = ["FABTargeted"]

_BISECTIONS = 20


def project_on_hyperplane(g: Tensor, c: Tensor, z: Tensor, threat: LpBall) -> Tensor:
    """The smallest ``d`` (in the threat's norm) with ``<g, d> = c`` and ``z + d`` in the box.

    The minimiser is ``d(s) = clip(s v, lo - z, hi - z)`` with ``v = g`` (l2) or ``sign(g)``
    (linf) for the scalar ``s`` (of the sign of ``c``) where ``<g, d(s)> = c``; that function
    of ``s`` is monotone, so ``s`` is found by bisection per sample. When the box cannot reach
    the hyperplane, the point of the box closest to it is returned.

    Shapes: ``g``, ``z`` (N, ...); ``c`` (N,).
    """
    gf, zf = flat_view(g), flat_view(z)
    gs = gf * c.sign().unsqueeze(1)  # <gs, d> = |c| is the same hyperplane
    v = gs if threat.norm is Norm.L2 else gs.sign()
    lo, hi = threat.lo - zf, threat.hi - zf
    target = c.abs()

    def reach(s: Tensor) -> Tensor:
        return torch.minimum(torch.maximum(s.unsqueeze(1) * v, lo), hi)

    slope = (gs * v).sum(1).clamp_min(1e-30)
    upper = target / slope  # the unconstrained solution; the box can only make s larger
    goal = target * (1 - 1e-6)  # float rounding must not read as "the box is in the way"
    for _ in range(12):
        short = (gs * reach(upper)).sum(1) < goal
        if not bool(short.any()):
            break
        upper = torch.where(short, upper * 4, upper)
    lower = torch.zeros_like(upper)
    for _ in range(_BISECTIONS):
        mid = (lower + upper) / 2
        short = (gs * reach(mid)).sum(1) < goal
        lower, upper = torch.where(short, mid, lower), torch.where(short, upper, mid)
    return reach(upper).reshape(z.shape)


class FABTargeted(Attack):
    """FAB-T (Croce & Hein, ICML 2020): per target class, steps towards the linearised
    decision boundary between the label and the target, biased towards the clean point.

    Each step linearises ``f_t - f_y`` at the iterate ``x_k`` and projects both ``x_k`` and
    the clean ``x`` onto that hyperplane (inside the box), moving to the convex combination
    ``(1 - a)(x_k + eta d_k) + a (x + eta d_x)`` with ``a = min(|d_k| / (|d_k| + |d_x|),
    alpha_max)``; once ``x_k`` is misclassified it is pulled back towards ``x``:
    ``x_k <- (1 - beta) x + beta x_k``. The ``n_target_classes`` most likely other classes at
    the clean point are tried in turn, each on the samples not yet broken within ``eps``; the
    first restart starts at ``x``, later ones at a random point of the ball of half the
    threat's radius. The smallest misclassified point within ``eps`` is kept per sample; a
    sample without one gets the clean point, flagged in ``exhausted``.

    Args:
        steps: iterations per target and restart (100 in AutoAttack).
        n_target_classes: target classes tried (9 in AutoAttack's standard version).
        restarts: runs per target (1 in AutoAttack's FAB-T).
        alpha_max: the largest weight of the clean point's projection (0.1).
        eta: overshoot of the projections (1.05).
        beta: the backward step's weight of the adversarial iterate (0.9).

    Cost: per target and restart, ``steps`` forward and backward passes.
    Shapes: ``x`` (N, ...) in ``[lo, hi]``, ``y`` (N,).
    """

    cli_name: ClassVar[str] = "fab-t"
    norms: ClassVar[frozenset[Norm]] = frozenset({Norm.LINF, Norm.L2})
    targeted: ClassVar[bool] = False

    def __init__(self, *, steps: int = 100, n_target_classes: int = 9, restarts: int = 1,
                 alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9) -> None:
        name = type(self).__name__
        self.steps = check_int(steps, "steps", name, low=1)
        self.n_target_classes = check_int(n_target_classes, "n_target_classes", name, low=1)
        self.restarts = check_int(restarts, "restarts", name, low=1)
        self.alpha_max = check_float(alpha_max, "alpha_max", name, low=0.0, high=1.0)
        self.eta = check_float(eta, "eta", name, low=1.0)
        self.beta = check_float(beta, "beta", name, low=0.0, high=1.0)

    def _run(self, oracle: Oracle, x: Tensor, y: Tensor, threat: LpBall, target: Tensor | None,
             generator: torch.Generator | None, clean_logits: Tensor) -> AttackOutput:
        done = already_adversarial(clean_logits, y, None, type(self).__name__)
        best_x, best_norm = x.clone(), torch.full((x.shape[0],), math.inf, device=x.device)
        best_norm[done] = 0.0
        k = min(self.n_target_classes, clean_logits.shape[1] - 1)
        order = clean_logits.scatter(1, y.unsqueeze(1), -math.inf).argsort(1, descending=True)
        for t_rank in range(k):
            for restart in range(self.restarts):
                todo = (~(best_norm <= threat.eps)).nonzero().flatten()
                if not todo.numel():
                    break
                xs, norms = self._attack(oracle, x[todo], y[todo], order[todo, t_rank], threat,
                                         generator if restart else None)
                better = norms < best_norm[todo]
                best_norm[todo[better]] = norms[better]
                best_x[todo[better]] = xs[better]
        found = best_norm <= threat.eps
        x_adv = torch.where(found.reshape((-1,) + (1,) * (x.dim() - 1)), best_x, x)
        found &= decision(oracle(x_adv), y, None) | done
        return AttackOutput(x_adv=x_adv, exhausted=~found,
                            info={"already_adversarial": done, "minimum_norm": True})

    def _attack(self, oracle: Oracle, x: Tensor, y: Tensor, t: Tensor, threat: LpBall,
                generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """One FAB-T run towards targets ``t``; the best (point, norm) per sample, norm inf
        where no misclassified point within eps was met."""
        xk = x.clone()
        if generator is not None:
            half = LpBall(threat.norm, threat.eps / 2, lo=threat.lo, hi=threat.hi)
            xk = half.sample(x, generator=generator)
        best_x, best_norm = x.clone(), torch.full((x.shape[0],), math.inf, device=x.device)
        for step in range(self.steps + 1):
            logits, val, grad = oracle.value_and_grad(
                xk, lambda z: z.gather(1, t.unsqueeze(1)).squeeze(1)
                - z.gather(1, y.unsqueeze(1)).squeeze(1))
            adv = logits.argmax(1) != y
            norm = threat.norm_of(xk - x)
            better = adv & (norm < best_norm) & (norm <= threat.eps)
            best_norm = torch.where(better, norm, best_norm)
            best_x[better] = xk[better]
            if step == self.steps:
                break
            xk = self._step(xk, x, val, grad, adv, threat)
        return best_x, best_norm

    def _step(self, xk: Tensor, x: Tensor, val: Tensor, grad: Tensor, adv: Tensor,
              threat: LpBall) -> Tensor:
        # hyperplane {z : val + <grad, z - xk> = 0}; from xk: <grad, d> = -val; from x:
        # <grad, d> = -val - <grad, x - xk>
        shift = flat_view(grad * (x - xk)).sum(1)
        d_k = project_on_hyperplane(grad, -val, xk, threat)
        d_x = project_on_hyperplane(grad, -val - shift, x, threat)
        nk, nx = threat.norm_of(d_k), threat.norm_of(d_x)
        alpha = (nk / (nk + nx).clamp_min(1e-12)).clamp(0.0, self.alpha_max)
        a = alpha.reshape((-1,) + (1,) * (x.dim() - 1))
        moved = threat.clip_box((1 - a) * (xk + self.eta * d_k) + a * (x + self.eta * d_x))
        back = threat.clip_box((1 - self.beta) * x + self.beta * xk)
        return torch.where(adv.reshape(a.shape), back, moved)
