"""ADiL: full-batch adversarial dictionary learning by line-search proximal gradient.

The deck's Algorithm 1 on ``Phi = F + g`` (see :mod:`.objective`), with ``z = (D, V)``:

1. proximal-gradient point ``y = prox_g(z - Gamma grad F(z))``: every atom of
   ``D - (gamma / N) grad_D F`` projected onto the unit l2 ball, and ``V - gamma grad_V F``
   soft-thresholded at ``gamma * lambda_1``. ``Gamma`` is a fixed diagonal metric (step
   ``gamma / N`` on D, whose gradient sums N per-input terms, and ``gamma`` on each code), which the
   variable-metric framework below allows;
2. direction ``d = y - z`` and the decrease predicted by the proximal model
   ``h = <grad F(z), d> + 1/2 ||d||^2_{Gamma^-1} + g(y) - g(z)`` (``h < 0`` unless z is
   stationary);
3. Armijo-like backtracking along ``d``: the largest ``lambda`` in ``{1, delta, delta^2, ...}`` with
   ``Phi(z + lambda d) <= Phi(z) + beta * lambda * h``.

Step 3 is the sufficient-decrease test of the VMILA method: S. Bonettini, I. Loris, F. Porta,
M. Prato and S. Rebegoldi, "On the convergence of a linesearch based proximal-gradient method for
nonconvex optimization", Inverse Problems 33 (2017) 055005: the Armijo-like rule of their
line-search proximal-gradient method (VMILA, introduced by Bonettini, Loris, Porta and Prato,
SIAM J. Optim. 26 (2016)), with ``h`` their ``h^{(k)}(y^{(k)})`` (the proximal model's decrease,
exact here since both proximal maps are closed forms); every limit point is stationary.
``z + lambda d`` stays feasible (a convex combination of feasible points), and ``Phi`` decreases
strictly at every accepted step.
D starts from a Gaussian (atoms scaled to unit norm), V at zero.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from advrobust.attacks.dictionary._learner import Callback, DictionaryLearner, LearnState
from advrobust.attacks.dictionary._prox import project_atoms, soft_threshold
from advrobust.attacks.dictionary.objective import DictionaryObjective, SmoothPart
from advrobust.core._validation import check_bool, check_float, check_int
from advrobust.core.progress import progress_bar

__all__ = ["ADiL", "finite_part", "stop_nan"]


class ADiL(DictionaryLearner):
    """Adversarial dictionary learning, full batch (the deck's Algorithm 1).

    ``ADiL(atoms=10).fit(model, x, y)`` returns a :class:`Dictionary` whose atoms ``d_m`` (P,)
    and codes ``v_i`` (M,) give per-input perturbations ``D v_i``; see the module docstring for
    the algorithm and :mod:`~advrobust.attacks.dictionary.objective` for the objective.

    Args:
        atoms: M, the number of atoms (>= 1).
        lambda1: weight of the l1 penalty on the codes (sparsity), >= 0.
        lambda2: weight of the energy ``||D v_i||^2``, >= 0.
        loss: adversarial loss ``"margin"`` (C&W, the default: its gradient does not vanish on
            confidently classified inputs, unlike the cross-entropy's) or ``"ce"``.
        kappa: confidence of the margin loss.
        max_iter: iterations (one gradient and at least one line-search evaluation each).
        step_size: gamma (step ``gamma / N`` on D, ``gamma`` on the codes).
        delta: backtracking factor in ]0, 1[.
        beta: sufficient-decrease constant in ]0, 1[.
        max_backtracks: backtracking steps before giving up (status ``"line_search"``).
        tol: stop (status ``"converged"``) once an iteration lowers the objective by less than
            ``tol * max(1, |Phi|)``.
        lo: lower end of the input box.
        hi: upper end of the input box.
        progress: show a tqdm bar with the objective.
    """

    def __init__(self, *, atoms: int = 10, lambda1: float = 0.1, lambda2: float = 0.001,
                 loss: str = "margin", kappa: float = 1.0, max_iter: int = 100,
                 step_size: float = 1.0, delta: float = 0.5, beta: float = 1e-4,
                 max_backtracks: int = 30, tol: float = 0.0, lo: float = 0.0, hi: float = 1.0,
                 progress: bool = False) -> None:
        self._check_common(atoms, lambda1, lambda2, loss, kappa, step_size, lo, hi)
        self.max_iter = check_int(max_iter, "max_iter", "ADiL", low=1)
        self.delta = check_float(delta, "delta", "ADiL", low=0.0, high=1.0, low_open=True,
                                 high_open=True)
        self.beta = check_float(beta, "beta", "ADiL", low=0.0, high=1.0, low_open=True,
                                high_open=True)
        self.max_backtracks = check_int(max_backtracks, "max_backtracks", "ADiL", low=1)
        self.tol = check_float(tol, "tol", "ADiL", low=0.0)
        self.progress = check_bool(progress, "progress", "ADiL")

    def proximal_point(self, objective: DictionaryObjective, atoms: Tensor, codes: Tensor,
                       part: SmoothPart) -> tuple[Tensor, Tensor, float]:
        """The proximal-gradient point ``y = (D+, V+)`` and the predicted decrease ``h``."""
        assert part.grad_atoms is not None and part.grad_codes is not None
        gamma, n = self.step_size, objective.n
        new_atoms = project_atoms(atoms - (gamma / n) * part.grad_atoms)
        new_codes = soft_threshold(codes - gamma * part.grad_codes, gamma * self.lambda1)
        d_atoms, d_codes = new_atoms - atoms, new_codes - codes
        h = ((part.grad_atoms * d_atoms).sum() + (part.grad_codes * d_codes).sum()
             + n / (2 * gamma) * d_atoms.pow(2).sum() + d_codes.pow(2).sum() / (2 * gamma)
             + objective.penalty(new_codes).sum() - objective.penalty(codes).sum())
        return new_atoms, new_codes, float(h)

    def _learn(self, objective: DictionaryObjective, state: LearnState,
               generator: torch.Generator | None, callback: Callback | None) -> LearnState:
        atoms, codes, phi = state.atoms, state.codes, state.history[-1]
        part = objective.smooth(atoms, codes)
        bar = progress_bar(range(self.max_iter), desc="ADiL", disable=not self.progress,
                           leave=False)
        for it in bar:
            if not finite_part(part):
                stop_nan(state, "ADiL", "its gradient")
                break
            y_atoms, y_codes, h = self.proximal_point(objective, atoms, codes, part)
            if not h < 0:  # already stationary: the proximal point is z itself
                state.status = "converged"
                break
            step = self._backtrack(objective, atoms, codes, y_atoms - atoms, y_codes - codes,
                                   phi, h)
            if step is None or isinstance(step, str):
                state.status = "nan" if step == "nan" else "line_search"
                if step == "nan":
                    warnings.warn("ADiL: the objective became non-finite along every trial step; "
                                  "stopped with the last finite iterate.", RuntimeWarning,
                                  stacklevel=3)
                break
            atoms, codes, new_phi = step
            state.atoms, state.codes = atoms, codes
            state.history.append(new_phi)
            bar.set_postfix(objective=f"{new_phi:.4g}")
            if callback is not None:
                callback(it + 1, atoms, codes, new_phi)
            converged = phi - new_phi <= self.tol * max(1.0, abs(phi))
            phi = new_phi
            if converged:
                state.status = "converged"
                break
            part = objective.smooth(atoms, codes)
        bar.close()
        return state

    def _backtrack(self, objective: DictionaryObjective, atoms: Tensor, codes: Tensor,
                   d_atoms: Tensor, d_codes: Tensor, phi: float, h: float
                   ) -> tuple[Tensor, Tensor, float] | str | None:
        """Largest ``lambda = delta^k`` passing the Bonettini et al. test; "nan" or None if none."""
        lam, saw_nan = 1.0, False
        for _ in range(self.max_backtracks):
            trial_atoms, trial_codes = atoms + lam * d_atoms, codes + lam * d_codes
            value = float((objective.values(trial_atoms, trial_codes)
                           + objective.penalty(trial_codes)).sum())
            if not math.isfinite(value):
                saw_nan = True
            elif value <= phi + self.beta * lam * h:
                return trial_atoms, trial_codes, value
            lam *= self.delta
        return "nan" if saw_nan else None


def finite_part(part: SmoothPart) -> bool:
    tensors = [part.values, part.grad_atoms, part.grad_codes]
    return all(t is None or bool(torch.isfinite(t).all()) for t in tensors)


def stop_nan(state: LearnState, who: str, what: str) -> None:
    warnings.warn(f"{who}: {what} is not finite; stopped with the last finite iterate.",
                  RuntimeWarning, stacklevel=4)
    state.status = "nan"
