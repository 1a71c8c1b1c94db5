"""Evaluation: metrics of attack runs and batched runs over datasets."""

from advrobust.evaluation.metrics import (
    AttackRun,
    clean_accuracy,
    evaluate_attack,
    fooling_rate,
    mean_norm,
    median_norm,
    merge_results,
    predict,
    rmse,
    robust_accuracy,
    summarize_attack,
)
from advrobust.evaluation.robustness import robustness_report
from advrobust.evaluation.sanity import SanityWarning, sanity_checks

__all__ = [
    "AttackRun",
    "SanityWarning",
    "clean_accuracy",
    "evaluate_attack",
    "fooling_rate",
    "mean_norm",
    "median_norm",
    "merge_results",
    "predict",
    "rmse",
    "robust_accuracy",
    "robustness_report",
    "sanity_checks",
    "summarize_attack",
]
