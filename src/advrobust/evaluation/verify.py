"""Verify a dataset: per-sample verdicts from a relaxation, an attack and the exact MILP.

``method="auto"`` is the cascade: CROWN on every sample (cheap, batched), PGD on the samples it
leaves undecided, then branch and bound on ReLU splits (:class:`~advrobust.exact.BaB`) and the
MILP on what is still undecided (for linf each exact stage with half of the per-sample time
limit; for l1 the MILP alone) — the whole robustness bracket
``certified <= true robust <= not falsified`` in one call. Every verdict comes from
:func:`~advrobust.core.result.decide_verdicts`: VERIFIED from the best sound lower bound,
FALSIFIED from a witness that lies in the threat set and whose spec values, recomputed through
the real model, are negative (a misclassified clean input is its own witness).
"""

from __future__ import annotations

import functools
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advrobust.core._validation import check_choice, check_float, check_int
from advrobust.core.checks import check_batch
from advrobust.core.modes import eval_mode
from advrobust.core.progress import progress_bar
from advrobust.core.result import BoundResult, Verdict, decide_verdicts
from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall, Norm
from advrobust.errors import InvalidInputError
from advrobust.evaluation._verify_report import VerifyReport
from advrobust.network.vnnlib import VnnlibError, VnnProperty

__all__ = ["METHODS", "PropertyResult", "VerifyReport", "verify_dataset", "verify_property"]

logger = logging.getLogger(__name__)

#: The ``method`` values of :func:`verify_dataset`.
METHODS = ("auto", "ibp", "crown", "lp", "milp", "bab")


class _State:
    """Best lower bounds and best witness per sample, merged over the stages."""

    def __init__(self, model: nn.Module, x: Tensor, threat: LpBall, spec: Spec,
                 clean: Tensor) -> None:
        self.model, self.x, self.threat, self.spec = model, x, threat, spec
        self.values = spec.apply(clean)  # spec values at the witness, (N, K)
        self.lower = torch.full_like(self.values, -torch.inf)
        self.upper = self.values.clone()
        self.witness = x.detach().clone()
        self.decided_by = [""] * x.shape[0]
        self.stats: dict[str, Any] = {}
        self.bound_seconds = 0.0  # one relaxation pass, per sample (measured by the first stage)

    def verdicts(self) -> tuple[Verdict, ...]:
        return decide_verdicts(self.lower, self.values)

    def undecided(self) -> Tensor:
        return torch.tensor([v is Verdict.UNKNOWN for v in self.verdicts()], dtype=torch.bool)

    def offer(self, idx: Tensor, points: Tensor) -> None:
        """Re-evaluate candidate points through the model; keep those inside and better."""
        inside = self.threat.contains(self.x[idx], points)
        with torch.no_grad():
            values = self.spec_of(idx).apply(self.model(points))
        self.upper[idx] = torch.minimum(self.upper[idx],
                                        values.masked_fill(~inside.unsqueeze(1), torch.inf))
        better = inside & (values.amin(1) < self.values[idx].amin(1))
        self.values[idx[better]] = values[better]
        self.witness[idx[better]] = points[better].to(self.witness)

    def raise_lower(self, idx: Tensor, lower: Tensor) -> None:
        self.lower[idx] = torch.maximum(self.lower[idx], lower.to(self.lower))

    def spec_of(self, idx: Tensor) -> Spec:
        return Spec(self.spec.C[idx], self.spec.d[idx])

    def mark(self, stage: str) -> None:
        for i, v in enumerate(self.verdicts()):
            if v is not Verdict.UNKNOWN and not self.decided_by[i]:
                self.decided_by[i] = stage


def _bounder(method: str, time_limit: float, threads: int) -> Any:
    from advrobust.exact import MILP, BaB
    from advrobust.relax import CROWN, IBP, LPRelaxation

    makers: dict[str, Callable[[], Any]] = {
        "ibp": IBP, "crown": CROWN, "auto": CROWN,
        "lp": lambda: LPRelaxation(threads=threads, time_limit=time_limit),
        "milp": lambda: MILP(time_limit=time_limit, threads=threads),
        "bab": lambda: BaB(time_limit=time_limit)}
    return makers[method]()


def _take(state: _State, idx: Tensor, result: BoundResult) -> None:
    state.raise_lower(idx, result.lower)
    if result.witness is not None:
        state.offer(idx, result.witness.detach())


