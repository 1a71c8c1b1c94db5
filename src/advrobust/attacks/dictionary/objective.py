"""The ADiL objective: an adversarial loss on ``x_i + D v_i`` plus energy and sparsity penalties.

    Phi(D, V) = sum_i [ H(f(P(x_i + D v_i)), t_i) + lambda_2 ||D v_i||_2^2 ]
                + lambda_1 sum_i ||v_i||_1 + indicator(||d_m||_2 <= 1 for every atom m)

with D (P, M) the dictionary (one atom per column), V (M, N) the codes (one column per input) and
``P`` the map that keeps inputs valid. **Inputs stay valid by projection inside the loss**: the
model is evaluated at ``P(x_i + D v_i)``, the clip to the input box (for an attack, the projection
onto the caller's threat set), and gradients flow through that projection; ``lambda_2`` penalises
the raw perturbation ``D v_i``. The first two terms form the smooth part ``F`` handled by gradient
steps; the last two are the non-smooth part handled by their proximal map.

``H`` is the adversarial loss, minimised (``kind`` ``"ce"`` or ``"margin"``):

- untargeted, ``"ce"``: ``-CE(f(x'), y)``, the negative cross-entropy of the true label;
- untargeted, ``"margin"``: ``max(f_y - max_{j != y} f_j, -kappa)``, the C&W logit loss;
- targeted, ``"ce"``: ``CE(f(x'), t)``; targeted, ``"margin"``: ``max(max_{j != t} f_j - f_t,
  -kappa)``. The target is given per input, or ``"second"``: the most probable class other than
  the true one under the clean logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.core.spec import margin
from advrobust.errors import InvalidInputError

__all__ = ["AdversarialLoss", "DictionaryObjective", "SmoothPart", "adversarial_loss",
           "check_atoms_fit", "resolve_target"]

Projector = Callable[[Tensor, Tensor], Tensor]


class AdversarialLoss(str, Enum):
    """The adversarial loss ``H`` (minimised): cross-entropy or the C&W margin."""

    CE = "ce"
    MARGIN = "margin"


def adversarial_loss(logits: Tensor, y: Tensor, target: Tensor | None, kind: AdversarialLoss,
                     kappa: float = 0.0) -> Tensor:
    """Per-sample ``H`` (N,) to minimise, from logits (N, K); see the module docstring."""
    if kind is AdversarialLoss.CE:
        if target is None:
            return -F.cross_entropy(logits, y, reduction="none")
        return F.cross_entropy(logits, target, reduction="none")
    value = margin(logits, y) if target is None else -margin(logits, target)
    return value.clamp_min(-kappa)


def resolve_target(target: Tensor | str | None, clean_logits: Tensor, y: Tensor) -> Tensor | None:
    """The per-input target (N,) int64, or None for an untargeted objective.

    Args:
        target: None, a tensor of classes (N,), or ``"second"`` (the most probable class other
            than ``y`` under ``clean_logits`` (N, K)).

    Raises:
        InvalidInputError: an unknown string, or a target tensor of the wrong shape.
    """
    if target is None:
        return None
    if isinstance(target, str):
        if target != "second":
            raise InvalidInputError(
                f"'target' must be None, a tensor of classes or 'second'. Got {target!r} instead.")
        return clean_logits.scatter(1, y.unsqueeze(1), float("-inf")).argmax(dim=1)
    if not torch.is_tensor(target) or tuple(target.shape) != tuple(y.shape):
        raise InvalidInputError(
            f"'target' must be a tensor of classes shaped {tuple(y.shape)}. Got "
            f"{getattr(target, 'shape', type(target).__name__)} instead.")
    return target.to(device=y.device, dtype=torch.int64)


@dataclass
class SmoothPart:
    """The smooth part ``F`` at a point: per-input values and gradients.

    Attributes:
        values: (n,) ``H_i + lambda_2 ||D v_i||^2`` for the selected inputs.
        grad_atoms: (P, M) gradient of ``sum values`` w.r.t. D (None if not asked).
        grad_codes: (M, n) gradient w.r.t. the selected codes (None if not asked).
    """

    values: Tensor
    grad_atoms: Tensor | None
    grad_codes: Tensor | None


class DictionaryObjective:
    """``Phi(D, V)`` over a fixed data set; see the module docstring.

    The model must already be in the mode it is attacked in (the learners wrap it in
    :func:`advrobust.core.modes.eval_mode`); gradients are taken with ``torch.autograd.grad`` on D
    and V only, so the model's ``.grad`` fields are never written.

    Args:
        model: classifier returning logits.
        x: inputs (N, ...) inside the box.
        y: true labels (N,).
        target: per-input targets (N,) or None (untargeted).
        kind: the adversarial loss.
        kappa: confidence of the margin loss (ignored for ``"ce"``).
        lambda1: weight of the l1 penalty on the codes.
        lambda2: weight of the energy ``||D v_i||^2``.
        project: ``project(x, x_candidate)``: the valid point the model sees.
        chunk: inputs per forward pass (bounds memory).
    """

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None, *,
                 kind: AdversarialLoss, kappa: float, lambda1: float, lambda2: float,
                 project: Projector, chunk: int = 512) -> None:
        self.model, self.x, self.y, self.target = model, x, y, target
        self.kind, self.kappa = kind, kappa
        self.lambda1, self.lambda2 = lambda1, lambda2
        self.project, self.chunk = project, chunk
        self.forwards = 0  # model evaluations (chunks), for query counts
        self.backwards = 0

    @property
    def n(self) -> int:
        """Number of inputs N."""
        return int(self.x.shape[0])

    def _terms(self, atoms: Tensor, codes: Tensor, idx: Tensor) -> Tensor:
        delta = (atoms @ codes).T.reshape((idx.numel(), *self.x.shape[1:]))
        x = self.x[idx]
        self.forwards += 1
        logits = self.model(self.project(x, x + delta))
        target = None if self.target is None else self.target[idx]
        h = adversarial_loss(logits, self.y[idx], target, self.kind, self.kappa)
        return h + self.lambda2 * delta.reshape(idx.numel(), -1).pow(2).sum(dim=1)

    def _index(self, idx: Tensor | None) -> Tensor:
        return torch.arange(self.n, device=self.x.device) if idx is None else idx

    def values(self, atoms: Tensor, codes: Tensor, idx: Tensor | None = None) -> Tensor:
        """Smooth part per input (n,) for the columns ``codes`` (M, n) of inputs ``idx``."""
        idx = self._index(idx)
        out = []
        with torch.no_grad():
            for s in range(0, idx.numel(), self.chunk):
                out.append(self._terms(atoms, codes[:, s:s + self.chunk], idx[s:s + self.chunk]))
        return torch.cat(out)

    def smooth(self, atoms: Tensor, codes: Tensor, idx: Tensor | None = None, *,
               grad_atoms: bool = True, grad_codes: bool = True) -> SmoothPart:
        """Smooth part per input and its gradients w.r.t. D and the given codes (M, n)."""
        idx = self._index(idx)
        d = atoms.detach().requires_grad_(grad_atoms)
        values, g_codes = [], []
        g_atoms = torch.zeros_like(atoms) if grad_atoms else None
        with torch.enable_grad():
            for s in range(0, idx.numel(), self.chunk):
                v = codes[:, s:s + self.chunk].detach().requires_grad_(grad_codes)
                terms = self._terms(d, v, idx[s:s + self.chunk])
                wrt = [t for t, flag in ((d, grad_atoms), (v, grad_codes)) if flag]
                grads = torch.autograd.grad(terms.sum(), wrt) if wrt else ()
                self.backwards += 1
                values.append(terms.detach())
                if grad_atoms:
                    g_atoms = g_atoms + grads[0]  # type: ignore[operator]
                if grad_codes:
                    g_codes.append(grads[-1])
        return SmoothPart(torch.cat(values), g_atoms,
                          torch.cat(g_codes, dim=1) if grad_codes else None)

    def penalty(self, codes: Tensor) -> Tensor:
        """Non-smooth part per input (n,): ``lambda_1 ||v_i||_1`` (atoms are kept feasible)."""
        return self.lambda1 * codes.abs().sum(dim=0)


def check_atoms_fit(atoms: Tensor, x: Tensor, who: str) -> None:
    """Raise unless the atoms (P, M) have one row per input coordinate of ``x`` (N, ...)."""
    size = x[0].numel()
    if atoms.dim() != 2 or atoms.shape[0] != size:
        raise InvalidInputError(
            f"{who}: the dictionary's atoms have shape {tuple(atoms.shape)}, but the inputs have "
            f"shape {tuple(x.shape[1:])} ({size} values): atoms must be ({size}, M).")
