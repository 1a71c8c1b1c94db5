"""Verify a dataset or a VNNLIB property: per-sample verdicts from the one cascade driver.

Both entry points build a :class:`~advrobust.verify.Problem` and run
:func:`advrobust.verify.cascade.run` on it (see that module for the policy: CROWN, the spec-row
attack, BaB / the MILP, within one wall-clock budget). Every verdict comes from
:func:`~advrobust.core.result.decide_verdicts`: VERIFIED from the best sound lower bound,
FALSIFIED from a witness that lies in the threat set and whose spec values, recomputed through
the real model, are negative (a misclassified clean input is its own witness).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advrobust.core._validation import check_choice, check_float, check_int
from advrobust.core.modes import eval_mode
from advrobust.core.result import Verdict
from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall
from advrobust.errors import InvalidParameterError
from advrobust.evaluation._verify_report import VerifyReport
from advrobust.network.vnnlib import VnnProperty
from advrobust.relax.base import PRECISIONS
from advrobust.verify import cascade
from advrobust.verify._vnnlib import property_ball as _property_ball  # noqa: F401
from advrobust.verify.budget import Budget
from advrobust.verify.cascade import METHODS, Policy
from advrobust.verify.problem import Problem

__all__ = ["METHODS", "PropertyResult", "VerifyReport", "verify_dataset", "verify_property"]

logger = logging.getLogger(__name__)


def verify_dataset(model: nn.Module, x: Tensor, y: Tensor, threat: LpBall, *,
                   method: str = "auto", spec: Spec | None = None, time_limit: float = 60.0,
                   wall_limit: float | None = None, threads: int = 1, attack: Any = None,
                   batch_size: int = 100, progress: bool = True,
                   generator: torch.Generator | None = None,
                   precision: str = "float64") -> VerifyReport:
    """Verify every sample of a batch with the cascade driver (:mod:`advrobust.verify.cascade`).

    Args:
        model: classifier returning logits, a (nested) ``nn.Sequential`` of layers the
            verifiers support; never moved, re-moded or modified.
        x: clean inputs (N, ...) inside the threat's box.
        y: labels (N,) int64.
        threat: the threat set ``S(x)``.
        method: ``"auto"`` (CROWN, the attack, BaB; the MILP for l1), ``"ibp"``, ``"crown"``,
            ``"lp"`` (one relaxation), ``"milp"`` or ``"bab"`` (exact: CROWN on every sample,
            then the MILP, resp. branch and bound, on every sample CROWN leaves undecided,
            starting from CROWN's layer bounds).
        spec: rows ``C f + d`` that must stay positive (default: the margins ``e_y - e_t``).
        time_limit: exact-method (and LP) seconds per sample; ``auto`` gives it to BaB
            (linf) or the MILP (l1).
        wall_limit: seconds for the whole call (None: no limit). Every stage gets a deadline
            from this one budget; the report comes back within it (less a guard kept for the
            final checks, see :data:`~advrobust.verify.budget.GUARD_SECONDS`), with
            UNKNOWN where the time ran out.
        threads: cores: HiGHS's threads, and BaB's worker processes (``BaB(workers=...)``).
        attack: the attack of the ``auto`` cascade (default ``SpecAPGD(steps=100,
            restarts=2)`` on the spec rows); any :class:`~advrobust.attacks.Attack` (it then
            attacks the label margins).
        batch_size: samples per relaxation / attack call.
        progress: show tqdm progress bars (on stderr).
        generator: random source of the attack's random starts.
        precision: dtype of the ``ibp`` / ``crown`` methods' passes: ``"float64"`` (default) or
            ``"float32"`` (float32's own rounding allowances: as sound, about twice as fast on
            GEMM-bound networks, looser; see :class:`~advrobust.relax.CROWN`). The other
            methods run in float64 only.

    Returns:
        A :class:`VerifyReport`.

    Raises:
        InvalidParameterError: an unknown method or a bad time limit / batch size.
        InvalidInputError: malformed x, y or spec.
        UnsupportedLayerError: the model has a layer the verifiers cannot represent.
    """
    start = time.perf_counter()
    policy = _policy(method, time_limit, wall_limit, threads, attack, batch_size, progress,
                     generator, precision)
    with eval_mode(model, who="verify_dataset"):
        problem = Problem.of(model, x, y, threat, spec, who="verify_dataset")
        return _run(problem, policy, wall_limit, start)


def _policy(method: str, time_limit: float, wall_limit: float | None, threads: int,
            attack: Any, batch_size: int, progress: bool,
            generator: torch.Generator | None, precision: str = "float64") -> Policy:
    """The validated policy of a call (errors name ``verify_dataset``'s arguments)."""
    check_choice(method, "method", "verify_dataset", METHODS)
    check_choice(precision, "precision", "verify_dataset", tuple(PRECISIONS))
    if precision != "float64" and method not in ("ibp", "crown"):
        raise InvalidParameterError(
            f"verify_dataset: precision={precision!r} applies to method='ibp' or 'crown' (one "
            f"relaxation); method={method!r} runs its stages in float64. Use one of those, or "
            "the default precision.")
    check_float(time_limit, "time_limit", "verify_dataset", low=0.0, low_open=True,
                allow_inf=True)
    if wall_limit is not None:
        check_float(wall_limit, "wall_limit", "verify_dataset", low=0.0, low_open=True,
                    allow_inf=True)
    check_int(threads, "threads", "verify_dataset", low=1)
    check_int(batch_size, "batch_size", "verify_dataset", low=1)
    return Policy(method=method, time_limit=time_limit, threads=threads, attack=attack,
                  batch_size=batch_size, progress=progress, generator=generator,
                  precision=precision)


def _run(problem: Problem, policy: Policy, wall_limit: float | None,
         start: float) -> VerifyReport:
    """The driver on ``problem`` within what is left of ``wall_limit`` since ``start``."""
    budget = Budget.of(None if wall_limit is None else wall_limit - (time.perf_counter() - start))
    bracket = cascade.run(problem, policy, budget)
    return VerifyReport(verdict=bracket.verdicts(), lower=bracket.lower, upper=bracket.upper,
                        witness=bracket.witness, decided_by=tuple(bracket.decided_by),
                        clean_values=problem.spec.apply(problem.clean), method=policy.method,
                        threat=problem.threat, seconds=time.perf_counter() - start,
                        stage_seconds=dict(bracket.stage_seconds), stats=dict(bracket.stats))


# ---------------------------------------------------------------------- VNNLIB properties
@dataclass(frozen=True)
class PropertyResult:
    """Outcome of one VNNLIB instance, in the VNN-COMP convention.

    Attributes:
        status: ``"unsat"`` (no input of the box reaches the unsafe set: verified), ``"sat"``
            (a counterexample was found and re-checked) or ``"unknown"``.
        counterexample: (D,) input inside the property's box whose outputs lie in the unsafe
            set, for ``"sat"``; else None.
        outputs: (num_outputs,) model outputs at the counterexample, for ``"sat"``.
        report: the underlying :class:`VerifyReport` (one sample).
    """

    status: str
    counterexample: Tensor | None
    outputs: Tensor | None
    report: VerifyReport


def verify_property(model: nn.Module, prop: VnnProperty, *,
                    input_shape: Sequence[int] | None = None, method: str = "auto",
                    time_limit: float = 60.0, threads: int = 1, attack: Any = None,
                    progress: bool = False, generator: torch.Generator | None = None,
                    reference: Callable[[Tensor], Tensor] | None = None) -> PropertyResult:
    """Decide a VNNLIB property of ``model`` with the cascade driver, within ``time_limit``.

    The box is read as a clipped linf ball where it is one (VNN-COMP robustness boxes), else
    as the unit cube mapped onto it; the unsafe set is any disjunction of conjunctions of
    linear output constraints (see :meth:`Problem.from_property
    <advrobust.verify.Problem.from_property>`). An input set that is a union of boxes (an
    input ``or``) is decided box by box, each box getting an equal share of the time left
    when it starts: "sat" as soon as one box is, "unsat" once every box is. A FALSIFIED
    witness is clamped to the property's exact box and re-evaluated against the unsafe
    polytopes (zero tolerance; in float64, in the model's own precision and through
    ``reference``) before "sat" is reported.

    Args:
        model: the network (e.g. from :func:`advrobust.network.onnx.load_onnx`).
        prop: the property (:func:`advrobust.network.vnnlib.load_vnnlib`).
        input_shape: per-sample shape the model takes (default ``(D,)``).
        method, threads, attack, progress, generator: as in :func:`verify_dataset`.
        time_limit: wall-clock seconds for the whole call: every stage (CROWN, the attack,
            BaB, the MILP) gets its deadline from this one budget, and the answer comes back
            within it ("unknown" if the time ran out).
        reference: an independent evaluation of the network, inputs ``(N, *input_shape)`` ->
            outputs ``(N, num_outputs)``, e.g. :meth:`OnnxNetwork.runtime()
            <advrobust.network.onnx.OnnxNetwork.runtime>` (onnxruntime on the ONNX file, what
            VNN-COMP checks counterexamples with): a counterexample is reported only if its
            outputs there are unsafe too, else the answer is "unknown" with a warning.

    Raises:
        InvalidInputError: ``input_shape`` does not hold the property's input variables.
        InvalidParameterError: a time limit <= 0.
    """
    start = time.perf_counter()
    check_float(time_limit, "time_limit", "verify_property", low=0.0, low_open=True,
                allow_inf=True)
    if prop.cases:
        return _verify_cases(model, prop, start, time_limit, input_shape=input_shape,
                             method=method, threads=threads, attack=attack, progress=progress,
                             generator=generator, reference=reference)
    policy = _policy(method, time_limit, None, threads, attack, 1, progress, generator)
    with eval_mode(model, who="verify_property"):
        problem = Problem.from_property(model, prop, input_shape, who="verify_dataset")
        report = _run(problem, policy, max(1e-6, time_limit - (time.perf_counter() - start)),
                      time.perf_counter())
        if report.verdict[0] is Verdict.VERIFIED:
            return PropertyResult("unsat", None, None, report)
        if report.verdict[0] is Verdict.FALSIFIED:
            found = problem.confirm_unsafe(report.witness[0], reference=reference)
            if found is not None:
                return PropertyResult("sat", found[0], found[1], report)
            logger.warning("verify_property: the witness is not unsafe once clamped to the "
                           "exact box and re-evaluated; reporting unknown")
    return PropertyResult("unknown", None, None, report)


def _verify_cases(model: nn.Module, prop: VnnProperty, start: float, time_limit: float,
                  **options: Any) -> PropertyResult:
    """:func:`verify_property` on a union of boxes, box by box (the report is the deciding
    box's: the "sat" one, the last "unsat" one, else the first one left open; its
    ``stats["input_cases"]`` has every box's answer, "not run" after a "sat")."""
    parts = prop.split()
    answers = ["not run"] * len(parts)
    open_result: PropertyResult | None = None
    result: PropertyResult | None = None
    for i, part in enumerate(parts):
        left = max(1e-6, time_limit - (time.perf_counter() - start))  # none is skipped
        result = verify_property(model, part, time_limit=left / (len(parts) - i), **options)
        answers[i] = result.status
        if result.status == "sat":
            break
        if result.status != "unsat" and open_result is None:
            open_result = result
    assert result is not None  # a property has at least one box
    chosen = result if result.status == "sat" else open_result or result
    report = dataclasses.replace(chosen.report, stats={**chosen.report.stats,
                                                       "input_cases": answers})
    if chosen.status != "sat" and any(a != "unsat" for a in answers):
        return PropertyResult("unknown", None, None, report)
    return dataclasses.replace(chosen, report=report)
