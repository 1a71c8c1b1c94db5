"""The statistics of Cohen et al.'s PREDICT / CERTIFY: binomial test, Clopper-Pearson bound.

scipy is imported inside the functions (the CLI must start fast).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "binomial_p_values",
    "clopper_pearson_lower",
    "max_certifiable_radius",
    "min_n_to_certify",
    "min_n_to_predict",
]


def clopper_pearson_lower(successes: Tensor, n: int, alpha: float) -> Tensor:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on a binomial proportion.

    ``P(p >= bound) >= 1 - alpha`` for ``successes ~ Binomial(n, p)``: the alpha quantile of
    ``Beta(k, n - k + 1)`` (0 when k = 0). Clopper & Pearson, Biometrika 1934.

    Args:
        successes: (N,) integer counts k in [0, n].
        n: number of trials.
        alpha: one-sided error level in (0, 1).

    Returns:
        (N,) float64 lower bounds, on the CPU.
    """
    from scipy.stats import beta

    k = successes.detach().to("cpu", torch.float64).numpy()
    bound = beta.ppf(alpha, k, n - k + 1)  # NaN where k == 0 (Beta(0, .) is degenerate)
    bound[k == 0] = 0.0
    return torch.from_numpy(bound)


def binomial_p_values(top: Tensor, runner_up: Tensor) -> Tensor:
    """Two-sided p-values of ``top ~ Binomial(top + runner_up, 1/2)`` (PREDICT's test).

    At p = 1/2 the distribution is symmetric, so the two-sided p-value (scipy's ``binomtest``)
    is ``min(1, 2 P(X >= max(top, runner_up)))``; computed here for all rows at once.

    Args:
        top, runner_up: (N,) integer counts of the two most frequent classes.

    Returns:
        (N,) float64 p-values on the CPU (1 where the counts are equal, also both 0).
    """
    from scipy.stats import binom

    a = top.detach().to("cpu", torch.float64).numpy()
    b = runner_up.detach().to("cpu", torch.float64).numpy()
    tail = binom.sf(np.maximum(a, b) - 1, a + b, 0.5)
    p = np.where(a == b, 1.0, np.minimum(1.0, 2.0 * tail))
    return torch.from_numpy(np.asarray(p, dtype=np.float64))


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY can return with ``n`` samples at level ``alpha``.

    Reached when all ``n`` samples vote for one class: the Clopper-Pearson bound is then
    ``alpha ** (1 / n)`` and the radius ``sigma * Phi^-1(alpha ** (1 / n))`` (0 when that bound
    is not above 1/2).
    """
    from scipy.stats import norm

    p = alpha ** (1.0 / n)
    return float(sigma * norm.ppf(p)) if p > 0.5 else 0.0


def min_n_to_certify(alpha: float) -> int:
    """The smallest ``n`` with which CERTIFY can certify any radius at all at level ``alpha``:
    the least n with ``alpha ** (1 / n) > 1/2``, i.e. ``n > log2(1 / alpha)``."""
    n = max(1, math.floor(math.log2(1.0 / alpha)))
    while alpha ** (1.0 / n) <= 0.5:
        n += 1
    return n


def min_n_to_predict(alpha: float) -> int:
    """The smallest ``n`` with which PREDICT can answer at all at level ``alpha``: all ``n``
    votes for one class give the two-sided p-value ``2 ** (1 - n)``, which must be <= alpha."""
    n = max(1, math.floor(math.log2(2.0 / alpha)))
    while 2.0 ** (1 - n) > alpha:
        n += 1
    return n
