"""The one cascade driver: which stage runs on a :class:`~advrobust.verify.Problem`, with how much
of the wall-clock budget.

``method="auto"`` is the cascade: CROWN on every sample (cheap, batched; its layer bounds are
cached on the problem), a targeted attack on every spec row of what it leaves undecided
(:class:`~advrobust.attacks.spec_apgd.SpecAPGD`: one APGD copy per row, random restarts), then
branch and bound on ReLU splits (:class:`~advrobust.exact.BaB`, linf, on chains and on graphs
whose only nonlinear nodes are ReLUs: the whole per-sample time limit, finishing with the
MILP on its alpha-CROWN bounds where linear regions keep coming) or the MILP (l1, and graphs
with other nonlinear nodes, which BaB does not split: sound LP relaxations of sigmoid / tanh /
max pooling with ``stats["exact"]`` False) on the rows no earlier stage proved, both starting
from CROWN's cached layer (node) bounds.
``"ibp"``, ``"crown"``, ``"lp"`` run one relaxation; ``"milp"`` and ``"bab"`` run CROWN then
that exact method. With a limited :class:`~advrobust.verify.budget.Budget` every stage gets a
deadline from it, a stage whose measured or predicted cost does not fit is skipped, and where
the attack is cheap next to the budget it runs first (a quick "sat"). A configured list of
stages (:attr:`Policy.stages`) runs through :mod:`advrobust.verify.grid`, also over an eps grid
(the robustness campaign).

:func:`advrobust.evaluation.verify.verify_dataset`, :func:`~advrobust.evaluation.verify.
verify_property` (and so ``advrobust verify`` and ``advrobust vnncomp``) all run this driver.
"""

from __future__ import annotations

import functools
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from advrobust.core.modes import eval_mode
from advrobust.core.threat import Norm
from advrobust.verify.bracket import Bracket
from advrobust.verify.budget import Budget
from advrobust.verify.problem import Problem
from advrobust.verify.stages import attack_stage, exact_stage, relax_stage

if TYPE_CHECKING:
    from advrobust.verify.grid import Step

__all__ = ["CERTIFY", "METHODS", "Policy", "run"]

logger = logging.getLogger(__name__)

#: The ``method`` values of :func:`~advrobust.evaluation.verify.verify_dataset`.
METHODS = ("auto", "ibp", "crown", "lp", "milp", "bab")
#: The relaxation-only policy of the robustness report: IBP on every sample, then CROWN on
#: interval intermediate bounds, then full CROWN, each on the samples still undecided
#: (cheapest first; a :class:`Policy` method besides :data:`METHODS`).
CERTIFY = "certify"
_CERTIFY_STAGES = ("ibp", "crown-ibp", "crown")

#: With a wall-clock budget, the attack runs before CROWN when its predicted cost is at most
#: this share of the budget (a "sat" answer then comes at once), and it never gets more than
#: ``ATTACK_SHARE`` of what is left.
ATTACK_FIRST_SHARE = 0.05
ATTACK_SHARE = 0.25


@dataclass(frozen=True)
class Policy:
    """What the driver runs (validated by the entry points).

    Attributes:
        method: one of :data:`METHODS`, or :data:`CERTIFY`.
        time_limit: exact-method (and LP) seconds per sample.
        threads: cores: HiGHS's threads, and BaB's worker processes (its ``workers``).
        attack: the attack of the ``auto`` cascade (None: ``SpecAPGD(steps=100,
            restarts=2)`` on the spec rows).
        batch_size: samples per relaxation / attack call.
        progress: tqdm progress bars.
        generator: random source of the attack's random starts.
        stages: a configured list of stages (:class:`~advrobust.verify.grid.Step`: bounds,
            attacks, exact methods, in order); when given, ``method`` is not consulted and
            :func:`~advrobust.verify.grid.run_grid` runs them (on one problem or an eps grid).
        bar: ``bar(total, stage) -> progress bar`` of a configured exact stage over the grid
            (None: tqdm when ``progress``).
        precision: dtype of the passes of the ``ibp`` / ``crown`` methods (``"float64"``, or
            ``"float32"`` with float32's rounding allowances: faster, looser, as sound).
    """

    method: str = "auto"
    time_limit: float = 60.0
    threads: int = 1
    attack: Any = None
    batch_size: int = 100
    progress: bool = False
    generator: torch.Generator | None = None
    stages: tuple[Step, ...] = ()
    bar: Callable[[int, str], Any] | None = None
    precision: str = "float64"


