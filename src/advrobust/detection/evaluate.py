"""Evaluation of a detector against attacks: detection rate and the distortion evasion costs."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from advrobust.attacks.base import Attack
from advrobust.core._validation import check_int
from advrobust.core.modes import eval_mode
from advrobust.core.threat import LpBall
from advrobust.detection.gradient_norm import GradientNormDetector
from advrobust.errors import InvalidInputError, InvalidParameterError

__all__ = ["AttackDetection", "BatchDetection", "DetectionReport", "evaluate_detector",
           "summarize_batches"]


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


@dataclass(frozen=True)
class BatchDetection:
    """What one attack did to one batch of samples (handed to ``on_batch``).

    Attributes:
        attack: the attack's name.
        index: (B,) positions in ``x`` of the batch's samples.
        attacked: (B,) bool, the samples attacked (those the model classifies correctly).
        success: (B,) bool, misclassified by the attack (False where not attacked).
        detected: (B,) bool, successful **and** flagged by the detector.
        score: (B,) detector score of the adversarial example (nan where not attacked).
        norm: (B,) perturbation norm in the threat's norm (nan where not attacked).
        x_adv: (B, ...) the adversarial examples (the clean input where not attacked).
        seconds: wall time of the attack on the batch.
    """

    attack: str
    index: Tensor
    attacked: Tensor
    success: Tensor
    detected: Tensor
    score: Tensor
    norm: Tensor
    x_adv: Tensor
    seconds: float


def _median(values: Tensor) -> float:
    return float(values.median()) if values.numel() else math.nan


def _threat_for(threat: LpBall | Mapping[str, LpBall], name: str) -> LpBall:
    if isinstance(threat, LpBall):
        return threat
    if name not in threat:
        raise InvalidParameterError(
            f"'threat' has no threat set for attack {name!r}; it has {sorted(threat)}.")
    return threat[name]


def _one_batch(name: str, attack: Attack, detector: GradientNormDetector, model: nn.Module,
               x: Tensor, y: Tensor, index: Tensor, correct: Tensor, threat: LpBall,
               generator: torch.Generator | None) -> BatchDetection:
    b = x.shape[0]
    success, detected = torch.zeros(b, dtype=torch.bool), torch.zeros(b, dtype=torch.bool)
    score, norm = torch.full((b,), math.nan), torch.full((b,), math.nan)
    x_adv = x.detach().clone()
    start = time.perf_counter()
    if bool(correct.any()):
        result = attack(model, x[correct], y[correct], threat, generator=generator)
        adv_score = detector.score(result.x_adv).detach().cpu().float()
        flagged = adv_score > float(detector.threshold_ or 0.0)
        success[correct] = result.success.cpu()
        detected[correct] = result.success.cpu() & flagged
        score[correct], norm[correct] = adv_score, result.norm.detach().cpu().float()
        x_adv[correct] = result.x_adv.detach()
    return BatchDetection(attack=name, index=index, attacked=correct.cpu(), success=success,
                          detected=detected, score=score, norm=norm, x_adv=x_adv,
                          seconds=time.perf_counter() - start)


def summarize_batches(detector: GradientNormDetector, clean_flags: Tensor,
                      batches: Sequence[BatchDetection],
                      threat: LpBall | Mapping[str, LpBall]) -> DetectionReport:
    """The :class:`DetectionReport` of the batches finished so far (all of them at the end).

    Args:
        detector: the fitted detector.
        clean_flags: (M,) detector flags of the clean samples covered by ``batches``.
        batches: what :func:`evaluate_detector` handed to ``on_batch``.
        threat: as given to :func:`evaluate_detector`.
    """
    attacks: dict[str, AttackDetection] = {}
    for name in dict.fromkeys(b.attack for b in batches):
        mine = [b for b in batches if b.attack == name]
        attacked = torch.cat([b.attacked for b in mine])
        success, detected = torch.cat([b.success for b in mine]), torch.cat([b.detected
                                                                           for b in mine])
        norm, n = torch.cat([b.norm for b in mine]), int(attacked.sum())
        n_success = int(success.sum())
        attacks[name] = AttackDetection(
            attack=name, threat=str(_threat_for(threat, name)), n=n,
            success_rate=n_success / n if n else math.nan,
            detection_rate=int(detected.sum()) / n_success if n_success else math.nan,
            evasion_rate=int((success & ~detected).sum()) / n if n else math.nan,
            median_norm=_median(norm[success]),
            median_norm_detected=_median(norm[detected]),
            median_norm_undetected=_median(norm[success & ~detected]),
            seconds=sum(b.seconds for b in mine))
    return DetectionReport(threshold=float(detector.threshold_ or 0.0),
                           target_fpr=detector.fpr,
                           clean_fpr=float(clean_flags.float().mean()), attacks=attacks)


def evaluate_detector(detector: GradientNormDetector, model: nn.Module, x: Tensor, y: Tensor,
                      attacks: Mapping[str, Attack], threat: LpBall | Mapping[str, LpBall], *,
                      generator: torch.Generator | None = None, progress: bool = False,
                      batch_size: int | None = None,
                      on_batch: Callable[[BatchDetection], None] | None = None
                      ) -> DetectionReport:
    """Run each attack on the correctly classified samples and score its examples.

    Args:
        detector: a detector fitted on ``model`` (on clean data other than ``x`` ideally).
        model: the classifier the attacks target.
        x: clean inputs (N, ...); y: labels (N,).
        attacks: name -> attack (e.g. ``{"pgd": PGD(), "cw": CarliniWagner()}``).
        threat: one threat set for every attack, or name -> threat set (C&W needs l2).
        generator: random source for the attacks.
        progress: report progress (one step per attack and batch).
        batch_size: samples per attack call (default: all at once).
        on_batch: called with a :class:`BatchDetection` after each attack finished a batch
            (batches in order, every attack on a batch before the next batch), so a caller
            can keep finished batches when the run is interrupted.

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
    for name in attacks:
        _threat_for(threat, name)
    n = int(x.shape[0])
    size = n if batch_size is None else check_int(batch_size, "batch_size",
                                                  "evaluate_detector", low=1)
    clean_flags = detector.predict(x)
    with eval_mode(model, who="evaluate_detector"), torch.no_grad():
        correct = model(x).argmax(1) == y
    if not bool(correct.any()):
        raise InvalidInputError("The model misclassifies every sample of 'x': nothing to attack.")
    from advrobust.core.progress import progress_bar

    steps = [(s, name) for s in range(0, n, size) for name in attacks]
    batches: list[BatchDetection] = []
    for s, name in progress_bar(steps, desc="detect", unit="attack-batch", disable=not progress):
        sl = slice(s, min(s + size, n))
        batches.append(_one_batch(name, attacks[name], detector, model, x[sl], y[sl],
                                  torch.arange(n)[sl], correct[sl], _threat_for(threat, name),
                                  generator))
        if on_batch is not None:
            on_batch(batches[-1])
    return summarize_batches(detector, clean_flags, batches, threat)
