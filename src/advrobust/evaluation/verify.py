"""Verify a dataset: per-sample verdicts from a relaxation, an attack and the exact methods.

``method="auto"`` is the cascade: CROWN on every sample (cheap, batched), a targeted attack on
every spec row of what it leaves undecided (:class:`~advrobust.attacks.spec_apgd.SpecAPGD`:
one APGD copy per row, random restarts), then branch and bound on ReLU splits
(:class:`~advrobust.exact.BaB`) and the MILP on what is still undecided, each exact stage on
the rows no earlier stage proved (for linf beta-CROWN BaB gets the whole per-sample time limit
and finishes with the MILP on its alpha-CROWN bounds where linear regions keep coming; for l1
the MILP alone). With ``wall_limit`` the whole call runs against one
wall-clock budget: every stage gets a deadline from it, a stage whose cost does not fit is
skipped, and where the attack is cheap next to the budget it runs first (quick "sat"). Every
verdict comes from :func:`~advrobust.core.result.decide_verdicts`: VERIFIED from the best
sound lower bound, FALSIFIED from a witness that lies in the threat set and whose spec values,
recomputed through the real model, are negative (a misclassified clean input is its own
witness).
"""

from __future__ import annotations

import functools
import logging
import math
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
from advrobust.core.result import Verdict
from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall, Norm
from advrobust.errors import InvalidInputError
from advrobust.evaluation._cascade import (
    Budget,
    _State,
    attack_stage,
    exact_stage,
    relax_stage,
)
from advrobust.evaluation._verify_report import VerifyReport
from advrobust.network.vnnlib import VnnlibError, VnnProperty

__all__ = ["METHODS", "PropertyResult", "VerifyReport", "verify_dataset", "verify_property"]

logger = logging.getLogger(__name__)

#: The ``method`` values of :func:`verify_dataset`.
METHODS = ("auto", "ibp", "crown", "lp", "milp", "bab")

#: With a wall-clock budget, the attack runs before CROWN when its predicted cost is at most
#: this share of the budget (a "sat" answer then comes at once), and it never gets more than
#: ``_ATTACK_SHARE`` of what is left.
_ATTACK_FIRST_SHARE = 0.05
_ATTACK_SHARE = 0.25


def _bounder(method: str, time_limit: float, threads: int) -> Any:
    from advrobust.exact import MILP, BaB
    from advrobust.relax import CROWN, IBP, LPRelaxation

    makers: dict[str, Callable[[], Any]] = {
        "ibp": IBP, "crown": CROWN, "auto": CROWN,
        "lp": lambda: LPRelaxation(threads=threads, time_limit=time_limit),
        # HiGHS's feasibility jump runs before the root node without checking the time limit
        # (measured on mnist_fc 256x2: 3.6 s of a 1 s limit); the attack and BaB look for
        # counterexamples instead
        "milp": lambda: MILP(time_limit=time_limit, threads=threads,
                             solver_options={"mip_heuristic_run_feasibility_jump": False}),
        "bab": lambda: BaB(time_limit=time_limit)}
    return makers[method]()


def _check_spec(spec: Spec | None, y: Tensor, clean: Tensor) -> Spec:
    if spec is None:
        return Spec.margins(y, clean.shape[1])
    if not isinstance(spec, Spec):
        raise InvalidInputError(f"'spec' must be a Spec or None. Got {type(spec).__name__}.")
    spec.check(clean.shape[0], clean.shape[1])
    dtype = torch.promote_types(spec.C.dtype, clean.dtype)  # never round a float64 spec down
    return Spec(spec.C.to(clean.device, dtype), spec.d.to(clean.device, dtype))


def _default_attack() -> Any:
    from advrobust.attacks.spec_apgd import SpecAPGD

    return SpecAPGD(steps=100, restarts=2)


