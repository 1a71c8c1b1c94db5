"""Detection: score inputs by the norm of the loss gradient, calibrate, and attack the detector.

``GradientNormDetector`` flags inputs whose ``||grad_x CE(f(x), predicted label)||`` exceeds a
threshold calibrated on clean data to a target false-positive rate; ``evaluate_detector`` gives
per-attack detection rates and distortions; ``EvasiveCW`` is the adaptive attack that adds the
detector's score to Carlini & Wagner's objective.
"""

from advrobust.detection.evaluate import AttackDetection, DetectionReport, evaluate_detector
from advrobust.detection.evasive import EvasiveCW
from advrobust.detection.gradient_norm import GradientNormDetector, gradient_norm_score

__all__ = [
    "AttackDetection",
    "DetectionReport",
    "EvasiveCW",
    "GradientNormDetector",
    "evaluate_detector",
    "gradient_norm_score",
]