def _relax_stage(state: _State, bounder: Any, y: Tensor, batch_size: int, progress: bool,
                 name: str) -> None:
    idx_all = torch.arange(state.x.shape[0], device=state.x.device)
    chunks = list(idx_all.split(batch_size))
    start = time.perf_counter()
    for idx in progress_bar(chunks, desc=name, disable=not progress, leave=False):
        result = bounder(state.model, state.x[idx], y[idx], state.threat, state.spec_of(idx))
        _take(state, idx, result)
    state.bound_seconds = (time.perf_counter() - start) / max(1, state.x.shape[0])
    state.mark(name)


def _attack_stage(state: _State, attack: Any, y: Tensor, batch_size: int, progress: bool,
                  generator: torch.Generator | None) -> None:
    todo = state.undecided().nonzero().flatten().to(state.x.device)
    chunks = list(todo.split(batch_size)) if todo.numel() else []
    for idx in progress_bar(chunks, desc="pgd", disable=not progress, leave=False):
        result = attack(state.model, state.x[idx], y[idx], state.threat, generator=generator)
        state.offer(idx, result.x_adv.detach())
    state.mark("pgd")


def _exact_stage(state: _State, exact: Any, y: Tensor, progress: bool, name: str,
                 optional: bool) -> None:
    """Run an exact method sample by sample on what is still undecided.

    Every exact method starts with a CROWN pass over its sample. In the ``auto`` cascade
    (``optional``), where that pass alone costs more than the method's time limit (large
    convolutional networks), the stage is skipped with a warning rather than overrunning the
    limit on every sample (they stay UNKNOWN); an exact method asked for by name always runs.
    """
    todo = state.undecided().nonzero().flatten().to(state.x.device)
    if optional and todo.numel() and state.bound_seconds > exact.time_limit:
        warnings.warn(
            f"verify_dataset: {name} skipped on {todo.numel()} undecided samples: one bound pass "
            f"takes {state.bound_seconds:.1f} s per sample on this network, more than its time "
            f"limit of {exact.time_limit:g} s. Raise the time limit to run it.", UserWarning,
            stacklevel=4)
        state.mark(name)
        return
    bar = progress_bar(todo.tolist(), desc=name, disable=not progress, leave=False)
    for i in bar:
        idx = torch.tensor([i], device=state.x.device)
        _take(state, idx, exact(state.model, state.x[idx], y[idx], state.threat,
                                state.spec_of(idx)))
        bar.set_postfix(verdict=state.verdicts()[i].value)
    state.mark(name)


def _check_spec(spec: Spec | None, y: Tensor, clean: Tensor) -> Spec:
    if spec is None:
        return Spec.margins(y, clean.shape[1])
    if not isinstance(spec, Spec):
        raise InvalidInputError(f"'spec' must be a Spec or None. Got {type(spec).__name__}.")
    spec.check(clean.shape[0], clean.shape[1])
    return Spec(spec.C.to(clean), spec.d.to(clean))


def _default_attack(threat: LpBall) -> Any:
    from advrobust.attacks import PGD

    return PGD(steps=50, restarts=2, loss="margin")


