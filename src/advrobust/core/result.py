"""Result types: frozen dataclasses with fixed fields, and the only place verdicts are made."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
from torch import Tensor

__all__ = ["AttackResult", "BoundResult", "Verdict", "decide_verdicts", "VERIFY_TOLERANCE"]

#: A lower bound must exceed this before a sample is called VERIFIED. The verifiers compute in
#: float64 and subtract a rounding allowance that scales with the magnitude of the terms of each
#: bound (:mod:`advrobust.relax._rounding`), so their lower bounds already carry the relative
#: part of the tolerance; this absolute floor is a further margin on top.
VERIFY_TOLERANCE = 1e-4

#: Relative slack of the consistency check "lower bound <= value at an evaluated point".
_CONSISTENCY_RTOL = 1e-9


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
            raise ValueError(f"{self.method}: lower bounds {tuple(self.lower.shape)} and upper "
                             f"bounds {tuple(self.upper.shape)} must have the same shape")

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
                    tolerance: float = VERIFY_TOLERANCE, *, upper: Tensor | None = None,
                    who: str = "verifier") -> tuple[Verdict, ...]:
    """The single rule turning bounds into verdicts.

    Args:
        lower: (N, K) sound lower bounds on each spec row's minimum over the set.
        witness_values: (N, K) spec values ``C f(w) + d`` recomputed by the real model at a
            witness inside the set (caller's duty: the witness gate), or None.
        tolerance: margin a lower bound must clear to count as a proof.
        upper: (N, K) values at evaluated points of the set, checked against ``lower``.
        who: the method, named in warnings.

    Returns:
        VERIFIED where ``min_k lower > tolerance``; FALSIFIED where some witness value < 0;
        UNKNOWN otherwise. A sample that fails an internal consistency check (proved and
        falsified at once; a lower bound above the value at an evaluated point) is UNKNOWN, with
        a warning naming the check: some bound or evaluation was wrong, and neither side is
        trusted.
    """
    proved = lower.amin(dim=1) > tolerance
    broken = (torch.zeros_like(proved) if witness_values is None
              else (witness_values.amin(dim=1) < 0))
    bad = _inconsistent(lower, witness_values, upper, proved, broken, who)
    return tuple(Verdict.UNKNOWN if x else Verdict.VERIFIED if p else
                 Verdict.FALSIFIED if b else Verdict.UNKNOWN
                 for p, b, x in zip(proved.tolist(), broken.tolist(), bad.tolist(), strict=True))


def _inconsistent(lower: Tensor, values: Tensor | None, upper: Tensor | None, proved: Tensor,
                  broken: Tensor, who: str) -> Tensor:
    """(N,) samples failing a consistency check; warns once per failed check."""
    bad = proved & broken
    if bool(bad.any()):
        _warn(who, "a sample is both proved and falsified", bad)
    for name, ref in (("lower bound above an evaluated point's value", upper),
                      ("lower bound above the witness's value", values)):
        if ref is None:
            continue
        ref = ref.to(lower.device)
        above = (lower.to(ref.dtype) > ref + _CONSISTENCY_RTOL * (1 + ref.abs())).any(dim=1)
        if bool(above.any()):
            _warn(who, name, above)
            bad = bad | above
    return bad


def _warn(who: str, check: str, mask: Tensor) -> None:
    idx = mask.nonzero().flatten()[:10].tolist()
    warnings.warn(
        f"{who}: internal consistency check failed ({check}) at samples {idx}: a bound or an "
        "evaluation is wrong (floating-point trouble on this network?); these samples are "
        "reported UNKNOWN.", RuntimeWarning, stacklevel=3)
