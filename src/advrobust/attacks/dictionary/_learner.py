"""What ADiL and SADiL share: hyper-parameters, input checks, initialisation and packaging."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advrobust.attacks.dictionary._dictionary import Dictionary
from advrobust.attacks.dictionary.objective import (
    AdversarialLoss,
    DictionaryObjective,
    resolve_target,
)
from advrobust.core._validation import check_choice, check_float, check_int
from advrobust.core.checks import check_labels
from advrobust.core.config import Configurable
from advrobust.core.modes import eval_mode
from advrobust.core.threat import LpBall, Norm
from advrobust.errors import InvalidInputError, TrainingDivergedError

__all__ = ["Callback", "DictionaryLearner", "LearnState", "initial_atoms"]

#: ``callback(iteration, atoms (P, M), codes (M, N), objective)`` after every step.
Callback = Callable[[int, Tensor, Tensor, float], None]


def initial_atoms(size: int, num_atoms: int, generator: torch.Generator | None,
                  device: torch.device, dtype: torch.dtype) -> Tensor:
    """Gaussian atoms (P, M) scaled to unit l2 norm (the deck's Gaussian initialisation, made
    feasible)."""
    d = torch.randn((size, num_atoms), generator=generator, dtype=dtype)
    return (d / d.norm(dim=0, keepdim=True).clamp_min(1e-12)).to(device)


@dataclass
class LearnState:
    """The iterate of a learner: atoms (P, M), codes (M, N), objective history and status."""

    atoms: Tensor
    codes: Tensor
    history: list[float]
    status: str = "max_iter"


class DictionaryLearner(Configurable):
    """Base of :class:`ADiL` and :class:`SADiL`: validation and the ``fit`` wrapper.

    Subclasses implement ``_learn(objective, state, callback) -> LearnState``.
    """

    def _check_common(self, atoms: int, lambda1: float, lambda2: float, loss: str,
                      kappa: float, step_size: float, lo: float, hi: float) -> None:
        owner = type(self).__name__
        self.atoms = check_int(atoms, "atoms", owner, low=1)
        self.lambda1 = check_float(lambda1, "lambda1", owner, low=0.0)
        self.lambda2 = check_float(lambda2, "lambda2", owner, low=0.0)
        self.loss = check_choice(getattr(loss, "value", loss), "loss", owner,
                                 [k.value for k in AdversarialLoss])
        self.kappa = check_float(kappa, "kappa", owner, low=0.0)
        self.step_size = check_float(step_size, "step_size", owner, low=0.0, low_open=True)
        self.lo = check_float(lo, "lo", owner, allow_inf=True)
        self.hi = check_float(hi, "hi", owner, allow_inf=True)
        LpBall(Norm.L2, 0.0, self.lo, self.hi)  # raises on lo >= hi

    def fit(self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | str | None = None,
            generator: torch.Generator | None = None, *, dataset: str | None = None,
            model_name: str | None = None, callback: Callback | None = None) -> Dictionary:
        """Learn a dictionary of ``atoms`` atoms that fools ``model`` on ``x`` (N, ...).

        Args:
            model: classifier returning logits; run in eval mode, never modified.
            x: inputs (N, ...) inside the box [lo, hi].
            y: true labels (N,).
            target: None (untargeted), target classes (N,), or ``"second"`` (the most probable
                wrong class of each clean input).
            generator: random source of the Gaussian initial atoms (and SADiL's shuffling).
            dataset: name of the data, stored in the result (checked when a file is loaded).
            model_name: description of the model, stored in the result.
            callback: called after every step with (iteration, atoms, codes, objective).

        Returns:
            The :class:`Dictionary` with the codes of ``x``, the objective history and why
            learning stopped (``status="nan"`` keeps the last finite iterate, with a warning).

        Raises:
            InvalidInputError: malformed x / y / target, inputs outside the box.
            TrainingDivergedError: the objective is not finite at the starting point.
        """
        name = type(self).__name__
        box = LpBall(Norm.L2, 0.0, self.lo, self.hi)
        box.check_input(x)
        start = time.perf_counter()
        with eval_mode(model, who=name):
            clean = _logits(model, x)
            check_labels(y, x.shape[0], clean.shape[1])
            tgt = resolve_target(target, clean, y)
            if tgt is not None:
                check_labels(tgt, x.shape[0], clean.shape[1], name="target")
                if bool((tgt == y).any()):
                    raise InvalidInputError(
                        f"{name}: 'target' must differ from 'y' for every input; they are equal "
                        f"at indices {(tgt == y).nonzero().flatten()[:10].tolist()}.")
            objective = DictionaryObjective(
                model, x.detach(), y, tgt, kind=AdversarialLoss(self.loss), kappa=self.kappa,
                lambda1=self.lambda1, lambda2=self.lambda2,
                project=lambda _x0, xc: box.clip_box(xc))
            atoms = initial_atoms(x[0].numel(), self.atoms, generator, x.device, x.dtype)
            codes = x.new_zeros((self.atoms, x.shape[0]))
            first = float((objective.values(atoms, codes) + objective.penalty(codes)).sum())
            if not math.isfinite(first):
                raise TrainingDivergedError(
                    f"{name}: the objective is not finite at the starting point (the model's "
                    "outputs on the clean inputs hold NaN or inf).")
            state = self._learn(objective, LearnState(atoms, codes, [first]), generator, callback)
        return Dictionary(atoms=state.atoms.detach(), input_shape=tuple(x.shape[1:]),
                          codes=state.codes.detach(), lambda1=self.lambda1, lambda2=self.lambda2,
                          loss=self.loss, kappa=self.kappa, lo=self.lo, hi=self.hi,
                          method=name.lower(),
                          history=tuple(state.history), status=state.status, dataset=dataset,
                          model=model_name, seconds=time.perf_counter() - start)

    def _learn(self, objective: DictionaryObjective, state: LearnState,
               generator: torch.Generator | None, callback: Callback | None) -> LearnState:
        raise NotImplementedError(f"{type(self).__name__} does not implement _learn()")


def _logits(model: nn.Module, x: Tensor, chunk: int = 512) -> Tensor:
    with torch.no_grad():
        out = torch.cat([model(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])
    if out.dim() != 2 or out.shape[0] != x.shape[0]:
        raise InvalidInputError(
            f"The model must map inputs of shape {tuple(x.shape[1:])} to logits (N, classes); "
            f"got {tuple(out.shape)}.")
    return out