def verify_dataset(model: nn.Module, x: Tensor, y: Tensor, threat: LpBall, *,
                   method: str = "auto", spec: Spec | None = None, time_limit: float = 60.0,
                   threads: int = 1, attack: Any = None, batch_size: int = 100,
                   progress: bool = True, generator: torch.Generator | None = None
                   ) -> VerifyReport:
    """Verify every sample of a batch; see the module docstring for the cascade.

    Args:
        model: classifier returning logits, a (nested) ``nn.Sequential`` of layers the
            verifiers support; never moved, re-moded or modified.
        x: clean inputs (N, ...) inside the threat's box.
        y: labels (N,) int64.
        threat: the threat set ``S(x)``.
        method: ``"auto"`` (CROWN, then PGD, then BaB, then MILP), ``"ibp"``, ``"crown"``,
            ``"lp"`` (one relaxation), ``"milp"`` or ``"bab"`` (exact: CROWN on every sample,
            then the MILP, resp. branch and bound, on every sample CROWN leaves undecided).
        spec: rows ``C f + d`` that must stay positive (default: the margins ``e_y - e_t``).
        time_limit: exact-method (and LP) seconds per sample; ``auto`` splits it evenly
            between BaB and the MILP.
        threads: solver threads.
        attack: the attack of the ``auto`` cascade (default ``PGD(steps=50, restarts=2,
            loss="margin")``); any :class:`~advrobust.attacks.Attack`.
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
    check_choice(method, "method", "verify_dataset", METHODS)
    check_float(time_limit, "time_limit", "verify_dataset", low=0.0, low_open=True,
                allow_inf=True)
    check_int(threads, "threads", "verify_dataset", low=1)
    check_int(batch_size, "batch_size", "verify_dataset", low=1)
    start, seconds = time.perf_counter(), {}
    with eval_mode(model, who="verify_dataset"):
        clean = check_batch(model, x, y, threat, who="verify_dataset")
        state = _State(model, x.detach(), threat, _check_spec(spec, y, clean), clean)
        state.mark("clean")
        for stage, run in _stages(method, state, y, time_limit, threads, attack, batch_size,
                                  progress, generator):
            t0 = time.perf_counter()
            run()
            seconds[stage] = time.perf_counter() - t0
            logger.info("verify %s: %s done in %.2fs", method, stage, seconds[stage])
    return VerifyReport(verdict=state.verdicts(), lower=state.lower, upper=state.upper,
                        witness=state.witness, decided_by=tuple(state.decided_by),
                        clean_values=state.spec.apply(clean), method=method, threat=threat,
                        seconds=time.perf_counter() - start, stage_seconds=seconds)


def _stages(method: str, state: _State, y: Tensor, time_limit: float, threads: int,
            attack: Any, batch_size: int, progress: bool,
            generator: torch.Generator | None) -> list[tuple[str, Callable[[], None]]]:
    """The (name, run) steps of ``method``."""
    first = "crown" if method in ("auto", "milp", "bab") else method
    bounder = _bounder(first, time_limit, threads)
    stages = [(first, lambda: _relax_stage(state, bounder, y, batch_size, progress, first))]
    if method == "auto":
        atk = attack if attack is not None else _default_attack(state.threat)
        stages.append(("pgd", lambda: _attack_stage(state, atk, y, batch_size, progress,
                                                    generator)))
    if method not in ("auto", "milp", "bab"):
        return stages
    if state.threat.norm is Norm.L2 and method == "auto":
        warnings.warn("verify_dataset: BaB and the MILP handle linf and l1 threats only; the "
                      "auto cascade stops after the attack for l2.", UserWarning, stacklevel=3)
        return stages
    exact = ("bab", "milp") if method == "auto" and state.threat.norm is Norm.LINF \
        else ("milp",) if method == "auto" else (method,)
    share = time_limit / len(exact)
    for name in exact:
        stages.append((name, functools.partial(_exact_stage, state,
                                               _bounder(name, share, threads), y, progress,
                                               name, method == "auto")))
    return stages


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


def verify_property(model: nn.Module, prop: VnnProperty, *,
                    input_shape: Sequence[int] | None = None, method: str = "auto",
                    time_limit: float = 60.0, threads: int = 1, attack: Any = None,
                    progress: bool = False, generator: torch.Generator | None = None
                    ) -> PropertyResult:
    """Decide a VNNLIB property of ``model`` with :func:`verify_dataset`.

    The box is read as a clipped linf ball (VNN-COMP robustness boxes are exactly that; any
    other box is enclosed in a ball, so "unsat" stays sound). A FALSIFIED witness is clamped to
    the property's exact box and re-evaluated against the unsafe polytopes before "sat" is
    reported.

    Args:
        model: the network (e.g. from :func:`advrobust.network.onnx.load_onnx`).
        prop: the property (:func:`advrobust.network.vnnlib.load_vnnlib`).
        input_shape: per-sample shape the model takes (default ``(D,)``).
        method, time_limit, threads, attack, progress, generator: as in
            :func:`verify_dataset` (``time_limit`` bounds the MILP; CROWN and the attack run
            before it).

    Raises:
        VnnlibError: an unsafe set that is not a disjunction of single constraints.
    """
    shape = tuple(input_shape) if input_shape is not None else (prop.num_inputs,)
    x0, ball = _property_ball(prop)
    x = x0.reshape(1, *shape)
    label = prop.robustness_label()
    if label is None:
        with eval_mode(model, who="verify_property"), torch.no_grad():
            label = int(model(x).argmax(1)[0])
    report = verify_dataset(model, x, torch.tensor([label]), ball, method=method,
                            spec=prop.to_spec(1), time_limit=time_limit, threads=threads,
                            attack=attack, progress=progress, generator=generator)
    if report.verdict[0] is Verdict.VERIFIED:
        return PropertyResult("unsat", None, None, report)
    if report.verdict[0] is Verdict.FALSIFIED:
        flat = report.witness.reshape(-1).double()
        point = torch.minimum(torch.maximum(flat, prop.lower), prop.upper).float()
        with eval_mode(model, who="verify_property"), torch.no_grad():
            out = model(point.reshape(1, *shape))
        if bool(prop.contains(point.unsqueeze(0))) and bool(prop.is_unsafe(out)):
            return PropertyResult("sat", point, out[0], report)
        logger.warning("verify_property: the witness left the unsafe set once clamped to the "
                       "exact box; reporting unknown")
    return PropertyResult("unknown", None, None, report)
