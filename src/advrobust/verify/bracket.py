"""The running bracket of a verification run: per sample and spec row, the best sound lower
bound and the lowest value seen at a point of the set, merged over the stages.

Stages only raise lower bounds (:meth:`Bracket.raise_lower`) or offer points, which go through
the problem's one witness gate (projection onto the exact set, float64 re-evaluation, zero
tolerance; :meth:`Bracket.offer`). Verdicts come from
:func:`~advrobust.core.result.decide_verdicts` only (an inconsistency is UNKNOWN with a warning).
"""

from __future__ import annotations

from collections.abc import Sequence
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
        found_by: per sample the stage (attack member) that found ``witness`` (None: clean).
        lowers: per sample, per stage, the best lower bound on the lowest row that stage
            reached (rows it did not bound count with the bracket's bound).
        seconds: per sample, per stage, wall seconds (a batched call's time shared out).
        black_box: names of the attacks that reported using no gradients.
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
        self.found_by: list[str | None] = [None] * x.shape[0]
        self.lowers: list[dict[str, float]] = [{} for _ in range(x.shape[0])]
        self.seconds: list[dict[str, float]] = [{} for _ in range(x.shape[0])]
        self.black_box: set[str] = set()
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

    def offer(self, idx: Tensor, points: Tensor, by: str | Sequence[str | None] | None = None
              ) -> None:
        """Pass candidate points through the witness gate; keep the better ones (found by
        ``by``: one name, or one per sample)."""
        p = self.problem
        points, values = p.gate(p.x[idx], points, p.threat, p.spec_of(idx))
        self.accept(idx, points, values, by)

    def accept(self, idx: Tensor, points: Tensor, values: Tensor,
               by: str | Sequence[str | None] | None = None) -> None:
        """Keep the gated points (inside this problem's set; float64 ``values`` (N', K) from
        the gate) that are better than the witnesses held."""
        names = list(by) if isinstance(by, (list, tuple)) else [by] * idx.numel()
        self.upper[idx] = torch.minimum(self.upper[idx], values)
        better = values.amin(1) < self.values[idx].amin(1)
        self.values[idx[better]] = values[better]
        self.witness[idx[better]] = points[better].to(self.witness)
        for j in better.nonzero().flatten().tolist():
            self.found_by[int(idx[j])] = names[j]  # type: ignore[assignment]

    def raise_lower(self, idx: Tensor, lower: Tensor, rows: Tensor | None = None,
                    stage: str | None = None) -> None:
        """Merge lower bounds (N', K) of samples ``idx``, or (1, R) of rows ``rows`` of one;
        with ``stage``, credited to it in :attr:`lowers`."""
        lower = lower.to(self.lower)
        if rows is None:
            self.lower[idx] = torch.maximum(self.lower[idx], lower)
            full = lower
        else:
            i = int(idx[0])
            self.lower[i, rows] = torch.maximum(self.lower[i, rows], lower[0])
            full = self.lower[idx].clone()
            full[0, rows] = lower[0]
        if stage is not None:
            for j, i in enumerate(idx.tolist()):
                best = self.lowers[i].get(stage, -float("inf"))
                self.lowers[i][stage] = max(best, float(full[j].amin()))

    def take(self, idx: Tensor, result: BoundResult, rows: Tensor | None = None,
             stage: str | None = None, *, gated: bool = False) -> None:
        """Merge a bounder's result on samples ``idx`` (rows ``rows`` of one sample), crediting
        ``stage`` with its bounds and witnesses.

        ``gated``: the bounder ran with this problem's gate, so its witness values (every row,
        ``stats["witness_values"]``) came through it already and are not evaluated again."""
        self.raise_lower(idx, result.lower, rows, stage)
        if result.witness is None:
            return
        values = result.stats.get("witness_values")
        if gated and rows is None and isinstance(values, Tensor) \
                and values.shape == self.values[idx].shape:
            self.accept(idx, result.witness.detach(), values.to(self.values), stage)
        else:
            self.offer(idx, result.witness.detach(), stage)

    def charge(self, idx: Tensor, stage: str, seconds: float) -> None:
        """Share ``seconds`` of ``stage`` out over samples ``idx``."""
        share = seconds / max(1, idx.numel())
        for i in idx.tolist():
            self.seconds[i][stage] = self.seconds[i].get(stage, 0.0) + share

    def mark(self, stage: str) -> None:
        """Credit ``stage`` with the samples it decided."""
        for i, v in enumerate(self.verdicts()):
            if v is not Verdict.UNKNOWN and not self.decided_by[i]:
                self.decided_by[i] = stage

    def skip(self, stage: str, why: str) -> None:
        """Record that the budget (or the policy) left ``stage`` out."""
        self.stats.setdefault("skipped", []).append(f"{stage}: {why}")
