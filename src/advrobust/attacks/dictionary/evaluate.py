"""Fooling rate, rMSE and sparsity of a dictionary on the inputs it was learned on or new ones."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advrobust.attacks.dictionary._dictionary import Dictionary
from advrobust.attacks.dictionary.coding import sparse_code
from advrobust.attacks.dictionary.objective import (
    AdversarialLoss,
    DictionaryObjective,
    check_atoms_fit,
)
from advrobust.core.modes import eval_mode
from advrobust.core.threat import LpBall, Norm
from advrobust.errors import InvalidInputError

__all__ = ["DictionaryReport", "apply_codes", "code_inputs", "evaluate_dictionary"]


@dataclass(frozen=True)
class DictionaryReport:
    """How a dictionary fools a model on a set of inputs.

    Attributes:
        n: number of inputs.
        fooling_rate: fraction whose predicted class changes from ``x`` to ``x_adv``.
        rmse: ``(1/N) sum ||x_adv_i - x_i||^2 / ||x_i||^2`` (the deck's rMSE; no square root,
            inputs with ``x = 0`` left out), with ``x_adv = clip(x + D v)``.
        sparsity: fraction of zero entries of the codes.
        mean_active_atoms: mean number of non-zero entries per code.
        codes: (M, N) codes.
        x_adv: (N, ...) attacked inputs.
        clean_pred: (N,) predictions on ``x``.
        adv_pred: (N,) predictions on ``x_adv``.
    """

    n: int
    fooling_rate: float
    rmse: float
    sparsity: float
    mean_active_atoms: float
    codes: Tensor
    x_adv: Tensor
    clean_pred: Tensor
    adv_pred: Tensor

    def summary(self) -> dict[str, float]:
        """The scalar metrics as a dict."""
        return {"n": self.n, "fooling_rate": self.fooling_rate, "rmse": self.rmse,
                "sparsity": self.sparsity, "mean_active_atoms": self.mean_active_atoms}


def apply_codes(dictionary: Dictionary, x: Tensor, codes: Tensor) -> Tensor:
    """``clip(x + D v_i)`` to the dictionary's input box, (N, ...)."""
    check_atoms_fit(dictionary.atoms, x, "apply_codes")
    if codes.shape != (dictionary.num_atoms, x.shape[0]):
        raise InvalidInputError(
            f"apply_codes: codes must be ({dictionary.num_atoms}, {x.shape[0]}). Got "
            f"{tuple(codes.shape)} instead.")
    box = LpBall(Norm.L2, 0.0, dictionary.lo, dictionary.hi)
    return box.clip_box(x + dictionary.perturbations(codes.to(x)).reshape(x.shape))


def code_inputs(model: nn.Module, dictionary: Dictionary, x: Tensor, y: Tensor, *,
                target: Tensor | None = None, steps: int = 20, step_size: float = 1.0) -> Tensor:
    """Codes (M, N) of unseen inputs with the dictionary fixed (sparse coding, box clip).

    Uses the dictionary's own lambda1, lambda2, loss and kappa; the model runs in eval mode.
    """
    check_atoms_fit(dictionary.atoms, x, "code_inputs")
    box = LpBall(Norm.L2, 0.0, dictionary.lo, dictionary.hi)
    box.check_input(x)
    with eval_mode(model, who="code_inputs"):
        objective = DictionaryObjective(
            model, x.detach(), y, target, kind=AdversarialLoss(dictionary.loss),
            kappa=dictionary.kappa,
            lambda1=dictionary.lambda1, lambda2=dictionary.lambda2,
            project=lambda _x0, xc: box.clip_box(xc))
        atoms = dictionary.atoms.to(x)
        return sparse_code(objective, atoms, steps=steps, step_size=step_size).codes


def evaluate_dictionary(model: nn.Module, dictionary: Dictionary, x: Tensor,
                        codes: Tensor | None = None, *, y: Tensor | None = None,
                        steps: int = 20, step_size: float = 1.0) -> DictionaryReport:
    """Fooling rate, rMSE and sparsity of ``x + D v`` on inputs ``x`` (N, ...).

    Args:
        model: the attacked classifier (eval mode, restored).
        dictionary: the learned dictionary.
        x: inputs (N, ...).
        codes: (M, N) codes of ``x`` (e.g. ``dictionary.codes`` for its training inputs);
            None to code ``x`` with :func:`code_inputs` (needs ``y``).
        y: labels (N,), needed when ``codes`` is None.
        steps: coding iterations for unseen inputs.
        step_size: coding step.

    Raises:
        InvalidInputError: shapes that do not fit, or neither ``codes`` nor ``y``.
    """
    if codes is None:
        if y is None:
            raise InvalidInputError("evaluate_dictionary needs 'codes' or the labels 'y'.")
        codes = code_inputs(model, dictionary, x, y, steps=steps, step_size=step_size)
    x_adv = apply_codes(dictionary, x, codes)
    with eval_mode(model, who="evaluate_dictionary"), torch.no_grad():
        clean = torch.cat([model(x[i:i + 512]).argmax(1) for i in range(0, x.shape[0], 512)])
        adv = torch.cat([model(x_adv[i:i + 512]).argmax(1) for i in range(0, x.shape[0], 512)])
    flat, diff = x.reshape(x.shape[0], -1), (x_adv - x).reshape(x.shape[0], -1)
    energy = flat.pow(2).sum(1)
    keep = energy > 0
    rmse = float((diff.pow(2).sum(1)[keep] / energy[keep]).mean()) if bool(keep.any()) \
        else float("nan")
    nonzero = (codes != 0).float()
    return DictionaryReport(
        n=int(x.shape[0]), fooling_rate=float((clean != adv).float().mean()), rmse=rmse,
        sparsity=float(1 - nonzero.mean()), mean_active_atoms=float(nonzero.sum(0).mean()),
        codes=codes, x_adv=x_adv, clean_pred=clean, adv_pred=adv)
