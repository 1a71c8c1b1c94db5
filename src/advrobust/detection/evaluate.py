"""Evaluation of a detector against attacks: detection rate and the distortion evasion costs."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from advrobust.attacks.base import Attack
from advrobust.core.modes import eval_mode
from advrobust.core.threat import LpBall
from advrobust.detection.gradient_norm import GradientNormDetector
from advrobust.errors import InvalidInputError, InvalidParameterError

__all__ = ["AttackDetection", "DetectionReport", "evaluate_detector"]


@dataclass(frozen=True)
class AttackDetection:
    """How one attack fared against the detector.

    Attributes:
        attack: the attack's name in the report.
        threat: the threat set it ran in.
        n: samples attacked (those the model classifies correctly).
        success_rate: fraction of them the attack misclassified.
        detection_rate: fraction of the successful examples the detector flags (nan if none).
        evasion_rate: fraction of attacked samples misclassified **and** not flagged.
        median_norm: median perturbation norm (threat's norm) of successful examples.
        median_norm_detected: the same over flagged successful examples (nan if none).
        median_norm_undetected: the same over unflagged successful examples (nan if none).
        seconds: wall time of the attack.
    """

    attack: str
    threat: str
    n: int
    success_rate: float
    detection_rate: float
    evasion_rate: float
    median_norm: float
    median_norm_detected: float
    median_norm_undetected: float
    seconds: float


@dataclass(frozen=True)
class DetectionReport:
    """Detector calibration and per-attack results.

    Attributes:
        threshold: the detector's threshold.
        target_fpr: the false-positive rate it was calibrated for.
        clean_fpr: fraction of the evaluation's clean inputs flagged.
        attacks: one :class:`AttackDetection` per attack, by name.
    """

    threshold: float
    target_fpr: float
    clean_fpr: float
    attacks: Mapping[str, AttackDetection] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """Plain nested dict (for JSON)."""
        return {"threshold": self.threshold, "target_fpr": self.target_fpr,
                "clean_fpr": self.clean_fpr,
                "attacks": {k: vars(v).copy() for k, v in self.attacks.items()}}


def _median(values: Tensor) -> float:
    return float(values.median()) if values.numel() else math.nan


def _threat_for(threat: LpBall | Mapping[str, LpBall], name: str) -> LpBall:
    if isinstance(threat, LpBall):
        return threat
    if name not in threat:
        raise InvalidParameterError(
            f"'threat' has no threat set for attack {name!r}; it has {sorted(threat)}.")
    return threat[name]


def _one_attack(name: str, attack: Attack, detector: GradientNormDetector, model: nn.Module,
                x: Tensor, y: Tensor, threat: LpBall,
                generator: torch.Generator | None) -> AttackDetection:
    start = time.perf_counter()
    result = attack(model, x, y, threat, generator=generator)
    seconds = time.perf_counter() - start
    success = result.success
    flagged = detector.predict(result.x_adv) & success
    n_success = int(success.sum())
    return AttackDetection(
        attack=name, threat=str(threat), n=int(x.shape[0]),
        success_rate=n_success / x.shape[0],
        detection_rate=int(flagged.sum()) / n_success if n_success else math.nan,
        evasion_rate=int((success & ~flagged).sum()) / x.shape[0],
        median_norm=_median(result.norm[success]),
        median_norm_detected=_median(result.norm[flagged]),
        median_norm_undetected=_median(result.norm[success & ~flagged]),
        seconds=seconds)


def evaluate_detector(detector: GradientNormDetector, model: nn.Module, x: Tensor, y: Tensor,
                      attacks: Mapping[str, Attack], threat: LpBall | Mapping[str, LpBall], *,
                      generator: torch.Generator | None = None,
                      progress: bool = False) -> DetectionReport:
    """Run each attack on the correctly classified samples and score its examples.

    Args:
        detector: a detector fitted on ``model`` (on clean data other than ``x`` ideally).
        model: the classifier the attacks target.
        x: clean inputs (N, ...); y: labels (N,).
        attacks: name -> attack (e.g. ``{"pgd": PGD(), "cw": CarliniWagner()}``).
        threat: one threat set for every attack, or name -> threat set (C&W needs l2).
        generator: random source for the attacks.
        progress: report progress over the attacks (one step per attack).

    Returns:
        A :class:`DetectionReport`: the clean false-positive rate on ``x`` and, per attack, the
        detection rate among successful examples and the median distortion of detected vs
        undetected ones.

    Raises:
        NotFittedError: the detector is not fitted.
        InvalidInputError: the detector guards another model, or no sample is classified
            correctly.
    """
    if detector.model_ is not None and detector.model_ is not model:
        raise InvalidInputError(
            "The detector was fitted on another model than 'model': fit it on the evaluated "
            "model.")
    clean_flags = detector.predict(x)
    with eval_mode(model, who="evaluate_detector"), torch.no_grad():
        correct = model(x).argmax(1) == y
    if not bool(correct.any()):
        raise InvalidInputError("The model misclassifies every sample of 'x': nothing to attack.")
    xc, yc = x[correct], y[correct]
    from advrobust.core.progress import progress_bar

    results = {name: _one_attack(name, attack, detector, model, xc, yc,
                                 _threat_for(threat, name), generator)
               for name, attack in progress_bar(list(attacks.items()), desc="detect",
                                                unit="attack", disable=not progress)}
    return DetectionReport(threshold=float(detector.threshold_ or 0.0),
                           target_fpr=detector.fpr,
                           clean_fpr=float(clean_flags.float().mean()), attacks=results)
