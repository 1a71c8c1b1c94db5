"""The dictionary attack on unseen inputs, as an :class:`~advrobust.attacks.Attack`."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from advrobust.attacks.base import Attack, AttackOutput, Oracle
from advrobust.attacks.dictionary._dictionary import Dictionary, load_dictionary
from advrobust.attacks.dictionary.coding import span_code, sparse_code
from advrobust.attacks.dictionary.objective import (
    AdversarialLoss,
    DictionaryObjective,
    check_atoms_fit,
)
from advrobust.core._validation import check_choice, check_float, check_int
from advrobust.core.threat import LpBall
from advrobust.errors import InvalidParameterError

__all__ = ["DictionaryAttack"]


class DictionaryAttack(Attack):
    """Perturb each input with a sparse combination ``D v`` of learned adversarial atoms.

    With the dictionary D fixed (learned by :class:`ADiL` / :class:`SADiL`), each input's code is
    found by ``method="sparse"`` (proximal-gradient iterations on the ADiL objective, per-input
    backtracking) or ``method="span"`` (the supervised variant ``min_z H(f(x + D D^+ z))``,
    ``||z|| <= eps``). See :mod:`~advrobust.attacks.dictionary.coding`.

    **Staying in the caller's threat set**: the objective evaluates the model at
    ``threat.project(x, x + D v)`` (the lp ball of radius eps, then the input box), and the
    returned point is that projection, so the result always lies in the threat set; with a
    large eps only the box is active (the deck's "projection onto the input box at the end").

    Args:
        dictionary: a :class:`Dictionary` or the path of a file written by
            :func:`save_dictionary`; its input shape is checked against the inputs.
        method: ``"sparse"`` or ``"span"``.
        steps: coding iterations.
        step_size: gamma of the sparse coding (the normalised step in the threat's norm for
            ``"span"``).
        lambda1: l1 weight of the codes (None: the dictionary's own).
        lambda2: energy weight (None: the dictionary's own).
        loss: ``"ce"`` or ``"margin"`` (None: the dictionary's own).
        kappa: confidence of the margin loss (None: the dictionary's own).
        delta: backtracking factor in ]0, 1[.
        beta: sufficient-decrease constant in ]0, 1[.
        dataset: name of the data attacked (e.g. ``"mnist"``); when given, a dictionary that
            recorded another dataset is refused (the input shape is always checked).

    ``info["codes"]`` holds the codes (N, M) (``method="sparse"``).
    """

    cli_name: ClassVar[str] = "dictionary"
    targeted: ClassVar[bool] = True

    def __init__(self, *, dictionary: Dictionary | str | Path, method: str = "sparse",
                 steps: int = 20, step_size: float = 1.0, lambda1: float | None = None,
                 lambda2: float | None = None, loss: str | None = None, kappa: float | None = None,
                 delta: float = 0.5, beta: float = 1e-4, dataset: str | None = None) -> None:
        owner = "DictionaryAttack"
        if not isinstance(dictionary, (Dictionary, str, Path)):
            raise InvalidParameterError(
                f"The 'dictionary' parameter of {owner} must be a Dictionary or the path of a "
                f"dictionary file. Got {type(dictionary).__name__} instead.")
        self.dictionary = dictionary
        self.method = check_choice(method, "method", owner, ("sparse", "span"))
        self.steps = check_int(steps, "steps", owner, low=1)
        self.step_size = check_float(step_size, "step_size", owner, low=0.0, low_open=True)
        self.lambda1 = None if lambda1 is None else check_float(lambda1, "lambda1", owner, low=0.0)
        self.lambda2 = None if lambda2 is None else check_float(lambda2, "lambda2", owner, low=0.0)
        self.loss = None if loss is None else check_choice(
            getattr(loss, "value", loss), "loss", owner, [k.value for k in AdversarialLoss])
        self.kappa = None if kappa is None else check_float(kappa, "kappa", owner, low=0.0)
        self.delta = check_float(delta, "delta", owner, low=0.0, high=1.0, low_open=True,
                                 high_open=True)
        self.beta = check_float(beta, "beta", owner, low=0.0, high=1.0, low_open=True,
                                high_open=True)
        if dataset is not None and not isinstance(dataset, str):
            raise InvalidParameterError(
                f"The 'dataset' parameter of {owner} must be a dataset name or None. Got "
                f"{type(dataset).__name__} instead.")
        self.dataset = dataset
        self._loaded: Dictionary | None = dictionary if isinstance(dictionary, Dictionary) \
            else None
        if self._loaded is not None:
            self._loaded.check_compatible(dataset=dataset, who=owner)

    def load(self) -> Dictionary:
        """The dictionary (read from its file on first use)."""
        if self._loaded is None:
            self._loaded = load_dictionary(self.dictionary,  # type: ignore[arg-type]
                                           dataset=self.dataset)
        return self._loaded

    def objective(self, oracle: Oracle, x: Tensor, y: Tensor, target: Tensor | None,
                  threat: LpBall) -> tuple[DictionaryObjective, Tensor]:
        """The coding objective for a batch and the atoms on the batch's device and dtype."""
        d = self.load()
        check_atoms_fit(d.atoms, x, "DictionaryAttack")
        d.check_compatible(tuple(x.shape[1:]), who="DictionaryAttack")
        atoms = d.atoms.to(device=x.device, dtype=x.dtype)
        lambda1 = d.lambda1 if self.lambda1 is None else self.lambda1
        objective = DictionaryObjective(
            oracle.model, x, y, target, kind=AdversarialLoss(self.loss or d.loss),
            kappa=d.kappa if self.kappa is None else self.kappa,
            lambda1=lambda1 if self.method == "sparse" else 0.0,
            lambda2=d.lambda2 if self.lambda2 is None else self.lambda2, project=threat.project)
        return objective, atoms

    def _run(self, oracle: Oracle, x: Tensor, y: Tensor, threat: LpBall, target: Tensor | None,
             generator: torch.Generator | None, clean_logits: Tensor) -> AttackOutput:
        objective, atoms = self.objective(oracle, x, y, target, threat)
        if self.method == "span":
            delta = span_code(objective, atoms, threat, steps=self.steps,
                              step_size=self.step_size)
            info: dict[str, object] = {}
        else:
            coded = sparse_code(objective, atoms, steps=self.steps, step_size=self.step_size,
                                delta=self.delta, beta=self.beta)
            delta = (atoms @ coded.codes).T.reshape(x.shape)
            info = {"codes": coded.codes.T, "objective": coded.objective}
        # The coding passes ran on the model directly: add them to the oracle's count.
        oracle.forwards += objective.forwards
        oracle.backwards += objective.backwards
        return AttackOutput(threat.project(x, x + delta), info=info)