Stage = tuple[str, Callable[[], None]]


def run(problem: Problem, policy: Policy, budget: Budget | None = None) -> Bracket:
    """Run ``policy`` on ``problem`` within ``budget`` (None: unlimited); the bracket reached.

    The model runs in eval mode (its modes and gradient flags are restored afterwards).

    Args:
        problem: the problem (its layer-bound cache is filled as the stages go).
        policy: which stages run (:class:`Policy`).
        budget: the wall-clock deadline every stage respects.

    Returns:
        The :class:`~advrobust.verify.bracket.Bracket`: verdicts, lower / upper bounds per
        row, witnesses, the stage that decided each sample, per-stage seconds and details.
    """
    if policy.stages:
        from advrobust.verify.grid import run_grid

        return run_grid([problem], policy, budget)[0]
    budget = Budget() if budget is None else budget
    with eval_mode(problem.model, who="verify"):
        bracket = Bracket(problem)
        bracket.mark("clean")
        for name, stage in _stages(bracket, policy, budget):
            t0 = time.perf_counter()
            if budget.left() > 0 and bool(bracket.undecided().any()):
                stage()
            elif bool(bracket.undecided().any()):  # out of time before this stage started
                bracket.skip(name, "deadline")
            seconds = bracket.stage_seconds.get(name, 0.0) + time.perf_counter() - t0
            bracket.stage_seconds[name] = seconds
            logger.info("verify %s: %s done in %.2fs", policy.method, name, seconds)
    return bracket


def make_bounder(method: str, time_limit: float, threads: int,
                 precision: str = "float64") -> Any:
    """The configured bounder of ``method`` (``"auto"``: CROWN; ``precision`` applies to
    ``"ibp"`` and ``"crown"``)."""
    from advrobust.exact import MILP, BaB
    from advrobust.relax import CROWN, IBP, LPRelaxation
    from advrobust.verify._bounders import CrownIBP

    makers: dict[str, Callable[[], Any]] = {
        "ibp": lambda: IBP(precision=precision), "crown": lambda: CROWN(precision=precision),
        "auto": CROWN, "crown-ibp": CrownIBP,
        "lp": lambda: LPRelaxation(threads=threads, time_limit=time_limit),
        # HiGHS's feasibility jump runs before the root node without checking the time limit
        # (measured on mnist_fc 256x2: 3.6 s of a 1 s limit); the attack and BaB look for
        # counterexamples instead
        "milp": lambda: MILP(time_limit=time_limit, threads=threads,
                             solver_options={"mip_heuristic_run_feasibility_jump": False}),
        "bab": lambda: BaB(time_limit=time_limit, workers=threads)}
    return makers[method]()


def default_attack() -> Any:
    """The ``auto`` cascade's attack: SpecAPGD, 100 steps, 2 restarts, on the spec rows."""
    from advrobust.attacks.spec_apgd import SpecAPGD

    return SpecAPGD(steps=100, restarts=2)


def _stages(bracket: Bracket, policy: Policy, budget: Budget) -> list[Stage]:
    """The (name, run) steps of the policy, run in order against ``budget``."""
    method, problem = policy.method, bracket.problem
    if method == CERTIFY:
        return [(name, functools.partial(_relax, bracket, policy, name, budget, k > 0))
                for k, name in enumerate(_CERTIFY_STAGES)]
    first = "crown" if method in ("auto", "milp", "bab") else method
    stages: list[Stage] = [(first, lambda: _relax(bracket, policy, first, budget))]
    if method == "auto":
        attack = policy.attack if policy.attack is not None else default_attack()
        cheap = budget.limited and \
            _attack_seconds(bracket, attack) <= ATTACK_FIRST_SHARE * budget.left()
        stages.insert(0 if cheap else 1,
                      ("attack", lambda: _attack(bracket, policy, attack, budget)))
    if method not in ("auto", "milp", "bab"):
        return stages
    if problem.threat.norm is Norm.L2 and method == "auto":
        warnings.warn("verify_dataset: BaB and the MILP handle linf and l1 threats only; the "
                      "auto cascade stops after the attack for l2.", UserWarning, stacklevel=4)
        return stages
    # linf: beta-CROWN BaB alone, with the whole exact budget (it finishes with the MILP on its
    # alpha-CROWN bounds when linear regions keep coming); mnist_fc at 30 s, BaB alone vs the
    # old BaB + MILP halves: bench/RESULTS.md, issue 11. BaB splits ReLUs, on chains and on
    # graphs (residual / concat); where another nonlinear node (sigmoid, tanh, max pooling,
    # LeakyReLU) is in the graph the MILP runs, on LP relaxations of those nodes, whose bounds
    # are sound but not minima: a proof stays a proof, and what they do not prove stays
    # UNKNOWN (witnesses only ever count through the gate).
    exact = ("bab",) if method == "auto" and problem.threat.norm is Norm.LINF and \
        problem.branchable else ("milp",) if method == "auto" else (method,)
    for k, name in enumerate(exact):
        stages.append((name, _exact(bracket, policy, name, len(exact) - k, budget)))
    return stages


