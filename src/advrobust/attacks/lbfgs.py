"""Szegedy et al.'s box-constrained L-BFGS attack, with a per-sample search over the constant.

Szegedy, C. et al. "Intriguing properties of neural networks", ICLR 2014.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from advrobust.attacks._minnorm import already_adversarial, default_target, flat_view
from advrobust.attacks.base import Attack, AttackOutput, Oracle
from advrobust.core._validation import check_float, check_int
from advrobust.core.threat import LpBall, Norm

__all__ = ["LBFGS"]


def _bview(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


class LBFGS(Attack):
    """Box-constrained L-BFGS attack (Szegedy et al., ICLR 2014), targeted, minimum l2 norm.

    For each sample, minimises ``c * ||x' - x||_2^2 + CE(f(x'), target)`` over the box with
    scipy's L-BFGS-B. The batch is optimised as one vector with the summed objective (samples
    are independent, so this is the per-sample problem solved jointly: one forward and one
    backward per function evaluation). The paper searches for the constant ``c`` that gives the
    closest point still classified as the target: here, per sample, ``search_steps`` rounds
    start at ``c_init``; a round that reaches the target multiplies ``c`` by 10 (or bisects
    geometrically once a failing ``c`` is known), a round that fails divides it by 10 (or
    bisects). The smallest successful perturbation is kept.

    Untargeted calls (``target=None``) aim at the most likely wrong class at the clean point;
    success is still judged untargeted (any wrong class).

    Threat: l2 (the answer must be within ``eps``; a sample without a success inside the ball gets
    the clean point and ``exhausted``) or linf (the L-BFGS-B bounds are the linf ball
    intersected with the box, so every iterate is feasible). Samples already classified as
    required are returned unchanged (norm 0) with a warning.

    Args:
        c_init: first constant of the search, > 0.
        search_steps: rounds of the search over ``c`` (one L-BFGS-B run each).
        max_iter: L-BFGS-B iterations per round.

    Shapes: ``x`` (N, ...), ``y`` / ``target`` (N,).
    """

    cli_name: ClassVar[str] = "lbfgs"
    norms: ClassVar[frozenset[Norm]] = frozenset({Norm.L2, Norm.LINF})
    targeted: ClassVar[bool] = True

    def __init__(self, *, c_init: float = 1e-2, search_steps: int = 5,
                 max_iter: int = 100) -> None:
        name = type(self).__name__
        self.c_init = check_float(c_init, "c_init", name, low=0.0, low_open=True)
        self.search_steps = check_int(search_steps, "search_steps", name, low=1)
        self.max_iter = check_int(max_iter, "max_iter", name, low=1)

    def _run(self, oracle: Oracle, x: Tensor, y: Tensor, threat: LpBall, target: Tensor | None,
             generator: torch.Generator | None, clean_logits: Tensor) -> AttackOutput:
        done = already_adversarial(clean_logits, y, target, type(self).__name__)
        aim = target if target is not None else default_target(clean_logits, y)
        todo = (~done).nonzero().flatten()
        x_adv, found = x.clone(), done.clone()
        if todo.numel():
            best_x, best_norm = self._search(oracle, x[todo], y[todo], aim[todo], target is None,
                                             threat)
            ok = torch.isfinite(best_norm)
            x_adv[todo] = torch.where(_bview(ok, best_x), best_x, x[todo])
            found[todo] = ok
        return AttackOutput(x_adv=x_adv, exhausted=~found,
                            info={"already_adversarial": done, "aimed_at": aim,
                                  "minimum_norm": True})

    def _search(self, oracle: Oracle, x: Tensor, y: Tensor, aim: Tensor, untargeted: bool,
                threat: LpBall) -> tuple[Tensor, Tensor]:
        n = x.shape[0]
        c = torch.full((n,), self.c_init, dtype=torch.float64)
        c_ok = torch.zeros(n, dtype=torch.float64)  # largest c known to succeed (0: none)
        c_bad = torch.full((n,), math.inf, dtype=torch.float64)  # smallest c known to fail
        best_x, best_norm = x.clone(), torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
        lower, upper = threat.input_bounds(x)
        bounds = list(zip(flat_view(lower).flatten().tolist(), flat_view(upper).flatten().tolist(),
                          strict=True))
        for _ in range(self.search_steps):
            xa = self._minimise(oracle, x, aim, c.to(x), bounds)
            pred = oracle(xa).argmax(1)
            ok = (pred != y) if untargeted else (pred == aim)
            norm = threat.norm_of(xa - x)
            better = ok & (norm < best_norm) & (norm <= threat.eps)
            best_norm = torch.where(better, norm, best_norm)
            best_x[better] = xa[better]
            okc = ok.cpu()
            c_ok = torch.where(okc, torch.maximum(c_ok, c), c_ok)
            c_bad = torch.where(okc, c_bad, torch.minimum(c_bad, c))
            both = (c_ok > 0) & torch.isfinite(c_bad)
            c = torch.where(both, (c_ok * c_bad).sqrt(), torch.where(okc, c * 10, c / 10))
        return best_x, best_norm

    def _minimise(self, oracle: Oracle, x: Tensor, aim: Tensor, c: Tensor,
                  bounds: list[tuple[float, float]]) -> Tensor:
        """One L-BFGS-B run on the whole batch from the clean point; returns the minimiser."""
        shape, cv = x.shape, _bview(c, x)

        def objective(z: np.ndarray) -> tuple[float, np.ndarray]:
            xa = torch.from_numpy(z).to(dtype=x.dtype, device=x.device).reshape(shape)
            _, ce, grad = oracle.value_and_grad(
                xa, lambda logits: F.cross_entropy(logits, aim, reduction="none"))
            delta = xa - x
            value = float((c * flat_view(delta).pow(2).sum(1)).sum() + ce.sum())
            g = (2 * cv * delta + grad).flatten()
            return value, g.detach().cpu().double().numpy()

        z0 = x.detach().cpu().double().flatten().numpy()
        from scipy.optimize import minimize  # imported here: keeps the CLI's start-up fast

        res = minimize(objective, z0, jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": self.max_iter})
        return torch.from_numpy(res.x).to(dtype=x.dtype, device=x.device).reshape(shape)
