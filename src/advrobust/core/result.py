"""Result types: frozen dataclasses with fixed fields, and the only place verdicts are made."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
from torch import Tensor

__all__ = ["AttackResult", "BoundResult", "Verdict", "decide_verdicts", "VERIFY_TOLERANCE"]

#: A lower bound must exceed this before a sample is called VERIFIED. It covers the float32
#: rounding of bound passes on networks of the sizes we handle (relative errors ~1e-6 on logits
#: of magnitude ~10-100).
VERIFY_TOLERANCE = 1e-4


class Verdict(str, Enum):
    """Outcome of verifying one sample."""

    VERIFIED = "verified"
    FALSIFIED = "falsified"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class AttackResult:
    """What an attack found, re-checked through the real model.

    Attributes:
        x_adv: (N, ...) adversarial inputs, inside the threat set.
        success: (N,) bool, recomputed by one batched forward of the model on ``x_adv``:
            misclassified (untargeted) or classified as ``target`` (targeted).
        margin: (N,) ``f_y - max_{t != y} f_t`` at ``x_adv`` (negative = misclassified).
        norm: (N,) perturbation size in the threat's norm.
        queries: forward plus backward passes of the model used (a batched pass counts once).
        target: (N,) target classes of a targeted run, else None.
        exhausted: (N,) bool, True where the attack stopped on its budget without success.
        info: extra per-method facts (e.g. which attack of an ensemble broke each sample).
    """

    x_adv: Tensor
    success: Tensor
    margin: Tensor
    norm: Tensor
    queries: int
    target: Tensor | None = None
    exhausted: Tensor | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        """Fraction of samples on which the attack succeeded."""
        return float(self.success.float().mean())


@dataclass(frozen=True)
class BoundResult:
    """A bracket on the worst-case value of every spec row of every sample.

    Attributes:
        lower: (N, K) lower bounds on ``min_{x' in S(x)} (C f(x') + d)_k``.
        upper: (N, K) upper bounds on the same minima (values at concrete points of the set).
        verdict: one :class:`Verdict` per sample.
        witness: (N, ...) the best concrete point found per sample (inside the set); a sample is
            FALSIFIED only if the model's own output at its witness violates the spec.
        method: name of the method that produced the bounds.
        stats: timings, solver statuses, counts.
    """

    lower: Tensor
    upper: Tensor
    verdict: tuple[Verdict, ...]
    witness: Tensor | None
    method: str
    stats: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.lower.shape != self.upper.shape:
            raise AssertionError("lower and upper bounds must have the same shape")
        bad = self.lower > self.upper + 1e-4 * (1 + self.upper.abs())
        if bool(bad.any()):
            raise AssertionError(f"{self.method}: lower bound above upper bound (unsound)")

    @property
    def verified(self) -> Tensor:
        """(N,) bool: samples proved robust."""
        return torch.tensor([v is Verdict.VERIFIED for v in self.verdict], dtype=torch.bool)

    @property
    def falsified(self) -> Tensor:
        """(N,) bool: samples with a re-checked counterexample."""
        return torch.tensor([v is Verdict.FALSIFIED for v in self.verdict], dtype=torch.bool)

    @property
    def margin_lower(self) -> Tensor:
        """(N,) lower bound on the worst-case margin (min over spec rows)."""
        return self.lower.amin(dim=1)

    @property
    def margin_upper(self) -> Tensor:
        """(N,) upper bound on the worst-case margin."""
        return self.upper.amin(dim=1)


def decide_verdicts(lower: Tensor, witness_values: Tensor | None,
                    tolerance: float = VERIFY_TOLERANCE) -> tuple[Verdict, ...]:
    """The single rule turning bounds into verdicts.

    Args:
        lower: (N, K) sound lower bounds on each spec row's minimum over the set.
        witness_values: (N, K) spec values ``C f(w) + d`` recomputed by the real model at a
            witness inside the set (caller's duty: ``threat.contains`` checked), or None.
        tolerance: margin a lower bound must clear to count as a proof.

    Returns:
        VERIFIED where ``min_k lower > tolerance``; FALSIFIED where some witness value < 0;
        UNKNOWN otherwise. If both held (only possible with an unsound bound) the sample is
        reported UNKNOWN and an AssertionError is raised, since that is a bug.
    """
    proved = lower.amin(dim=1) > tolerance
    broken = (torch.zeros_like(proved) if witness_values is None
              else (witness_values.amin(dim=1) < 0))
    if bool((proved & broken).any()):
        raise AssertionError("a sample is both proved and falsified: a bound is unsound")
    return tuple(Verdict.VERIFIED if p else Verdict.FALSIFIED if b else Verdict.UNKNOWN
                 for p, b in zip(proved.tolist(), broken.tolist(), strict=True))
