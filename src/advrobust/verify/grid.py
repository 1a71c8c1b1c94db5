"""A configured list of stages run over one problem or a grid of nested ones (an eps grid).

A :class:`Step` names one stage: a bound (``ibp``, ``crown-ibp``, ``crown``, ``lp``: batched
over the open samples), an attack (any :class:`~advrobust.attacks.Attack`, built per set, with
its own random source per set) or an exact method (``bab``, ``milp``: sample by sample on the
rows no earlier stage proved, from the cached CROWN layer bounds, with its own per-sample time
limit). :func:`run_grid` runs the steps of a :class:`~advrobust.verify.Policy` in order on the
problems of :meth:`Problem.along <advrobust.verify.Problem.along>` (ascending radii, one
:class:`~advrobust.verify.Bracket` each) and hands results along the grid:

- a lower bound over a ball is one over every smaller ball: bounds run from the largest radius
  down, and a sample verified at eps stays verified (and is not bounded again) as eps shrinks;
- a point of a ball lies in every larger ball: attacks and exact methods run from the smallest
  radius up, and a sample broken at eps stays broken as eps grows.

Witnesses enter each bracket through the problem's one gate (projected onto the exact set,
float64 values, zero tolerance); verdicts are the brackets' (:func:`~advrobust.core.result.
decide_verdicts`). The robustness campaign (:mod:`advrobust.evaluation.campaign.cascade`) runs
its tasks this way; :func:`advrobust.verify.run` runs a policy with steps as a grid of one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from advrobust.core.modes import eval_mode
from advrobust.core.progress import progress_bar
from advrobust.core.threat import LpBall
from advrobust.errors import InvalidInputError, InvalidParameterError
from advrobust.verify.bracket import Bracket
from advrobust.verify.budget import Budget
from advrobust.verify.cascade import Policy, make_bounder
from advrobust.verify.problem import Problem
from advrobust.verify.stages import attack_stage, exact_stage, relax_stage

__all__ = ["BOUND_STEPS", "EXACT_STEPS", "Step", "carry_down", "carry_up", "run_grid"]

BOUND_STEPS = ("ibp", "crown-ibp", "crown", "lp")
EXACT_STEPS = ("bab", "milp")


@dataclass(frozen=True)
class Step:
    """One configured stage of a :class:`~advrobust.verify.Policy`.

    Attributes:
        kind: ``"bound"``, ``"attack"`` or ``"exact"``.
        name: the bounder (:data:`BOUND_STEPS`) or exact method (:data:`EXACT_STEPS`); for an
            attack, the label its points and decisions are credited to.
        attack: for an attack step, ``attack(threat) -> Attack``: the attack of each set.
        generator: for an attack step, ``generator(k) -> torch.Generator``: the random source
            on the ``k``-th set of the grid (None: unseeded).
        time_limit: seconds per sample of an exact step (and the LP); None: the policy's.
    """

    kind: str
    name: str
    attack: Callable[[LpBall], Any] | None = None
    generator: Callable[[int], torch.Generator] | None = None
    time_limit: float | None = None

    def __post_init__(self) -> None:
        names = {"bound": BOUND_STEPS, "exact": EXACT_STEPS}
        if self.kind == "attack":
            if self.attack is None:
                raise InvalidParameterError(f"Step {self.name!r}: an attack step needs "
                                            "'attack' (threat -> Attack).")
        elif self.kind not in names:
            raise InvalidParameterError(f"Step.kind must be one of {{bound, attack, exact}}. "
                                        f"Got {self.kind!r}.")
        elif self.name not in names[self.kind]:
            raise InvalidParameterError(f"Step.name of a {self.kind} step must be one of "
                                        f"{set(names[self.kind])}. Got {self.name!r}.")


def carry_down(brackets: Sequence[Bracket], e: int) -> None:
    """Lower bounds of set ``e`` hold on every smaller set (``brackets[:e]``)."""
    src = brackets[e]
    for dst in brackets[:e]:
        dst.lower = torch.maximum(dst.lower, src.lower)
        for mine, theirs in zip(dst.lowers, src.lowers, strict=True):
            for stage, value in theirs.items():
                mine[stage] = max(mine.get(stage, -float("inf")), value)


def carry_up(brackets: Sequence[Bracket], e: int) -> None:
    """Witnesses of set ``e`` (gated onto it) lie in every larger set (``brackets[e+1:]``)."""
    src = brackets[e]
    idx = torch.arange(src.problem.num_samples, device=src.witness.device)
    for dst in brackets[e + 1:]:
        dst.accept(idx, src.witness, src.values, src.found_by)


def _check_grid(problems: Sequence[Problem]) -> None:
    if not problems:
        raise InvalidInputError("run_grid: 'problems' is empty.")
    first = problems[0]
    for p in problems[1:]:
        if p.x is not first.x or p.spec is not first.spec or p.threat.norm is not \
                first.threat.norm or (p.threat.lo, p.threat.hi) != (first.threat.lo,
                                                                   first.threat.hi):
            raise InvalidInputError("run_grid: the problems must be one problem's "
                                    "Problem.along(radii) (same inputs, spec, norm and box).")
    radii = [p.threat.eps for p in problems]
    if radii != sorted(radii):
        raise InvalidInputError(f"run_grid: the radii must ascend. Got {radii!r}.")


def run_grid(problems: Sequence[Problem], policy: Policy, budget: Budget | None = None
             ) -> list[Bracket]:
    """Run the steps of ``policy`` (:attr:`Policy.stages`) on nested problems.

    Args:
        problems: :meth:`Problem.along <advrobust.verify.Problem.along>`'s problems (radii
            ascending); one problem for a plain run.
        policy: its ``stages`` (:class:`Step`), ``time_limit``, ``threads``, ``batch_size``,
            ``progress`` (and ``bar``: the exact steps' progress bar over the grid).
        budget: the wall-clock deadline (None: unlimited).

    Returns:
        One :class:`~advrobust.verify.Bracket` per problem.
    """
    _check_grid(problems)
    budget = Budget() if budget is None else budget
    with eval_mode(problems[0].model, who="verify"):
        brackets = []
        for p in problems:
            t0 = time.perf_counter()
            bracket = Bracket(p)
            bracket.mark("clean")
            bracket.charge(torch.arange(p.num_samples), "clean", time.perf_counter() - t0)
            brackets.append(bracket)
        for k, step in enumerate(policy.stages):
            later_exact = any(s.kind == "exact" for s in policy.stages[k + 1:])
            if step.kind == "bound":
                _bound(brackets, step, policy, budget, later_exact)
            elif step.kind == "attack":
                _attack(brackets, step, policy, budget)
            else:
                _exact(brackets, step, policy, budget)
            for bracket in brackets:
                bracket.mark(step.name)
    return brackets


def _timed(bracket: Bracket, name: str, call: Callable[[], None]) -> None:
    """Run one step on one set where it has open samples, adding to its stage time."""
    if bool(bracket.undecided().any()):
        t0 = time.perf_counter()
        call()
        seconds = bracket.stage_seconds.get(name, 0.0) + time.perf_counter() - t0
        bracket.stage_seconds[name] = seconds


def _bound(brackets: list[Bracket], step: Step, policy: Policy, budget: Budget,
           keep: bool) -> None:
    limit = step.time_limit if step.time_limit is not None else policy.time_limit
    bounder = make_bounder(step.name, limit, policy.threads)
    for e in reversed(range(len(brackets))):
        def call(b: Bracket = brackets[e]) -> None:
            relax_stage(b, bounder, step.name, budget, batch_size=policy.batch_size,
                        progress=policy.progress, only_open=True, keep_bounds=keep)

        _timed(brackets[e], step.name, call)
        carry_down(brackets, e)


def _attack(brackets: list[Bracket], step: Step, policy: Policy, budget: Budget) -> None:
    assert step.attack is not None
    for e, bracket in enumerate(brackets):
        def call(b: Bracket = bracket, k: int = e) -> None:
            assert step.attack is not None
            attack_stage(b, step.attack(b.problem.threat), budget,
                         batch_size=policy.batch_size, progress=policy.progress,
                         generator=None if step.generator is None else step.generator(k),
                         name=step.name)

        _timed(bracket, step.name, call)
        carry_up(brackets, e)


def _exact(brackets: list[Bracket], step: Step, policy: Policy, budget: Budget) -> None:
    limit = step.time_limit if step.time_limit is not None else policy.time_limit

    def make(seconds: float) -> Any:
        return make_bounder(step.name, max(seconds, 1e-3), policy.threads)

    planned = [int(b.undecided().sum()) for b in brackets]
    bar = policy.bar(sum(planned), step.name) if policy.bar is not None else progress_bar(
        total=sum(planned), desc=step.name, disable=not policy.progress, leave=False)
    with bar:
        for e, bracket in enumerate(brackets):
            todo = int(bracket.undecided().sum())

            def call(b: Bracket = bracket) -> None:
                exact_stage(b, make, step.name, budget, optional=False, time_limit=limit,
                            stages_left=1, progress=False, own_limit=True, bar=bar)

            _timed(bracket, step.name, call)
            bar.update(planned[e] - todo)  # decided along the grid before their turn
            carry_down(brackets, e)
            carry_up(brackets, e)
