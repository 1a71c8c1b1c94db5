"""Verify a dataset or a VNNLIB property: per-sample verdicts from the one cascade driver.

Both entry points build a :class:`~advrobust.verify.Problem` and run
:func:`advrobust.verify.cascade.run` on it (see that module for the policy: CROWN, the spec-row
attack, BaB / the MILP, within one wall-clock budget). Every verdict comes from
:func:`~advrobust.core.result.decide_verdicts`: VERIFIED from the best sound lower bound,
FALSIFIED from a witness that lies in the threat set and whose spec values, recomputed through
the real model, are negative (a misclassified clean input is its own witness).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advrobust.core._validation import check_choice, check_float, check_int
from advrobust.core.modes import eval_mode
from advrobust.core.result import Verdict
from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall, Norm
from advrobust.errors import InvalidInputError
from advrobust.evaluation._verify_report import VerifyReport
from advrobust.network.vnnlib import VnnlibError, VnnProperty
from advrobust.verify import cascade
from advrobust.verify.budget import Budget
from advrobust.verify.cascade import METHODS, Policy
from advrobust.verify.problem import Problem

__all__ = ["METHODS", "PropertyResult", "VerifyReport", "verify_dataset", "verify_property"]

logger = logging.getLogger(__name__)


def verify_dataset(model: nn.Module, x: Tensor, y: Tensor, threat: LpBall, *,
                   method: str = "auto", spec: Spec | None = None, time_limit: float = 60.0,
                   wall_limit: float | None = None, threads: int = 1, attack: Any = None,
                   batch_size: int = 100, progress: bool = True,
                   generator: torch.Generator | None = None) -> VerifyReport:
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
        threads: solver threads.
        attack: the attack of the ``auto`` cascade (default ``SpecAPGD(steps=100,
            restarts=2)`` on the spec rows); any :class:`~advrobust.attacks.Attack` (it then
            attacks the label margins).
        batch_size: samples per relaxation / attack call.
        progress: show tqdm progress bars (on stderr).
        generator: random source of the attack's random starts.

    Returns:
        A :class:`VerifyReport`.

    Raises:
        InvalidParameterError: an unknown method or a bad time limit / batch size.
        InvalidInputError: malformed x, y or spec.
        UnsupportedLayerError: the model has a layer the verifiers cannot represent.
    """
    start = time.perf_counter()
    policy = _policy(method, time_limit, wall_limit, threads, attack, batch_size, progress,
                     generator)
    with eval_mode(model, who="verify_dataset"):
        problem = Problem.of(model, x, y, threat, spec, who="verify_dataset")
        return _run(problem, policy, wall_limit, start)


def _policy(method: str, time_limit: float, wall_limit: float | None, threads: int,
            attack: Any, batch_size: int, progress: bool,
            generator: torch.Generator | None) -> Policy:
    """The validated policy of a call (errors name ``verify_dataset``'s arguments)."""
    check_choice(method, "method", "verify_dataset", METHODS)
    check_float(time_limit, "time_limit", "verify_dataset", low=0.0, low_open=True,
                allow_inf=True)
    if wall_limit is not None:
        check_float(wall_limit, "wall_limit", "verify_dataset", low=0.0, low_open=True,
                    allow_inf=True)
    check_int(threads, "threads", "verify_dataset", low=1)
    check_int(batch_size, "batch_size", "verify_dataset", low=1)
    return Policy(method=method, time_limit=time_limit, threads=threads, attack=attack,
                  batch_size=batch_size, progress=progress, generator=generator)


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


def _property_ball(prop: VnnProperty) -> tuple[Tensor, LpBall]:
    """A centre and a clipped linf ball containing the box (the box itself when it is one)."""
    lo, hi = float(prop.lower.min()), float(prop.upper.max())
    try:
        return prop.as_linf_ball(lo, hi if hi > lo else lo + 1.0)
    except VnnlibError:  # a general box: prove over the enclosing ball, check witnesses exactly
        centre = (prop.lower + prop.upper) / 2
        eps = float(((prop.upper - prop.lower) / 2).max()) * (1 + 1e-6) + 1e-7
        return centre.float().unsqueeze(0), LpBall(Norm.LINF, eps, -torch.inf, torch.inf)


def _property_spec(prop: VnnProperty) -> Spec:
    """The property's rows, or an error naming the unsupported disjunct."""
    for k, poly in enumerate(prop.unsafe):
        if poly.A.shape[0] != 1:
            raise VnnlibError(
                f"unsupported output constraint: disjunct {k} of the unsafe set is a conjunction "
                f"of {poly.A.shape[0]} linear constraints; the verifiers take a disjunction of "
                "single linear constraints over Y (one '(<= ...)' / '(>= ...)' per 'and' of the "
                "'or'), such as the robustness form (or (and (>= Y_j Y_label)) ...)")
    return prop.to_spec(1)