def _relax(bracket: Bracket, policy: Policy, name: str, budget: Budget,
           only_open: bool = False) -> None:
    """The relaxation stage (on every sample, or with ``only_open`` on the undecided ones);
    with a deadline, skipped where CROWN is predicted not to fit."""
    if budget.limited:
        predicted = _crown_seconds(bracket) if name == "crown" else 0.0
        if predicted > budget.left():
            bracket.bound_seconds = predicted / bracket.problem.num_samples
            bracket.skip(name, f"predicted {predicted:.3g} s, more than the time left")
            return
    precision = policy.precision if name == policy.method else "float64"
    bounder = make_bounder(name, policy.time_limit, policy.threads, precision)
    relax_stage(bracket, bounder, name, budget, batch_size=policy.batch_size,
                progress=policy.progress, only_open=only_open,
                keep_bounds=policy.method in ("auto", "milp", "bab"))


def _attack(bracket: Bracket, policy: Policy, attack: Any, budget: Budget) -> None:
    """The attack stage, never given more than ``ATTACK_SHARE`` of the time left."""
    attack_stage(bracket, attack, budget.part(ATTACK_SHARE), batch_size=policy.batch_size,
                 progress=policy.progress, generator=policy.generator)


def _exact(bracket: Bracket, policy: Policy, name: str, stages_left: int,
           budget: Budget) -> Callable[[], None]:
    def make(seconds: float) -> Any:
        return make_bounder(name, max(seconds, 1e-3), policy.threads)

    def stage() -> None:
        exact_stage(bracket, make, name, budget, optional=policy.method == "auto",
                    time_limit=policy.time_limit, stages_left=stages_left,
                    progress=policy.progress)

    return stage


def _crown_seconds(bracket: Bracket) -> float:
    """Predicted seconds of one CROWN pass over every sample (measured forward passes).

    CROWN back-substitutes one row per unstable-capable neuron (and per spec row) through the
    layers below it, each about the cost of a forward pass of one sample; twice that covers
    the relaxations. Measured on a batch of forward passes of the caller's model (its own
    dtype; the rows are counted on the float64 IR the passes run on).
    """
    from advrobust.network.ir import Network

    problem = bracket.problem
    network = problem.network
    if isinstance(network, Network):
        rows = sum(op.in_size for op in network.ops if op.nonlinear)
    else:  # every node that feeds a nonlinear op is refined
        rows = sum(math.prod(n.shape) for i, n in enumerate(network.nodes)
                   if network.needs_bounds(i))
    rows += problem.spec.num_rows
    batch = min(rows, 256)
    x = problem.x[:1].expand((batch,) + problem.input_shape)
    t0 = time.perf_counter()
    with torch.no_grad():
        problem.model(x)
    return 2 * (time.perf_counter() - t0) * rows / batch * problem.num_samples


def _attack_seconds(bracket: Bracket, attack: Any) -> float:
    """Predicted seconds of the default attack: its steps and restarts times one timed
    forward and backward pass over every (sample, row) copy."""
    problem = bracket.problem
    copies = problem.x.repeat_interleave(problem.spec.num_rows, 0).requires_grad_(True)
    per_step = float("inf")
    for _ in range(2):  # the first pass also pays autograd's warm-up: keep the faster
        t0 = time.perf_counter()
        with torch.enable_grad():
            torch.autograd.grad(problem.model(copies).sum(), copies)
        per_step = min(per_step, time.perf_counter() - t0)
    steps = getattr(attack, "steps", 100) * getattr(attack, "restarts", 1)
    return per_step * steps