def verify_dataset(model: nn.Module, x: Tensor, y: Tensor, threat: LpBall, *,
                   method: str = "auto", spec: Spec | None = None, time_limit: float = 60.0,
                   wall_limit: float | None = None, threads: int = 1, attack: Any = None,
                   batch_size: int = 100, progress: bool = True,
                   generator: torch.Generator | None = None) -> VerifyReport:
    """Verify every sample of a batch; see the module docstring for the cascade.

    Args:
        model: classifier returning logits, a (nested) ``nn.Sequential`` of layers the
            verifiers support; never moved, re-moded or modified.
        x: clean inputs (N, ...) inside the threat's box.
        y: labels (N,) int64.
        threat: the threat set ``S(x)``.
        method: ``"auto"`` (CROWN, the attack, BaB; the MILP for l1), ``"ibp"``, ``"crown"``,
            ``"lp"`` (one relaxation), ``"milp"`` or ``"bab"`` (exact: CROWN on every sample,
            then the MILP, resp. branch and bound, on every sample CROWN leaves undecided).
        spec: rows ``C f + d`` that must stay positive (default: the margins ``e_y - e_t``).
        time_limit: exact-method (and LP) seconds per sample; ``auto`` gives it to BaB
            (linf) or the MILP (l1).
        wall_limit: seconds for the whole call (None: no limit). Every stage gets a deadline
            from this one budget; the report comes back within it (less a guard kept for the
            final checks, see :data:`~advrobust.evaluation._cascade.GUARD_SECONDS`), with
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
    check_choice(method, "method", "verify_dataset", METHODS)
    check_float(time_limit, "time_limit", "verify_dataset", low=0.0, low_open=True,
                allow_inf=True)
    if wall_limit is not None:
        check_float(wall_limit, "wall_limit", "verify_dataset", low=0.0, low_open=True,
                    allow_inf=True)
    check_int(threads, "threads", "verify_dataset", low=1)
    check_int(batch_size, "batch_size", "verify_dataset", low=1)
    budget = Budget.of(None if wall_limit is None else wall_limit - (time.perf_counter() - start))
    seconds: dict[str, float] = {}
    with eval_mode(model, who="verify_dataset"):
        clean = check_batch(model, x, y, threat, who="verify_dataset")
        state = _State(model, x.detach(), threat, _check_spec(spec, y, clean), clean)
        state.mark("clean")
        for stage, run in _stages(method, state, y, time_limit, threads, attack, batch_size,
                                  progress, generator, budget):
            t0 = time.perf_counter()
            if budget.left() > 0 and bool(state.undecided().any()):
                run()
            elif bool(state.undecided().any()):  # out of time before this stage started
                state.stats.setdefault("skipped", []).append(f"{stage}: deadline")
            seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - t0
            logger.info("verify %s: %s done in %.2fs", method, stage, seconds[stage])
    return VerifyReport(verdict=state.verdicts(), lower=state.lower, upper=state.upper,
                        witness=state.witness, decided_by=tuple(state.decided_by),
                        clean_values=state.spec.apply(clean), method=method, threat=threat,
                        seconds=time.perf_counter() - start, stage_seconds=seconds,
                        stats=dict(state.stats))


def _is_chain(state: _State) -> bool:
    """True if the exact methods can read the model (a chain of their layers)."""
    from advrobust.network.ir import Network
    from advrobust.relax.base import verifiable_ir

    ir = verifiable_ir(state.model, tuple(state.x.shape[1:]), "verify_dataset", True)
    return isinstance(ir, Network)


def _crown_seconds(state: _State) -> float:
    """Predicted seconds of one CROWN pass over every sample (measured forward passes).

    CROWN back-substitutes one row per unstable-capable neuron (and per spec row) through the
    layers below it, each about the cost of a forward pass of one sample; twice that covers
    the relaxations. Measured on a batch of forward passes of the IR.
    """
    from advrobust.network.ir import Network
    from advrobust.network.relu import ReLUOp
    from advrobust.relax.base import verifiable_ir

    network = verifiable_ir(state.model, tuple(state.x.shape[1:]), "verify_dataset", True)
    if isinstance(network, Network):
        rows = sum(op.in_size for op in network.ops if isinstance(op, ReLUOp))
    else:  # every node that feeds a nonlinear op is refined
        rows = sum(math.prod(n.shape) for i, n in enumerate(network.nodes)
                   if network.needs_bounds(i))
    rows += state.spec.num_rows
    batch = min(rows, 256)
    x = state.x[:1].expand((batch,) + tuple(state.x.shape[1:]))
    t0 = time.perf_counter()
    with torch.no_grad():
        network.forward(x)
    return 2 * (time.perf_counter() - t0) * rows / batch * state.x.shape[0]


def _attack_seconds(state: _State, attack: Any) -> float:
    """Predicted seconds of the default attack: its steps and restarts times one timed
    forward and backward pass over every (sample, row) copy."""
    copies = state.x.expand((state.x.shape[0] * state.spec.num_rows,)
                            + tuple(state.x.shape[1:])).clone().requires_grad_(True)
    per_step = float("inf")
    for _ in range(2):  # the first pass also pays autograd's warm-up: keep the faster
        t0 = time.perf_counter()
        with torch.enable_grad():
            torch.autograd.grad(state.model(copies).sum(), copies)
        per_step = min(per_step, time.perf_counter() - t0)
    steps = getattr(attack, "steps", 100) * getattr(attack, "restarts", 1)
    return per_step * steps


def _stages(method: str, state: _State, y: Tensor, time_limit: float, threads: int,
            attack: Any, batch_size: int, progress: bool,
            generator: torch.Generator | None,
            budget: Budget) -> list[tuple[str, Callable[[], None]]]:
    """The (name, run) steps of ``method``, run in order against ``budget``."""
    first = "crown" if method in ("auto", "milp", "bab") else method
    bounder = _bounder(first, time_limit, threads)

    def relax() -> None:
        if budget.deadline != float("inf"):
            predicted = _crown_seconds(state) if first == "crown" else 0.0
            if predicted > budget.left():
                state.bound_seconds = predicted / state.x.shape[0]
                state.stats.setdefault("skipped", []).append(
                    f"{first}: predicted {predicted:.3g} s, more than the time left")
                return
        relax_stage(state, bounder, y, batch_size, progress, first, budget)

    stages: list[tuple[str, Callable[[], None]]] = [(first, relax)]
    if method == "auto":
        atk = attack if attack is not None else _default_attack()
        run_attack = functools.partial(_attack, state, atk, y, batch_size, progress,
                                       generator, budget)
        cheap = budget.deadline != float("inf") and \
            _attack_seconds(state, atk) <= _ATTACK_FIRST_SHARE * budget.left()
        stages.insert(0 if cheap else 1, ("attack", run_attack))
    if method not in ("auto", "milp", "bab"):
        return stages
    if state.threat.norm is Norm.L2 and method == "auto":
        warnings.warn("verify_dataset: BaB and the MILP handle linf and l1 threats only; the "
                      "auto cascade stops after the attack for l2.", UserWarning, stacklevel=3)
        return stages
    if method == "auto" and not _is_chain(state):
        warnings.warn("verify_dataset: BaB and the MILP handle chain networks only; the auto "
                      "cascade stops after CROWN and the attack for this graph (residual / "
                      "concat / sigmoid ...) network.", UserWarning, stacklevel=3)
        return stages
    # linf: beta-CROWN BaB alone, with the whole exact budget (it finishes with the MILP on its
    # alpha-CROWN bounds when linear regions keep coming); mnist_fc at 30 s, BaB alone vs the
    # old BaB + MILP halves: bench/RESULTS.md, issue 11
    exact = ("bab",) if method == "auto" and state.threat.norm is Norm.LINF \
        else ("milp",) if method == "auto" else (method,)
    for k, name in enumerate(exact):
        def make(seconds: float, name: str = name) -> Any:
            return _bounder(name, max(seconds, 1e-3), threads)

        stages.append((name, functools.partial(exact_stage, state, make, y, progress, name,
                                               method == "auto", time_limit, len(exact) - k,
                                               budget)))
    return stages


def _attack(state: _State, attack: Any, y: Tensor, batch_size: int, progress: bool,
            generator: torch.Generator | None, budget: Budget) -> None:
    """The attack stage, never given more than ``_ATTACK_SHARE`` of the time left."""
    left = budget.left()
    own = budget if left == float("inf") else Budget(time.perf_counter() + _ATTACK_SHARE * left)
    attack_stage(state, attack, y, batch_size, progress, generator, own)


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
    """Decide a VNNLIB property of ``model`` with :func:`verify_dataset`, within ``time_limit``.

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
    shape = tuple(int(s) for s in input_shape) if input_shape is not None \
        else (prop.num_inputs,)
    _check_shape(prop, shape)
    spec = _property_spec(prop)
    x0, ball = _property_ball(prop)
    x = x0.reshape(1, *shape)
    label = prop.robustness_label()
    if label is None:
        with eval_mode(model, who="verify_property"), torch.no_grad():
            label = int(model(x).argmax(1)[0])
    report = verify_dataset(model, x, torch.tensor([label]), ball, method=method,
                            spec=spec, time_limit=time_limit,
                            wall_limit=max(1e-6, time_limit - (time.perf_counter() - start)),
                            threads=threads, attack=attack, progress=progress,
                            generator=generator)
    if report.verdict[0] is Verdict.VERIFIED:
        return PropertyResult("unsat", None, None, report)
    if report.verdict[0] is Verdict.FALSIFIED:
        from advrobust.relax.witness import float64_copy

        point = _inside_box(report.witness.reshape(-1), prop)
        with eval_mode(model, who="verify_property"), torch.no_grad():
            out = model(point.reshape(1, *shape))
            out64 = float64_copy(model)(point.double().reshape(1, *shape))  # the witness gate
        # unsafe in float64 (the gate) and in the model's own precision (what a checker runs)
        if bool(prop.contains(point.unsqueeze(0), atol=0.0)) and bool(prop.is_unsafe(out64)) \
                and bool(prop.is_unsafe(out)):
            return PropertyResult("sat", point, out[0], report)
        logger.warning("verify_property: the witness left the unsafe set once clamped to the "
                       "exact box; reporting unknown")
    return PropertyResult("unknown", None, None, report)