def _check_shape(prop: VnnProperty, shape: tuple[int, ...]) -> None:
    size = 1
    for s in shape:
        size *= s
    if size != prop.num_inputs:
        raise InvalidInputError(
            f"The network takes inputs of shape {shape} ({size} values) but the VNNLIB "
            f"property declares {prop.num_inputs} input variables X_0..X_{prop.num_inputs - 1}. "
            "Pair the property with the network it was written for.")


def _inside_box(x: Tensor, prop: VnnProperty) -> Tensor:
    """``x`` clamped to the property's box, as float32 values that lie in it exactly.

    The box ends are float64; a float32 rounding of a clamped value can fall a fraction of an
    ulp outside, so such coordinates move one float32 step inwards.
    """
    point = torch.minimum(torch.maximum(x.double(), prop.lower), prop.upper).float()
    up = torch.full_like(point, torch.inf)
    point = torch.where(point.double() < prop.lower, torch.nextafter(point, up), point)
    return torch.where(point.double() > prop.upper, torch.nextafter(point, -up), point)


def verify_property(model: nn.Module, prop: VnnProperty, *,
                    input_shape: Sequence[int] | None = None, method: str = "auto",
                    time_limit: float = 60.0, threads: int = 1, attack: Any = None,
                    progress: bool = False, generator: torch.Generator | None = None
                    ) -> PropertyResult:
    """Decide a VNNLIB property of ``model`` with the cascade driver, within ``time_limit``.

    The box is read as a clipped linf ball (VNN-COMP robustness boxes are exactly that; any
    other box is enclosed in a ball, so "unsat" stays sound). A FALSIFIED witness is clamped to
    the property's exact box and re-evaluated against the unsafe polytopes before "sat" is
    reported.

    Args:
        model: the network (e.g. from :func:`advrobust.network.onnx.load_onnx`).
        prop: the property (:func:`advrobust.network.vnnlib.load_vnnlib`).
        input_shape: per-sample shape the model takes (default ``(D,)``).
        method, threads, attack, progress, generator: as in :func:`verify_dataset`.
        time_limit: wall-clock seconds for the whole call: every stage (CROWN, the attack,
            BaB, the MILP) gets its deadline from this one budget, and the answer comes back
            within it ("unknown" if the time ran out).

    Raises:
        VnnlibError: an unsafe set that is not a disjunction of single constraints.
        InvalidInputError: ``input_shape`` does not hold the property's input variables.
        InvalidParameterError: a time limit <= 0.
    """
    start = time.perf_counter()
    check_float(time_limit, "time_limit", "verify_property", low=0.0, low_open=True,
                allow_inf=True)
    policy = _policy(method, time_limit, None, threads, attack, 1, progress, generator)
    shape = tuple(int(s) for s in input_shape) if input_shape is not None \
        else (prop.num_inputs,)
    _check_shape(prop, shape)
    spec = _property_spec(prop)
    x0, ball = _property_ball(prop)
    x = x0.reshape(1, *shape)
    with eval_mode(model, who="verify_property"):
        label = prop.robustness_label()
        if label is None:
            with torch.no_grad():
                label = int(model(x).argmax(1)[0])
        problem = Problem.of(model, x, torch.tensor([label]), ball, spec,
                             box=(prop.lower, prop.upper), who="verify_dataset")
        report = _run(problem, policy, max(1e-6, time_limit - (time.perf_counter() - start)),
                      time.perf_counter())
        if report.verdict[0] is Verdict.VERIFIED:
            return PropertyResult("unsat", None, None, report)
        if report.verdict[0] is Verdict.FALSIFIED:
            point = _inside_box(report.witness.reshape(-1), prop)
            with torch.no_grad():
                out = model(point.reshape(1, *shape))
                out64 = problem.gate.model(point.double().reshape(1, *shape))  # the gate's twin
            # unsafe in float64 (the gate) and in the model's own precision (what a checker runs)
            if bool(prop.contains(point.unsqueeze(0), atol=0.0)) and \
                    bool(prop.is_unsafe(out64)) and bool(prop.is_unsafe(out)):
                return PropertyResult("sat", point, out[0], report)
            logger.warning("verify_property: the witness left the unsafe set once clamped to "
                           "the exact box; reporting unknown")
    return PropertyResult("unknown", None, None, report)
