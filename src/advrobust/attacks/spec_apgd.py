"""Targeted APGD on every row of a specification at once (Croce & Hein, ICML 2020).

A specification asks ``C f(x) + d > 0`` row by row (label margins ``f_y - f_t``, or a VNNLIB
property's output constraints). Minimising the smallest row, as untargeted margin PGD does,
chases whichever row is lowest at the current point and stalls on networks with near one-hot
logits; APGD-T's cure is to attack one target at a time. Here every row gets its own copy of
the input and its own APGD run on that row's value alone (the targeted margin loss generalised
to any row), all copies in one batch; random restarts inside the set run on the samples not
yet broken, until the steps run out or a deadline passes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from advrobust.attacks.apgd import _APGDBase
from advrobust.attacks.base import AttackOutput, Oracle
from advrobust.core._validation import check_int
from advrobust.core.modes import eval_mode
from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall
from advrobust.errors import InvalidInputError

__all__ = ["RowAttackResult", "SpecAPGD"]


@dataclass(frozen=True)
class RowAttackResult:
    """What :meth:`SpecAPGD.minimize` returns.

    Attributes:
        points: (N, ...) per sample the point of the set with the lowest spec value found (the
            clean input if nothing lower was found).
        values: (N, K) spec values at ``points``, recomputed by the model.
        restarts: APGD runs completed (0 when the deadline left no room for one).
        steps: iterations per run actually used (fewer than configured to fit a deadline).
        queries: forward plus backward passes (each over the whole batch of copies).
        seconds: wall time.
    """

    points: Tensor
    values: Tensor
    restarts: int
    steps: int
    queries: int
    seconds: float


class SpecAPGD(_APGDBase):
    """APGD with one copy per spec row, each minimising its row (targeted APGD, any rows).

    As an :class:`~advrobust.attacks.Attack` (``attack(model, x, y, threat)``) the rows are the
    label margins ``f_y - f_t``, i.e. a targeted run towards every other class in one batch
    (towards ``target`` only, if given). :meth:`minimize` takes any :class:`Spec`.

    Args:
        steps: iterations per run (100 in AutoAttack).
        restarts: runs from random points of the set, each on the samples not yet broken.
        rho: step-size-halving threshold (0.75).
        random_start: start each run from a uniform point of the set (else the clean input).
        min_steps: with a deadline, the fewest iterations worth a run (fewer: stop).

    Shapes: x (N, ...), spec C (N, K, classes) and d (N, K); returns points (N, ...).
    """

    targeted: ClassVar[bool] = True

    def __init__(self, *, steps: int = 100, restarts: int = 2, rho: float = 0.75,
                 random_start: bool = True, min_steps: int = 10) -> None:
        self.steps = steps
        self.restarts = restarts
        self.rho = rho
        self.random_start = random_start
        self.min_steps = min_steps
        self._check_common(steps, restarts, rho, random_start)
        check_int(min_steps, "min_steps", "SpecAPGD", low=1)

    def _run(self, oracle: Oracle, x: Tensor, y: Tensor, threat: LpBall, target: Tensor | None,
             generator: torch.Generator | None, clean_logits: Tensor) -> AttackOutput:
        spec = Spec.margins(y, clean_logits.shape[1])
        if target is not None:  # the one row e_y - e_target
            spec = Spec.from_matrix(spec.C.new_zeros(x.shape[0], 1, clean_logits.shape[1])
                                    .scatter(2, y.view(-1, 1, 1), 1.0)
                                    .scatter(2, target.view(-1, 1, 1), -1.0))
        points, values, *_ = self._rows(oracle, x, threat, spec, generator, math.inf,
                                        clean_logits)
        return AttackOutput(points, exhausted=values.amin(1) >= 0)

    def minimize(self, model: nn.Module, x: Tensor, threat: LpBall, spec: Spec, *,
                 generator: torch.Generator | None = None,
                 deadline: float | None = None) -> RowAttackResult:
        """Search the set for points where some row of ``spec`` is negative.

        Args:
            model: classifier returning logits (put in eval mode for the call, restored).
            x: clean inputs (N, ...).
            threat: the set around each input.
            spec: the rows, C (N, K, classes).
            generator: random source of the starts.
            deadline: a ``time.perf_counter()`` value; runs are shortened (or skipped) so the
                call ends before it, as measured by the cost of the first step.

        Returns:
            :class:`RowAttackResult`.

        Raises:
            InvalidInputError: a spec that does not fit the batch or the model's outputs.
        """
        start = time.perf_counter()
        with eval_mode(model, who="SpecAPGD"), torch.no_grad():
            clean_logits = model(x)
        spec.check(x.shape[0], clean_logits.shape[1])
        if not bool(torch.isfinite(x).all()):
            raise InvalidInputError("'x' of SpecAPGD.minimize contains NaN or inf values.")
        oracle = Oracle(model)
        with eval_mode(model, who="SpecAPGD"):
            points, values, runs, steps = self._rows(
                oracle, x.detach(), threat, spec, generator,
                math.inf if deadline is None else deadline, clean_logits)
        return RowAttackResult(points, values, runs, steps, oracle.queries,
                               time.perf_counter() - start)

    # ------------------------------------------------------------------ the search
    def _rows(self, oracle: Oracle, x: Tensor, threat: LpBall, spec: Spec,
              generator: torch.Generator | None, deadline: float, clean_logits: Tensor
              ) -> tuple[Tensor, Tensor, int, int]:
        """Best points (N, ...) and their spec values (N, K); runs done; steps per run."""
        n, k = spec.C.shape[:2]
        best, best_values = x.clone(), spec.apply(clean_logits)
        sample = torch.arange(n, device=x.device).repeat_interleave(k)  # copy -> sample
        row = torch.arange(k, device=x.device).repeat(n)  # copy -> row
        c, d = spec.C.to(x)[sample, row], spec.d.to(x)[sample, row]  # (n k, classes), (n k,)
        runs, used, per_step = 0, 0, 0.0
        for _ in range(self.restarts):
            todo = (best_values[sample].amin(1) >= 0).nonzero().flatten()
            if todo.numel() == 0:
                break
            ci, di = c[todo], d[todo]

            def row_value(logits: Tensor, ci: Tensor = ci, di: Tensor = di) -> Tensor:
                return (logits * ci).sum(1) + di

            steps = self.steps
            if not math.isinf(deadline):
                if not per_step:  # a short run measures the cost of a step (and searches too)
                    per_step = self._run_once(oracle, x, threat, spec, sample[todo], row_value,
                                              self.min_steps, generator, best, best_values)
                steps = min(self.steps, int((deadline - time.perf_counter()) / per_step))
            if steps < self.min_steps:
                break
            per_step = self._run_once(oracle, x, threat, spec, sample[todo], row_value, steps,
                                      generator, best, best_values)
            used, runs = steps, runs + 1
        return best, best_values, runs, used

    def _run_once(self, oracle: Oracle, x: Tensor, threat: LpBall, spec: Spec, owner: Tensor,
                  row_value: Callable[[Tensor], Tensor], steps: int,
                  generator: torch.Generator | None, best: Tensor, best_values: Tensor
                  ) -> float:
        """One APGD run of ``steps`` on the copies of ``owner``; returns seconds per step
        (a quarter more, for the machine's jitter)."""
        run = type(self)(steps=steps, restarts=1, rho=self.rho, random_start=self.random_start)
        t0 = time.perf_counter()
        adv, _ = run._single_run(oracle, x[owner], threat, lambda logits: -row_value(logits),
                                 row_value, generator)
        self._keep_best(oracle, spec, owner, adv, best, best_values)
        return 1.25 * (time.perf_counter() - t0) / steps

    @staticmethod
    def _keep_best(oracle: Oracle, spec: Spec, owner: Tensor, adv: Tensor, best: Tensor,
                   best_values: Tensor) -> None:
        """Re-evaluate every copy's point on all rows of its sample; keep each sample's best."""
        values = Spec(spec.C[owner], spec.d[owner]).apply(oracle(adv))  # (copies, K)
        for s in owner.unique().tolist():
            mine = (owner == s).nonzero().flatten()
            j = mine[values[mine].amin(1).argmin()]
            if float(values[j].amin()) < float(best_values[s].amin()):
                best[s], best_values[s] = adv[j], values[j]

