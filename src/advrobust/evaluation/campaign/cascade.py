"""The work of one task: the brackets of ``batch_size`` samples at every eps of a threat.

Per task (one model, one norm, a fixed slice of samples) the configured certificates and
attacks become a list of :class:`~advrobust.verify.grid.Step` and the verification driver
(:func:`advrobust.verify.grid.run_grid`) runs them over the whole eps grid at once, one
:class:`~advrobust.verify.Bracket` per eps, handing results along the grid:

1. **clean**: a misclassified input is its own witness, FALSIFIED at every eps;
2. **bounds** (IBP / CROWN / LP, batched), from the largest eps down: a lower bound over a ball
   is a lower bound over every smaller ball, so a sample verified at eps stays verified as eps
   shrinks and is not bounded again; CROWN's layer bounds stay cached for the exact methods;
3. **attacks**, in the config's order, from the smallest eps up, each only on the units still
   open; a point found at eps lies in every larger ball, so a sample broken at eps stays broken
   as eps grows;
4. **exact** methods (branch and bound, MILP; the config's time limit per unit and method)
   sample by sample on the spec rows still open, from the cached CROWN layer bounds, their
   bounds and counterexamples passed along the grid the same ways.

Verdicts are the brackets' (:func:`~advrobust.core.result.decide_verdicts`, the rule
``verify`` uses): VERIFIED from a sound lower bound, FALSIFIED from a witness inside the set
whose spec values, recomputed in float64 through the model's twin, are negative.
"""

from __future__ import annotations

import functools
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advrobust.core.result import Verdict
from advrobust.evaluation.campaign.config import CampaignConfig
from advrobust.evaluation.campaign.store import UnitRecord, pack

__all__ = ["Task", "run_task", "stage_progress", "task_seed", "task_steps"]


@dataclass(frozen=True)
class Task:
    """The scheduling unit: one model, one norm, a fixed slice of sample indices."""

    model: str
    norm: str
    chunk: int
    samples: tuple[int, ...]


def task_seed(seed: int, *parts: Any) -> int:
    """A deterministic 63-bit seed from the campaign seed and the names of a stage."""
    return (seed * 1_000_003 + zlib.crc32(repr(parts).encode())) % (2 ** 63)


def task_steps(task: Task, config: CampaignConfig) -> tuple[Any, ...]:
    """The config's certificates and attacks for ``task`` as the driver's steps: bounds, then
    the attacks that apply to the task's norm (each seeded per task, attack and eps), then the
    exact methods (``auto`` expanded per norm by :meth:`CampaignConfig.certify_for`)."""
    from advrobust.evaluation.campaign._check import build_attack
    from advrobust.verify.grid import Step

    bounders, exact = config.certify_for(task.norm)
    steps = [Step("bound", name, time_limit=config.time_limit) for name in bounders]
    for number, spec in enumerate(config.attacks):
        if task.norm in spec.norms:
            steps.append(Step(
                "attack", spec.name, attack=functools.partial(build_attack, spec, task.norm),
                generator=functools.partial(_attack_generator, config.seed, task, number)))
    steps += [Step("exact", name, time_limit=config.time_limit) for name in exact]
    return tuple(steps)


def _attack_generator(seed: int, task: Task, number: int, e: int) -> torch.Generator:
    return torch.Generator().manual_seed(task_seed(seed, task.model, task.norm, task.chunk,
                                                   number, e))


#: How a long stage inside a task reports progress in this process: ``"bar"`` (the driver:
#: a tqdm bar on a terminal, a status line otherwise), ``"line"`` (a worker: a status line at
#: most every 10 s, ``$ADVROBUST_PROGRESS_INTERVAL``) or ``"off"``. See :func:`stage_progress`.
_STAGE_PROGRESS = ["off"]


def stage_progress(mode: str | None = None) -> str:
    """Get (and with ``mode``, set) this process's progress mode for long stages in a task."""
    if mode is not None:
        if mode not in ("bar", "line", "off"):
            raise ValueError(f"stage_progress: mode must be 'bar', 'line' or 'off'; got {mode!r}")
        _STAGE_PROGRESS[0] = mode
    return _STAGE_PROGRESS[0]


def _stage_bar(total: int, desc: str) -> Any:
    from advrobust.core.progress import StatusLine, progress_bar

    mode = _STAGE_PROGRESS[0]
    if mode == "line" and total:
        return StatusLine(total=total, desc=desc, unit="unit")
    return progress_bar(total=total, desc=desc, unit="unit", disable=mode != "bar",
                        leave=False, position=1)


def run_task(model: nn.Module, x: Tensor, y: Tensor, task: Task, config: CampaignConfig,
             black_box: set[str] | None = None) -> list[UnitRecord]:
    """The bracket of every unit of ``task``; ``x`` (N, ...) and ``y`` (N,) are its samples.

    ``black_box``, when given, receives the names (as in the records' ``attack``) of the
    attacks that reported using no gradients (Square, ensemble members ...), for the report's
    black-box-beats-white-box check."""
    from advrobust.core.threat import LpBall
    from advrobust.verify import Policy, Problem
    from advrobust.verify.grid import run_grid

    threat_spec = next(t for t in config.threats if t.norm == task.norm)
    t0 = time.perf_counter()
    problems = Problem.of(model, x, y, LpBall(task.norm, threat_spec.eps[0]),
                          who="campaign").along(threat_spec.eps)
    setup = time.perf_counter() - t0
    desc = f"{{}} {task.model} {task.norm} #{task.chunk}"
    policy = Policy(stages=task_steps(task, config), time_limit=config.time_limit,
                    threads=config.threads, batch_size=max(1, int(x.shape[0])),
                    bar=lambda total, name: _stage_bar(total, desc.format(name)))
    brackets = run_grid(problems, policy)
    for bracket in brackets:  # the problem's validation and clean pass, shared over the grid
        bracket.charge(torch.arange(x.shape[0]), "clean", setup / len(brackets))
        if black_box is not None:
            black_box.update(bracket.black_box)
    return _records(brackets, task, threat_spec.eps)


def _records(brackets: Sequence[Any], task: Task, eps: Sequence[float]) -> list[UnitRecord]:
    problem = brackets[0].problem
    preds = problem.clean.argmax(1)
    clean_margin = problem.spec.apply(problem.clean).amin(1)
    out = []
    for e, (eps_value, bracket) in enumerate(zip(eps, brackets, strict=True)):
        verdicts = bracket.verdicts()
        for i, sample in enumerate(task.samples):
            moved = not torch.equal(bracket.witness[i], problem.x[i])
            out.append(UnitRecord(
                model=task.model, sample=sample, norm=task.norm, eps_index=e, eps=eps_value,
                label=int(problem.y[i]), verdict=verdicts[i].value, clean_pred=int(preds[i]),
                clean_margin=float(clean_margin[i]), upper=float(bracket.values[i].amin()),
                attack=bracket.found_by[i] if moved else ("clean" if verdicts[i] is
                                                           Verdict.FALSIFIED else None),
                lower=float(bracket.lower[i].amin()), lowers=dict(bracket.lowers[i]),
                decided_by=bracket.decided_by[i],
                witness=pack(bracket.witness[i].numpy()) if moved else None,
                seconds=bracket.seconds[i]))
    return out
