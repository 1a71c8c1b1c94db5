"""Metrics of an attack run, and a batched runner that attacks a whole dataset.

Conventions: a sample is *robust* against an attack when the model classifies both the clean
input and the adversarial point correctly. Metrics over an empty selection are NaN.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advrobust.attacks.base import Attack
from advrobust.core._validation import check_int
from advrobust.core.modes import eval_mode
from advrobust.core.progress import progress_bar
from advrobust.core.result import AttackResult
from advrobust.core.threat import LpBall
from advrobust.errors import InvalidInputError

__all__ = [
    "AttackRun",
    "clean_accuracy",
    "evaluate_attack",
    "fooling_rate",
    "mean_norm",
    "median_norm",
    "merge_results",
    "predict",
    "rmse",
    "robust_accuracy",
    "summarize_attack",
]


def predict(model: nn.Module, x: Tensor, batch_size: int = 256) -> Tensor:
    """Predicted classes (N,) of ``model`` on ``x`` (N, ...), in eval mode, in batches."""
    check_int(batch_size, "batch_size", "predict", low=1)
    with eval_mode(model, who="predict"), torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]).argmax(dim=1)
                          for i in range(0, x.shape[0], batch_size)])


def clean_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 256) -> float:
    """Fraction of ``x`` (N, ...) the model classifies as ``y`` (N,)."""
    return float((predict(model, x, batch_size) == y).float().mean())


def robust_accuracy(result: AttackResult, clean_correct: Tensor | None = None) -> float:
    """Fraction of samples still correctly classified at the adversarial point.

    Args:
        result: an attack's result; a sample counts as correct at ``x_adv`` when its margin
            ``f_y - max_{t != y} f_t`` is positive.
        clean_correct: (N,) bool, whether each clean input was classified correctly; when given,
            a sample must be correct on both (the usual definition: an attack that returns the
            clean point does not make a misclassified sample robust).

    Returns:
        The fraction in [0, 1]; an upper bound on the true robust accuracy.
    """
    robust = result.margin > 0
    if clean_correct is not None:
        robust = robust & clean_correct.to(robust.device)
    return float(robust.float().mean())


def fooling_rate(clean_pred: Tensor, adv_pred: Tensor) -> float:
    """Fraction of samples whose predicted class changes from ``x`` to ``x_adv`` (both (N,))."""
    return float((clean_pred != adv_pred).float().mean())


def rmse(x: Tensor, x_adv: Tensor, mask: Tensor | None = None) -> float:
    """Relative mean squared error: the mean over samples of ``||x_adv - x||_2^2 / ||x||_2^2``.

    The measure of the dictionary-attack experiments (no square root is taken). Samples with
    ``x = 0`` (undefined ratio) and samples outside ``mask`` (N,) bool are left out; NaN if
    none remain.
    """
    flat = x.reshape(x.shape[0], -1)
    delta = (x_adv - x).reshape(x.shape[0], -1)
    energy = flat.pow(2).sum(dim=1)
    keep = energy > 0
    if mask is not None:
        keep = keep & mask.to(keep.device)
    if not bool(keep.any()):
        return math.nan
    return float((delta.pow(2).sum(dim=1)[keep] / energy[keep]).mean())


def mean_norm(result: AttackResult) -> float:
    """Mean perturbation size (threat norm) over the successful samples; NaN if none."""
    norms = result.norm[result.success]
    return float(norms.mean()) if norms.numel() else math.nan


def median_norm(result: AttackResult) -> float:
    """Median perturbation size (threat norm) over the successful samples; NaN if none."""
    norms = result.norm[result.success]
    return float(norms.median()) if norms.numel() else math.nan


def summarize_attack(model: nn.Module, x: Tensor, y: Tensor, result: AttackResult,
                     batch_size: int = 256) -> dict[str, Any]:
    """Every metric of one attack run, as a flat dict (one batched pass over ``x`` and ``x_adv``).

    Returns:
        ``n``, ``clean_accuracy``, ``robust_accuracy``, ``attack_success_rate`` (of the attack's
        own goal: misclassification or target reached), ``fooling_rate``, ``rmse``,
        ``rmse_successful`` (over successful samples only), ``mean_norm`` and ``median_norm``
        (successful samples), ``max_norm`` (all samples), ``mean_margin`` and ``queries``.
    """
    clean_pred = predict(model, x, batch_size)
    adv_pred = predict(model, result.x_adv, batch_size)
    correct = clean_pred == y
    return {
        "n": int(x.shape[0]),
        "clean_accuracy": float(correct.float().mean()),
        "robust_accuracy": robust_accuracy(result, correct),
        "attack_success_rate": result.success_rate,
        "fooling_rate": fooling_rate(clean_pred, adv_pred),
        "rmse": rmse(x, result.x_adv),
        "rmse_successful": rmse(x, result.x_adv, result.success),
        "mean_norm": mean_norm(result),
        "median_norm": median_norm(result),
        "max_norm": float(result.norm.max()),
        "mean_margin": float(result.margin.mean()),
        "queries": int(result.queries),
    }


def merge_results(results: Sequence[AttackResult]) -> AttackResult:
    """Concatenate the results of consecutive batches into one (queries add up).

    ``info`` entries that are per-sample tensors are concatenated; others are kept as a list
    with one value per batch.
    """
    if not results:
        raise InvalidInputError("merge_results needs at least one AttackResult. Got none.")

    def cat(values: Sequence[Tensor | None]) -> Tensor | None:
        return None if any(v is None for v in values) else torch.cat(
            [v for v in values if v is not None])

    info: dict[str, Any] = {}
    for key in results[0].info:
        values = [r.info.get(key) for r in results]
        tensors = all(torch.is_tensor(v) and v.dim() > 0 for v in values)
        info[key] = cat(values) if tensors else values
    return AttackResult(
        x_adv=torch.cat([r.x_adv for r in results]),
        success=torch.cat([r.success for r in results]),
        margin=torch.cat([r.margin for r in results]),
        norm=torch.cat([r.norm for r in results]),
        queries=sum(r.queries for r in results),
        target=cat([r.target for r in results]),
        exhausted=cat([r.exhausted for r in results]),
        info=info,
    )


@dataclass(frozen=True)
class AttackRun:
    """An attack run over a dataset: the inputs, the merged result and the wall time.

    Attributes:
        x: (N, ...) clean inputs; y: (N,) labels; result: merged :class:`AttackResult`;
        seconds: wall time of the attack calls.
    """

    x: Tensor
    y: Tensor
    result: AttackResult
    seconds: float

    def summary(self, model: nn.Module) -> dict[str, Any]:
        """:func:`summarize_attack` of this run, plus ``seconds``."""
        return {**summarize_attack(model, self.x, self.y, self.result), "seconds": self.seconds}


def _tensors(data: Any) -> tuple[Tensor, Tensor]:
    if isinstance(data, Mapping):
        data = (data["x"], data["y"])
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1]
    if torch.is_tensor(getattr(data, "x", None)) and torch.is_tensor(getattr(data, "y", None)):
        return data.x, data.y
    raise InvalidInputError(
        "'data' must be an advrobust Dataset (with .x and .y tensors) or a pair (x, y). "
        f"Got {type(data).__name__} instead.")


def evaluate_attack(model: nn.Module, attack: Attack, data: Any, threat: LpBall,
                    batch_size: int = 100, target: int | Tensor | None = None,
                    generator: torch.Generator | None = None,
                    progress: bool = False,
                    on_batch: Callable[[int, AttackResult, float], None] | None = None
                    ) -> AttackRun:
    """Run ``attack`` over a whole dataset in batches and merge the results.

    Args:
        model: classifier returning logits.
        attack: a configured attack.
        data: an advrobust ``Dataset`` or a pair ``(x, y)`` of tensors (N, ...), (N,).
        threat: the threat set.
        batch_size: samples per attack call.
        target: a class for every sample (int) or per-sample targets (N,), for targeted runs.
        generator: one random stream shared by the batches (reproducible runs).
        progress: show a progress bar over batches.
        on_batch: called after each batch with its first sample's index, its result and its
            seconds (e.g. to write finished batches to disk as they come).

    Returns:
        AttackRun with the inputs and the merged result.
    """
    check_int(batch_size, "batch_size", "evaluate_attack", low=1)
    x, y = _tensors(data)
    if isinstance(target, int):
        target = torch.full_like(y, target)
    starts = range(0, x.shape[0], batch_size)
    results = []
    begin = time.perf_counter()
    for i in progress_bar(starts, desc=type(attack).__name__, disable=not progress, unit="batch"):
        sl = slice(i, i + batch_size)
        tic = time.perf_counter()
        results.append(attack(model, x[sl], y[sl], threat,
                              target=None if target is None else target[sl],
                              generator=generator))
        if on_batch is not None:
            on_batch(i, results[-1], time.perf_counter() - tic)
    return AttackRun(x=x, y=y, result=merge_results(results),
                     seconds=time.perf_counter() - begin)
