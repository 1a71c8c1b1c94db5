"""The state of a batch of branch-and-bound domains (:mod:`advrobust.exact._beta`): splits,
warm-start slopes and multipliers, bounds, branching scores; and the ReLU relaxations a batch
shares over its optimisation steps."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from advrobust.relax._rounding import relu_gamma, relu_magnitude

__all__ = ["Domains"]

#: Storage dtype of slopes and multipliers (any value is sound: float32 halves the memory).
_STORE = torch.float32


@dataclass
class _Relu:
    """What a batch's ReLU relaxations share over every optimisation step (they depend on the
    domains' bounds only, not on the slopes): masks, upper line, rounding magnitudes, all
    (B, 1, *shape) so that they broadcast against coefficients (B, K, *shape)."""

    unstable: Tensor
    active: Tensor
    up: Tensor
    up_b: Tensor  # (B, n, 1): one intercept per neuron, for one matmul per pass
    mag: Tensor  # (B, *shape): relu_magnitude
    beta_mag: Tensor  # (B, *shape): max(|lo|, |hi|), the split terms' magnitude
    gamma: float

    @classmethod
    def of(cls, lo: Tensor, hi: Tensor) -> _Relu:
        unstable = (lo < 0) & (hi > 0)
        active = (lo >= 0).to(lo.dtype)
        lo_c, hi_c = lo.clamp(max=0), hi.clamp(min=0)
        denom = torch.where(unstable, hi_c - lo_c, torch.ones_like(hi_c))
        up = torch.where(unstable, hi_c / denom, active)
        up_b = torch.where(unstable, -up * lo_c, torch.zeros_like(lo))
        return cls(unstable.unsqueeze(1), active.unsqueeze(1), up.unsqueeze(1),
                   up_b.flatten(1).unsqueeze(2), relu_magnitude(lo, hi),
                   torch.maximum(lo.abs(), hi.abs()), relu_gamma(lo.dtype, lo[0].numel()))

    def backward(self, a: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
        """``ReLUOp.backward`` with the shared parts precomputed: ``(a', const)``."""
        low = torch.where(self.unstable, alpha.clamp(0, 1), self.active)
        neg = a.clamp(max=0)
        out = torch.addcmul(a * low, neg, self.up - low)
        return out, torch.matmul(neg.flatten(2), self.up_b).squeeze(-1)


@dataclass
class Domains:
    """A batch of B domains of one sample.

    Attributes:
        split: per ReLU key (node index - 1; a chain's op index), (B, n) int8: +1 active
            split, -1 inactive split, 0 free.
        alpha: per ReLU key, (B, n) lower slopes (warm start of the children).
        beta: per ReLU key, (B, n) multipliers >= 0 of the split constraints.
        lower: (B,) sound lower bounds (float64).
        score: (B, total neurons) branching scores (0: not splittable).
        row: (B,) spec row of each domain.
        coef: (B, total neurons) coefficients of the best pass on every ReLU's output (they
            start a new split's multiplier where that reproduces the parent's bound).
    """

    split: dict[int, Tensor]
    alpha: dict[int, Tensor]
    beta: dict[int, Tensor]
    lower: Tensor
    score: Tensor
    row: Tensor
    coef: Tensor

    def take(self, idx: Tensor) -> Domains:
        return Domains({i: v[idx] for i, v in self.split.items()},
                       {i: v[idx] for i, v in self.alpha.items()},
                       {i: v[idx] for i, v in self.beta.items()},
                       self.lower[idx], self.score[idx], self.row[idx], self.coef[idx])

    def cat(self, other: Domains) -> Domains:
        def join(a: dict[int, Tensor], b: dict[int, Tensor]) -> dict[int, Tensor]:
            return {i: torch.cat([v, b[i]]) for i, v in a.items()}
        return Domains(join(self.split, other.split), join(self.alpha, other.alpha),
                       join(self.beta, other.beta), torch.cat([self.lower, other.lower]),
                       torch.cat([self.score, other.score]), torch.cat([self.row, other.row]),
                       torch.cat([self.coef, other.coef]))

    def __len__(self) -> int:
        return int(self.lower.shape[0])

    def bytes_per_domain(self) -> int:
        """Memory one domain holds (for sizing the open list)."""
        per = sum(v[0].numel() * (v.element_size() + 2 * _STORE.itemsize)
                  for v in self.split.values())
        return per + 2 * self.score.shape[1] * self.score.element_size() + 16
