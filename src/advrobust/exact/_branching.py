"""Branching scores for ReLU splits: BaBSR and filtered smart branching.

BaBSR (Bunel et al. 2020, "Branch and bound for piecewise linear neural network
verification") scores an unstable neuron by what its relaxation costs the current linear
bound: a negative coefficient ``lambda`` on ``relu(z)`` pays the upper relaxation's intercept
``-lambda u l / (u - l)``, a positive one the gap ``lambda max((1 - alpha) u, -alpha l)`` of the
lower relaxation. Splitting the neuron removes that cost from one child at least.

Filtered smart branching (De Palma et al. 2021, "Improved branch and bound for neural network
verification via Lagrangian decomposition"; the FSB of beta-CROWN's implementation) keeps the
``k`` best BaBSR candidates of each domain, bounds both children of each candidate with one
cheap pass (the parent's slopes and multipliers, no optimisation), and splits the candidate
whose worse child is best.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["babsr_scores"]


def babsr_scores(coef: Tensor, lo: Tensor, hi: Tensor, alpha: Tensor) -> Tensor:
    """Scores (B, n) of the neurons of one ReLU layer; 0 on stable (and split) neurons.

    Args:
        coef: (B, n) coefficients of the bound on the layer's outputs ``relu(z)``.
        lo, hi: (B, n) pre-activation bounds under the domain's splits.
        alpha: (B, n) lower slopes in use.
    """
    unstable = (lo < 0) & (hi > 0)
    lo_c, hi_c = lo.clamp(max=0), hi.clamp(min=0)
    width = (hi_c - lo_c).clamp_min(1e-30)
    intercept = -hi_c * lo_c / width
    neg = (-coef).clamp_min(0)
    pos = coef.clamp_min(0)
    gap = torch.maximum((1 - alpha) * hi_c, -alpha * lo_c)
    score = neg * intercept + pos * gap + 1e-9 * width
    return torch.where(unstable, score, torch.zeros_like(score))

