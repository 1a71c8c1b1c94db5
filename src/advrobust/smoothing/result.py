"""Results of randomized smoothing: statements about the SMOOTHED classifier, never the base.

A :class:`SmoothingCertificate` says: with probability at least ``1 - alpha`` over the noise
drawn, the smoothed classifier ``g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c)`` predicts
``prediction`` at every point within l2 distance ``radius`` of x. It says nothing about the base
model ``f`` (which may be broken by a tiny perturbation) and it is not a
:class:`~advrobust.core.result.Verdict`: there is deliberately no ``verdict`` field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from advrobust.errors import InvalidInputError

__all__ = ["ABSTAIN", "SmoothedPrediction", "SmoothingCertificate", "CERTIFIES"]

#: Class index reported where the smoothed classifier abstains.
ABSTAIN = -1

#: What a smoothing result is about (shown in reports and JSON).
CERTIFIES = ("smoothed classifier g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c), "
             "not the base model f")


@dataclass(frozen=True)
class SmoothedPrediction:
    """PREDICT of Cohen, Rosenfeld & Kolter (2019) on a batch.

    With probability at least ``1 - alpha`` a non-abstained ``prediction`` equals ``g(x)``.

    Attributes:
        prediction: (N,) int64 class of the smoothed classifier, ``ABSTAIN`` (-1) where the
            binomial test on the top two counts was not significant.
        counts: (N, K) int64 votes of the ``n`` noisy copies per class.
        p_value: (N,) float64 two-sided binomial-test p-value of the top count against the
            runner-up.
        abstained: (N,) bool.
        sigma, alpha, n: the smoothing noise level, the test level and the samples per input.
    """

    prediction: Tensor
    counts: Tensor
    p_value: Tensor
    abstained: Tensor
    sigma: float
    alpha: float
    n: int

    @property
    def certifies(self) -> str:
        """What this result is about: the smoothed classifier."""
        return CERTIFIES

    @property
    def confidence(self) -> float:
        """``1 - alpha``: the probability (over the noise) that an answer is g(x)."""
        return 1.0 - self.alpha

    def accuracy(self, y: Tensor) -> float:
        """Fraction of samples whose (non-abstained) prediction equals ``y`` (N,)."""
        _check_y(y, self.prediction)
        return float((self.prediction == y.to(self.prediction.device)).double().mean())


@dataclass(frozen=True)
class SmoothingCertificate:
    """CERTIFY of Cohen, Rosenfeld & Kolter (2019) on a batch.

    With probability at least ``1 - alpha`` (over the noise) every non-abstained sample has
    ``g(x') = prediction`` for all ``||x' - x||_2 < radius``, where g is the smoothed classifier.

    Attributes:
        prediction: (N,) int64 class guessed from the ``n0`` selection samples, ``ABSTAIN``
            (-1) where the lower bound ``p_lower`` is below 1/2.
        radius: (N,) float64 certified l2 radius ``sigma * Phi^-1(p_lower)``; 0 where abstained.
        p_lower: (N,) float64 one-sided (1 - alpha) Clopper-Pearson lower bound on
            ``P(f(x + noise) = prediction)`` from the ``n`` estimation samples.
        counts: (N, K) int64 votes of the ``n`` estimation samples per class.
        abstained: (N,) bool.
        sigma, alpha, n0, n: the noise level, the error level, selection and estimation samples.
    """

    prediction: Tensor
    radius: Tensor
    p_lower: Tensor
    counts: Tensor
    abstained: Tensor
    sigma: float
    alpha: float
    n0: int
    n: int

    @property
    def certifies(self) -> str:
        """What this certificate is about: the smoothed classifier, not the base model."""
        return CERTIFIES

    @property
    def confidence(self) -> float:
        """``1 - alpha``: the probability (over the noise) that each certificate holds."""
        return 1.0 - self.alpha

    def certified_accuracy(self, y: Tensor, radii: Sequence[float]) -> list[float]:
        """Fraction of samples certified correct at each radius: ``prediction == y`` and
        ``radius >= r`` (so at r = 0 it is the smoothed classifier's accuracy)."""
        _check_y(y, self.prediction)
        right = self.prediction == y.to(self.prediction.device)
        return [float((right & (self.radius >= r)).double().mean()) if len(right) else 0.0
                for r in radii]

    def to_dict(self, y: Tensor | None = None) -> dict[str, Any]:
        """JSON-ready per-sample lists plus the statement of what is certified."""
        out: dict[str, Any] = {
            "certifies": CERTIFIES, "confidence": self.confidence, "sigma": self.sigma,
            "alpha": self.alpha, "n0": self.n0, "n": self.n,
            "prediction": self.prediction.tolist(), "radius": self.radius.tolist(),
            "p_lower": self.p_lower.tolist(), "abstained": self.abstained.tolist()}
        if y is not None:
            out["label"] = y.tolist()
        return out

    @staticmethod
    def concat(parts: Sequence[SmoothingCertificate]) -> SmoothingCertificate:
        """One certificate for the samples of several batches (same settings)."""
        if not parts:
            raise InvalidInputError("SmoothingCertificate.concat needs at least one part.")
        first = parts[0]
        settings = {(p.sigma, p.alpha, p.n0, p.n) for p in parts}
        if len(settings) > 1:
            raise InvalidInputError(
                f"SmoothingCertificate.concat: parts differ in (sigma, alpha, n0, n): "
                f"{sorted(settings)}.")
        def cat(name: str) -> Tensor:
            return torch.cat([getattr(p, name) for p in parts])

        return SmoothingCertificate(
            cat("prediction"), cat("radius"), cat("p_lower"), cat("counts"), cat("abstained"),
            sigma=first.sigma, alpha=first.alpha, n0=first.n0, n=first.n)


def _check_y(y: Tensor, prediction: Tensor) -> None:
    if not torch.is_tensor(y) or tuple(y.shape) != tuple(prediction.shape):
        got = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
        raise InvalidInputError(
            f"'y' must be a tensor of shape {tuple(prediction.shape)} (one label per sample). "
            f"Got {got} instead.")
