"""The running bracket of a verification run: per sample and spec row, the best sound lower
bound and the lowest value seen at a point of the set, merged over the stages.

Stages only raise lower bounds (:meth:`Bracket.raise_lower`) or offer points, which go through
the problem's one witness gate (projection onto the exact set, float64 re-evaluation, zero
tolerance; :meth:`Bracket.offer`). Verdicts come from
:func:`~advrobust.core.result.decide_verdicts` only (an inconsistency is UNKNOWN with a warning).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from advrobust.core.result import VERIFY_TOLERANCE, BoundResult, Verdict, decide_verdicts
from advrobust.verify.problem import Problem

__all__ = ["Bracket"]


class Bracket:
    """Best lower bounds and best witness per sample of a :class:`Problem`.

    Attributes:
        problem: the problem.
        lower: (N, K) float64 best sound lower bound of each row (``-inf`` where unbounded).
        upper: (N, K) lowest value of each row seen at a point of the set.
        witness: (N, ...) per sample the point with the lowest spec value found.
        values: (N, K) the spec values at ``witness``.
        decided_by: per sample the stage that decided it (``""`` while UNKNOWN).
        stats: per-stage details (see :class:`~advrobust.evaluation.VerifyReport`).
        stage_seconds: wall time per stage.
    """

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        x = problem.x
        self.witness, self.values = problem.gate(x, x, problem.threat, problem.spec)
        self.lower = torch.full_like(self.values, -torch.inf)
        self.upper = self.values.clone()
        self.decided_by = [""] * x.shape[0]
        self.stats: dict[str, Any] = {}
        self.stage_seconds: dict[str, float] = {}
        self.bound_seconds = 0.0  # one relaxation pass, per sample (measured by the first stage)
        self.exact_seconds: dict[int, float] = {}  # per sample, spent in exact stages
        self.exact_overrun = 0.0  # most seconds an exact method ran past the time it was given

    def verdicts(self) -> tuple[Verdict, ...]:
        return decide_verdicts(self.lower, self.values, upper=self.upper, who="verify")

    def undecided(self) -> Tensor:
        """(N,) bool: samples still UNKNOWN."""
        return torch.tensor([v is Verdict.UNKNOWN for v in self.verdicts()], dtype=torch.bool)

    def open_rows(self, i: int) -> Tensor:
        """Row indices of sample ``i`` that no stage has proved yet."""
        return (self.lower[i] <= VERIFY_TOLERANCE).nonzero().flatten()

    def offer(self, idx: Tensor, points: Tensor) -> None:
        """Pass candidate points through the witness gate; keep the better ones."""
        p = self.problem
        points, values = p.gate(p.x[idx], points, p.threat, p.spec_of(idx))
        self.upper[idx] = torch.minimum(self.upper[idx], values)
        better = values.amin(1) < self.values[idx].amin(1)
        self.values[idx[better]] = values[better]
        self.witness[idx[better]] = points[better].to(self.witness)

    def raise_lower(self, idx: Tensor, lower: Tensor, rows: Tensor | None = None) -> None:
        """Merge lower bounds (N', K) of samples ``idx``, or (1, R) of rows ``rows`` of one."""
        if rows is None:
            self.lower[idx] = torch.maximum(self.lower[idx], lower.to(self.lower))
        else:
            i = int(idx[0])
            self.lower[i, rows] = torch.maximum(self.lower[i, rows], lower[0].to(self.lower))

    def take(self, idx: Tensor, result: BoundResult, rows: Tensor | None = None) -> None:
        """Merge a bounder's result on samples ``idx`` (rows ``rows`` of one sample)."""
        self.raise_lower(idx, result.lower, rows)
        if result.witness is not None:
            self.offer(idx, result.witness.detach())

    def mark(self, stage: str) -> None:
        """Credit ``stage`` with the samples it decided."""
        for i, v in enumerate(self.verdicts()):
            if v is not Verdict.UNKNOWN and not self.decided_by[i]:
                self.decided_by[i] = stage

    def skip(self, stage: str, why: str) -> None:
        """Record that the budget (or the policy) left ``stage`` out."""
        self.stats.setdefault("skipped", []).append(f"{stage}: {why}")
