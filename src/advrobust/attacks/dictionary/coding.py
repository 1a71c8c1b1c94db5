"""Attacking unseen inputs with a fixed dictionary: find codes, then keep the inputs valid.

Two ways, both with D fixed:

- :func:`sparse_code` (the deck's default): a few proximal-gradient iterations on each input's
  code, ``v <- soft(v - gamma grad_v F, gamma lambda_1)``, with the same sufficient-decrease
  backtracking as ADiL (Bonettini et al. 2017) done **per input** (the objective is separable in
  the codes once D is fixed), so every input's objective decreases monotonically.
- :func:`span_code` (the deck's supervised variant): ``min_z H(f(x + D D^+ z))`` s.t.
  ``||z|| <= radius``, by normalised steepest descent in the threat's norm projected onto the
  ball: the perturbation stays in the span of the atoms.

Either way the caller projects ``x + D v`` onto the input box (or the threat set) at the end; the
objective already evaluates the model at the projected point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from advrobust.attacks.dictionary._prox import soft_threshold
from advrobust.attacks.dictionary.objective import DictionaryObjective
from advrobust.core.threat import LpBall

__all__ = ["CodingResult", "span_code", "sparse_code"]


@dataclass(frozen=True)
class CodingResult:
    """Codes of new inputs and how the line search went.

    Attributes:
        codes: (M, N) codes.
        objective: (N,) final per-input objective ``H + lambda_2 ||D v||^2 + lambda_1 ||v||_1``.
        first_step: (N,) the step length ``lambda`` accepted at the first iteration (1 unless
            backtracking shortened it).
    """

    codes: Tensor
    objective: Tensor
    first_step: Tensor


def sparse_code(objective: DictionaryObjective, atoms: Tensor, *, steps: int,
                step_size: float, delta: float = 0.5, beta: float = 1e-4,
                max_backtracks: int = 20) -> CodingResult:
    """Codes (M, N) of ``objective.x`` for the fixed atoms (P, M); starts at zero codes."""
    n, gamma = objective.n, step_size
    codes = atoms.new_zeros((atoms.shape[1], n))
    phi = objective.values(atoms, codes) + objective.penalty(codes)
    first = torch.zeros_like(phi)
    for it in range(steps):
        part = objective.smooth(atoms, codes, grad_atoms=False)
        assert part.grad_codes is not None
        grad = torch.nan_to_num(part.grad_codes, nan=0.0, posinf=0.0, neginf=0.0)
        proposal = soft_threshold(codes - gamma * grad, gamma * objective.lambda1)
        d = proposal - codes
        h = ((grad * d).sum(0) + d.pow(2).sum(0) / (2 * gamma) + objective.penalty(proposal)
             - objective.penalty(codes))
        codes, phi, lam = _backtrack(objective, atoms, codes, d, phi, h, delta, beta,
                                     max_backtracks)
        if it == 0:
            first = lam
    return CodingResult(codes, phi, first)


def _backtrack(objective: DictionaryObjective, atoms: Tensor, codes: Tensor, d: Tensor,
               phi: Tensor, h: Tensor, delta: float, beta: float, max_backtracks: int
               ) -> tuple[Tensor, Tensor, Tensor]:
    """Per-input Armijo backtracking; inputs without an accepted step keep their code."""
    codes, phi = codes.clone(), phi.clone()
    lam = torch.ones_like(phi)
    accepted = torch.zeros_like(phi, dtype=torch.bool)
    pending = (h < 0).nonzero().flatten()
    for _ in range(max_backtracks):
        if pending.numel() == 0:
            break
        trial = codes[:, pending] + lam[pending] * d[:, pending]
        value = objective.values(atoms, trial, pending) + objective.penalty(trial)
        ok = torch.isfinite(value) & (value <= phi[pending] + beta * lam[pending] * h[pending])
        done = pending[ok]
        codes[:, done] = trial[:, ok]
        phi[done] = value[ok]
        accepted[done] = True
        pending = pending[~ok]
        lam[pending] *= delta
    lam[~accepted] = 0.0
    return codes, phi, lam


def span_code(objective: DictionaryObjective, atoms: Tensor, threat: LpBall, *, steps: int,
              step_size: float) -> Tensor:
    """Perturbations (N, ...) ``D D^+ z`` minimising ``H`` with ``||z||_p <= threat.eps``.

    ``step_size`` is the length of each normalised step in the threat's norm. Returns the raw
    perturbations; the caller projects ``x + delta`` onto the threat set.
    """
    projector = atoms @ torch.linalg.pinv(atoms)  # (P, P): orthogonal projector on span(D)
    ball = LpBall(threat.norm, threat.eps, -math.inf, math.inf)
    z = atoms.new_zeros((atoms.shape[0], objective.n))
    for _ in range(steps):
        part = objective.smooth(projector, z, grad_atoms=False)
        assert part.grad_codes is not None
        grad = torch.nan_to_num(part.grad_codes.T, nan=0.0, posinf=0.0, neginf=0.0)
        moved = z.T - step_size * threat.ascent_direction(grad)
        z = ball.project(torch.zeros_like(moved), moved).T
    return (projector @ z).T.reshape(objective.x.shape)
