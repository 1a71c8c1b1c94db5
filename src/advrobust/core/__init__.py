"""Shared vocabulary: threat models, specifications, results, mode handling. No algorithms."""

from advrobust.core.checks import check_batch, check_labels, looks_like_probabilities
from advrobust.core.modes import eval_mode, model_device, model_dtype
from advrobust.core.result import (
    VERIFY_TOLERANCE,
    AttackResult,
    BoundResult,
    Verdict,
    decide_verdicts,
)
from advrobust.core.spec import (
    Spec,
    TargetedLoss,
    cross_entropy_loss,
    dlr_loss,
    margin,
    margin_loss,
    targeted_loss,
    targeted_margin,
)
from advrobust.core.threat import LpBall, Norm, lp_norm

__all__ = [
    "VERIFY_TOLERANCE",
    "AttackResult",
    "BoundResult",
    "LpBall",
    "Norm",
    "Spec",
    "TargetedLoss",
    "Verdict",
    "check_batch",
    "check_labels",
    "cross_entropy_loss",
    "decide_verdicts",
    "dlr_loss",
    "eval_mode",
    "looks_like_probabilities",
    "lp_norm",
    "margin",
    "margin_loss",
    "model_device",
    "model_dtype",
    "targeted_loss",
    "targeted_margin",
]
