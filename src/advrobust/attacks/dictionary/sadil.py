"""SADiL: stochastic adversarial dictionary learning for data sets that do not fit one batch.

The deck's alternating stochastic scheme. For every minibatch B of an epoch (reshuffled with the
caller's generator):

1. a projected gradient step on D with the minibatch estimate ``(N / |B|) grad_D F_B`` of the
   full gradient: ``D <- proj(D - (gamma / N) (N / |B|) grad_D F_B)`` (the same metric as ADiL:
   ``gamma / N`` on D), every atom projected onto the unit l2 ball;
2. a soft-thresholding step on the minibatch's codes with the **new** D:
   ``V_B <- soft(V_B - gamma grad_{V_B} F_B(D, V_B), gamma * lambda_1)``.

Fixed steps, no line search: the objective need not decrease monotonically. The full objective is
evaluated after every epoch (one forward pass over the data) and recorded in the history and the
progress bar. With one minibatch holding the whole data set the first step coincides with ADiL's
first proximal-gradient point.
"""

from __future__ import annotations

import math

import torch

from advrobust.attacks.dictionary._learner import Callback, DictionaryLearner, LearnState
from advrobust.attacks.dictionary._prox import project_atoms, soft_threshold
from advrobust.attacks.dictionary.adil import finite_part, stop_nan
from advrobust.attacks.dictionary.objective import DictionaryObjective
from advrobust.core._validation import check_bool, check_int
from advrobust.core.progress import progress_bar

__all__ = ["SADiL"]


class SADiL(DictionaryLearner):
    """Stochastic adversarial dictionary learning (alternating minibatch steps).

    Args:
        atoms: M, the number of atoms (>= 1).
        lambda1: weight of the l1 penalty on the codes, >= 0.
        lambda2: weight of the energy ``||D v_i||^2``, >= 0.
        loss: adversarial loss ``"margin"`` (C&W) or ``"ce"``.
        kappa: confidence of the margin loss.
        epochs: passes over the data.
        batch_size: inputs per minibatch.
        step_size: gamma (``gamma / N`` on D, ``gamma`` on the codes).
        lo: lower end of the input box.
        hi: upper end of the input box.
        progress: show a tqdm bar with the objective.
    """

    def __init__(self, *, atoms: int = 10, lambda1: float = 0.1, lambda2: float = 0.001,
                 loss: str = "margin", kappa: float = 1.0, epochs: int = 5, batch_size: int = 128,
                 step_size: float = 1.0, lo: float = 0.0, hi: float = 1.0,
                 progress: bool = False) -> None:
        self._check_common(atoms, lambda1, lambda2, loss, kappa, step_size, lo, hi)
        self.epochs = check_int(epochs, "epochs", "SADiL", low=1)
        self.batch_size = check_int(batch_size, "batch_size", "SADiL", low=1)
        self.progress = check_bool(progress, "progress", "SADiL")

    def step(self, objective: DictionaryObjective, state: LearnState, idx: torch.Tensor) -> bool:
        """One alternating step on minibatch ``idx``; False (state untouched) if non-finite."""
        gamma, n, b = self.step_size, objective.n, idx.numel()
        codes_b = state.codes[:, idx]
        part = objective.smooth(state.atoms, codes_b, idx, grad_codes=False)
        if not finite_part(part):
            return False
        assert part.grad_atoms is not None
        atoms = project_atoms(state.atoms - (gamma / n) * (n / b) * part.grad_atoms)
        part = objective.smooth(atoms, codes_b, idx, grad_atoms=False)
        if not finite_part(part):
            return False
        assert part.grad_codes is not None
        state.atoms = atoms
        state.codes = state.codes.clone()
        state.codes[:, idx] = soft_threshold(codes_b - gamma * part.grad_codes,
                                             gamma * self.lambda1)
        return True

    def _learn(self, objective: DictionaryObjective, state: LearnState,
               generator: torch.Generator | None, callback: Callback | None) -> LearnState:
        n = objective.n
        good = (state.atoms, state.codes)  # the last iterate with a finite full objective
        bar = progress_bar(total=self.epochs * -(-n // self.batch_size), desc="SADiL",
                   disable=not self.progress, leave=False)
        for epoch in range(self.epochs):
            order = torch.randperm(n, generator=generator).to(objective.x.device)
            for start in range(0, n, self.batch_size):
                if not self.step(objective, state, order[start:start + self.batch_size]):
                    break
                bar.update(1)
            else:
                value = float((objective.values(state.atoms, state.codes)
                               + objective.penalty(state.codes)).sum())
                if math.isfinite(value):
                    good = (state.atoms, state.codes)
                    state.history.append(value)
                    bar.set_postfix(objective=f"{value:.4g}")
                    if callback is not None:
                        callback(epoch + 1, state.atoms, state.codes, value)
                    continue
            stop_nan(state, "SADiL", "the objective")
            state.atoms, state.codes = good
            break
        bar.close()
        return state
