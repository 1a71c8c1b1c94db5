"""The result of :func:`advrobust.evaluation.verify.verify_dataset`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from advrobust.core.result import Verdict
from advrobust.core.threat import LpBall

__all__ = ["VerifyReport"]


@dataclass(frozen=True)
class VerifyReport:
    """Per-sample verdicts and bounds of a verification run.

    Attributes:
        verdict: one :class:`Verdict` per sample.
        lower: (N, K) best sound lower bound of each spec row's minimum over the set
            (``-inf`` where no method bounded it).
        upper: (N, K) lowest value of each row seen at a point of the set (real model).
        witness: (N, ...) per sample, the point of the set with the lowest spec value found
            (the clean input when nothing lower was found); for FALSIFIED samples a
            counterexample re-checked through the model.
        decided_by: per sample the stage that decided it (``"clean"``, ``"crown"``, ``"pgd"``,
            ``"milp"``, ...), ``""`` if UNKNOWN.
        clean_values: (N, K) spec values at the clean inputs.
        method: the method asked for.
        threat: the threat set.
        seconds: wall time of the whole run.
        stage_seconds: wall time per stage.
        stats: per-stage details: ``"bab"`` / ``"milp"`` map a sample index to its per-row
            log (status, lower bound, domains explored, solver status, seconds), ``"attack"``
            the runs made, ``"skipped"`` the stages the budget left out and why.
    """

    verdict: tuple[Verdict, ...]
    lower: Tensor
    upper: Tensor
    witness: Tensor
    decided_by: tuple[str, ...]
    clean_values: Tensor
    method: str
    threat: LpBall
    seconds: float
    stage_seconds: Mapping[str, float] = field(default_factory=dict)
    stats: Mapping[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Number of samples."""
        return len(self.verdict)

    def _count(self, verdict: Verdict) -> int:
        return sum(v is verdict for v in self.verdict)

    @property
    def verified(self) -> int:
        """Samples proved robust."""
        return self._count(Verdict.VERIFIED)

    @property
    def falsified(self) -> int:
        """Samples with a re-checked counterexample (misclassified clean inputs included)."""
        return self._count(Verdict.FALSIFIED)

    @property
    def unknown(self) -> int:
        """Samples neither proved nor broken."""
        return self._count(Verdict.UNKNOWN)

    @property
    def margin_lower(self) -> Tensor:
        """(N,) lower bound on the worst-case margin (minimum over spec rows)."""
        return self.lower.amin(dim=1)

    @property
    def margin_upper(self) -> Tensor:
        """(N,) upper bound on the worst-case margin."""
        return self.upper.amin(dim=1)

    @property
    def clean_accuracy(self) -> float:
        """Fraction of clean inputs satisfying the spec (correctly classified)."""
        return int((self.clean_values.amin(dim=1) > 0).sum()) / max(self.n, 1)

    @property
    def certified_accuracy(self) -> float:
        """Fraction VERIFIED: a lower bound on the true robust accuracy."""
        return self.verified / max(self.n, 1)

    @property
    def robust_accuracy_upper(self) -> float:
        """Fraction not FALSIFIED: an upper bound on the true robust accuracy."""
        return (self.n - self.falsified) / max(self.n, 1)

    @property
    def mean_lower_bound(self) -> float:
        """Mean over samples of :attr:`margin_lower` (``-inf`` if some sample was not bounded)."""
        return float(self.margin_lower.mean())

    def summary(self) -> dict[str, Any]:
        """The headline numbers as plain Python values (what the CLI prints)."""
        return {
            "method": self.method, "threat": str(self.threat), "n": self.n,
            "verified": self.verified, "falsified": self.falsified, "unknown": self.unknown,
            "clean_accuracy": self.clean_accuracy,
            "certified_accuracy": self.certified_accuracy,
            "robust_accuracy_upper": self.robust_accuracy_upper,
            "mean_lower_bound": self.mean_lower_bound, "seconds": self.seconds,
            "stage_seconds": dict(self.stage_seconds),
            "decided_by": {s: self.decided_by.count(s) for s in sorted(set(self.decided_by))
                           if s},
        }

    def verdict_mask(self, verdict: Verdict) -> Tensor:
        """(N,) bool: samples with ``verdict``."""
        return torch.tensor([v is verdict for v in self.verdict], dtype=torch.bool)
