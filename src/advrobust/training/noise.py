"""Gaussian noise augmentation, the training that randomized smoothing certifies."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.core._validation import check_float, check_int
from advrobust.training._defense_utils import GeneratorCache
from advrobust.training.objective import Objective

__all__ = ["NoiseAugmentation"]


class NoiseAugmentation(Objective):
    """Cross-entropy at ``x + sigma * N(0, I)``.

    Cohen, Rosenfeld & Kolter, "Certified adversarial robustness via randomized smoothing"
    (ICML 2019) train the base classifier under the same Gaussian noise the smoothed classifier
    averages over. As in the paper, noisy inputs are not clipped to the data box (the smoothed
    classifier sees unclipped noise too).

    Args:
        sigma: noise standard deviation, >= 0 (0 is standard training).
        seed: seed of the noise (None: drawn from torch's default generator once).
    """

    def __init__(self, *, sigma: float, seed: int | None = None) -> None:
        self.sigma = check_float(sigma, "sigma", "NoiseAugmentation", low=0.0)
        if seed is not None:
            check_int(seed, "seed", "NoiseAugmentation", low=0)
        self.seed = seed
        self._gens = GeneratorCache(seed)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: float) -> Tensor:
        noise = torch.randn(x.shape, generator=self._gens.get(x.device), device=x.device,
                            dtype=x.dtype)
        return F.cross_entropy(model(x + self.sigma * noise), y)
