"""The driver's configured stages over an eps grid (verify.grid): results handed along the grid
are the ones each eps reaches alone, and work decided at one eps is not redone at another."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advrobust.attacks import PGD
from advrobust.core import LpBall
from advrobust.core.result import Verdict
from advrobust.errors import InvalidInputError, InvalidParameterError
from advrobust.verify import Policy, Problem, run
from advrobust.verify.grid import Step, run_grid

EPS = (0.02, 0.05, 0.1, 0.2)


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(),
                         nn.Linear(10, 3)).eval()


def _steps(exact: bool) -> tuple[Step, ...]:
    pgd = Step("attack", "pgd", attack=lambda threat: PGD(steps=20, restarts=1),
               generator=lambda k: torch.Generator().manual_seed(k))
    return (Step("bound", "crown"), pgd) + ((Step("exact", "milp", time_limit=30.0),)
                                            if exact else ())


def _problem(n: int = 8) -> Problem:
    model = _mlp(0)
    x = torch.rand(n, 6, generator=torch.Generator().manual_seed(1))
    return Problem.of(model, x, model(x).argmax(1), LpBall("linf", EPS[0]))


def test_the_exact_grid_run_matches_each_eps_alone() -> None:
    problem = _problem()
    grid = run_grid(problem.along(EPS), Policy(stages=_steps(exact=True)))
    for bracket in grid:
        assert Verdict.UNKNOWN not in bracket.verdicts()  # the MILP is complete on this net
    for e in (1, 2):  # both decide every sample, and identically
        alone = run(problem.along([EPS[e]])[0], Policy(stages=_steps(exact=True)))
        assert grid[e].verdicts() == alone.verdicts()
    verdicts = [b.verdicts() for b in grid]
    assert {Verdict.VERIFIED, Verdict.FALSIFIED} <= set(verdicts[1]) | set(verdicts[2])
    for i in range(problem.num_samples):
        column = [v[i] for v in verdicts]  # verified then falsified as eps grows, never back
        k = column.index(Verdict.FALSIFIED) if Verdict.FALSIFIED in column else len(EPS)
        assert all(v is Verdict.VERIFIED for v in column[:k])
        assert all(v is Verdict.FALSIFIED for v in column[k:])


def test_results_are_handed_along_the_grid_instead_of_recomputed() -> None:
    grid = run_grid(_problem().along(EPS), Policy(stages=_steps(exact=False)))
    carried_down = carried_up = 0
    for e, bracket in enumerate(grid):
        for i, v in enumerate(bracket.verdicts()):
            if e + 1 < len(grid) and grid[e + 1].verdicts()[i] is Verdict.VERIFIED:
                # proved on the larger ball: not bounded again here, credited to the bound
                assert "crown" not in bracket.seconds[i] and bracket.decided_by[i] == "crown"
                assert bracket.lowers[i]["crown"] >= grid[e + 1].lowers[i]["crown"]
                carried_down += 1
            if e and grid[e - 1].verdicts()[i] is Verdict.FALSIFIED and \
                    grid[e - 1].decided_by[i] == "pgd":
                # broken on the smaller ball: not attacked again, the same point counts here
                assert v is Verdict.FALSIFIED and "pgd" not in bracket.seconds[i]
                assert bracket.found_by[i] == "pgd"
                assert torch.equal(bracket.witness[i], grid[e - 1].witness[i])
                carried_up += 1
    assert carried_down and carried_up


def test_bad_steps_and_grids_are_refused() -> None:
    with pytest.raises(InvalidParameterError, match="kind"):
        Step("relax", "crown")
    with pytest.raises(InvalidParameterError, match="bab"):
        Step("exact", "crown")
    with pytest.raises(InvalidParameterError, match="attack"):
        Step("attack", "pgd")
    problem = _problem(2)
    with pytest.raises(InvalidInputError, match="ascending"):
        problem.along([0.1, 0.05])
    other = _problem(2)
    with pytest.raises(InvalidInputError, match="along"):
        run_grid([problem, other], Policy(stages=_steps(exact=False)))
