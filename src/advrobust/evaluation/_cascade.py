"""The stages of :func:`~advrobust.evaluation.verify.verify_dataset` and their shared budget.

A :class:`_State` holds per sample the best sound lower bound of every spec row and the best
witness; stages only raise lower bounds (:meth:`_State.raise_lower`) or offer points, which are
re-evaluated through the real model inside the threat set (:meth:`_State.offer`). A
:class:`Budget` turns one wall-clock limit into a deadline every stage respects: a stage whose
measured (or predicted) cost does not fit what is left is skipped, the attack shortens its
runs, BaB and the MILP get the time left as their limits.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advrobust.core.progress import progress_bar
from advrobust.core.result import VERIFY_TOLERANCE, BoundResult, Verdict, decide_verdicts
from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall

#: Seconds of the wall-clock limit kept back for what follows the last stage (re-checking the
#: witness, building the report, HiGHS returning after its own limit): on VNN-COMP mnist_fc 256x2
#: at 30 s under a load average of 16-20 on 2 cores, answers came up to 2.7 s late with a guard
#: of 0.9 s (bench/RESULTS.md, issue 11); the guard is 0.5 s plus 5 % of the limit, never more
#: than a quarter of it, and an exact stage also leaves out twice a measured bound pass (its own
#: CROWN pass before the solver's clock starts).
GUARD_SECONDS = 0.5
GUARD_SHARE = 0.05
#: Share of its time an exact stage hands its method as the method's own limit (see
#: :func:`exact_stage`).
EXACT_SHARE = 0.9


@dataclass(frozen=True)
class Budget:
    """A wall-clock deadline (``time.perf_counter()`` value; ``inf`` for none)."""

    deadline: float = math.inf

    @classmethod
    def of(cls, seconds: float | None) -> Budget:
        """The budget of a call limited to ``seconds`` from now (None: unlimited), less the
        guard."""
        if seconds is None or math.isinf(seconds):
            return cls()
        guard = min(GUARD_SECONDS + GUARD_SHARE * seconds, seconds / 4)
        return cls(time.perf_counter() + seconds - guard)

    def left(self) -> float:
        """Seconds until the deadline (may be negative; ``inf`` if unlimited)."""
        return self.deadline - time.perf_counter()

    def share(self, seconds: float) -> float:
        """``seconds``, or what is left if that is less (never negative)."""
        return max(0.0, min(seconds, self.left()))


class _State:
    """Best lower bounds and best witness per sample, merged over the stages."""

    def __init__(self, model: nn.Module, x: Tensor, threat: LpBall, spec: Spec,
                 clean: Tensor) -> None:
        from advrobust.relax.witness import WitnessGate

        self.model, self.x, self.threat, self.spec = model, x, threat, spec
        self.gate = WitnessGate(model)  # the one gate for witnesses (float64, exact set)
        self.witness, self.values = self.gate(x, x, threat, spec)  # values (N, K) float64
        self.lower = torch.full_like(self.values, -torch.inf)
        self.upper = self.values.clone()
        self.decided_by = [""] * x.shape[0]
        self.stats: dict[str, Any] = {}
        self.bound_seconds = 0.0  # one relaxation pass, per sample (measured by the first stage)
        self.exact_seconds: dict[int, float] = {}  # per sample, spent in exact stages
        self.exact_overrun = 0.0  # most seconds an exact method ran past the time it was given

    def verdicts(self) -> tuple[Verdict, ...]:
        return decide_verdicts(self.lower, self.values, upper=self.upper, who="verify_dataset")

    def undecided(self) -> Tensor:
        return torch.tensor([v is Verdict.UNKNOWN for v in self.verdicts()], dtype=torch.bool)

    def open_rows(self, i: int) -> Tensor:
        """Row indices of sample ``i`` that no stage has proved yet."""
        return (self.lower[i] <= VERIFY_TOLERANCE).nonzero().flatten()

    def offer(self, idx: Tensor, points: Tensor) -> None:
        """Pass candidate points through the witness gate; keep the better ones."""
        points, values = self.gate(self.x[idx], points, self.threat, self.spec_of(idx))
        self.upper[idx] = torch.minimum(self.upper[idx], values)
        better = values.amin(1) < self.values[idx].amin(1)
        self.values[idx[better]] = values[better]
        self.witness[idx[better]] = points[better].to(self.witness)

    def raise_lower(self, idx: Tensor, lower: Tensor, rows: Tensor | None = None) -> None:
        """Merge lower bounds (N', K) of samples ``idx``, or (1, R) of rows ``rows`` of one."""
        if rows is None:
            self.lower[idx] = torch.maximum(self.lower[idx], lower.to(self.lower))
        else:
            i = int(idx[0])
            self.lower[i, rows] = torch.maximum(self.lower[i, rows], lower[0].to(self.lower))

    def spec_of(self, idx: Tensor, rows: Tensor | None = None) -> Spec:
        if rows is None:
            return Spec(self.spec.C[idx], self.spec.d[idx])
        return Spec(self.spec.C[idx][:, rows], self.spec.d[idx][:, rows])

    def mark(self, stage: str) -> None:
        for i, v in enumerate(self.verdicts()):
            if v is not Verdict.UNKNOWN and not self.decided_by[i]:
                self.decided_by[i] = stage


def take(state: _State, idx: Tensor, result: BoundResult, rows: Tensor | None = None) -> None:
    """Merge a bounder's result on samples ``idx`` (rows ``rows`` of one sample)."""
    state.raise_lower(idx, result.lower, rows)
    if result.witness is not None:
        state.offer(idx, result.witness.detach())


def relax_stage(state: _State, bounder: Any, y: Tensor, batch_size: int, progress: bool,
                name: str, budget: Budget) -> None:
    """One relaxation over every sample, in batches; stops (UNKNOWN) at the deadline."""
    idx_all = torch.arange(state.x.shape[0], device=state.x.device)
    chunks = list(idx_all.split(batch_size))
    start, done = time.perf_counter(), 0
    for idx in progress_bar(chunks, desc=name, disable=not progress, leave=False):
        if done and (time.perf_counter() - start) / done * len(idx) > budget.left():
            state.stats.setdefault("skipped", []).append(f"{name}: deadline")
            break
        take(state, idx, bounder(state.model, state.x[idx], y[idx], state.threat,
                                 state.spec_of(idx)))
        done += len(idx)
    state.bound_seconds = (time.perf_counter() - start) / max(1, done)
    state.mark(name)


def attack_stage(state: _State, attack: Any, y: Tensor, batch_size: int, progress: bool,
                 generator: torch.Generator | None, budget: Budget) -> None:
    """Offer the attack's points of the still-undecided samples (re-checked by the model).

    :class:`~advrobust.attacks.spec_apgd.SpecAPGD` attacks the spec rows themselves and fits
    its runs to the deadline; any other :class:`~advrobust.attacks.Attack` attacks the label
    margins.
    """
    from advrobust.attacks.spec_apgd import SpecAPGD

    todo = state.undecided().nonzero().flatten().to(state.x.device)
    chunks = list(todo.split(batch_size)) if todo.numel() else []
    runs = 0
    for idx in progress_bar(chunks, desc="attack", disable=not progress, leave=False):
        if budget.left() <= 0:
            break
        if isinstance(attack, SpecAPGD):
            result = attack.minimize(state.model, state.x[idx], state.threat, state.spec_of(idx),
                                     generator=generator, deadline=budget.deadline)
            state.offer(idx, result.points.detach())
            runs += result.restarts
        else:
            state.offer(idx, attack(state.model, state.x[idx], y[idx], state.threat,
                                    generator=generator).x_adv.detach())
    state.stats["attack"] = {"runs": runs}
    state.mark("attack")


def exact_stage(state: _State, make: Any, y: Tensor, progress: bool, name: str,
                optional: bool, time_limit: float, stages_left: int, budget: Budget) -> None:
    """Run an exact method sample by sample on the rows no earlier stage proved.

    Of its ``time_limit``, a sample gives this stage an equal share of what the earlier exact
    stages left (``stages_left`` stages, this one included, share it), and never more than the
    same share of what is left of the budget; ``make(seconds)`` builds the method. Every exact
    method starts with a CROWN pass over its sample: in the ``auto`` cascade (``optional``) the
    stage is skipped with a warning where that pass alone costs more than the time it would get
    (the samples stay UNKNOWN); an exact method asked for by name always runs.
    """
    todo = state.undecided().nonzero().flatten().to(state.x.device)

    def seconds_for(i: int) -> float:
        own = (time_limit - state.exact_seconds.get(i, 0.0)) / stages_left
        left = budget.left() / stages_left
        if left != math.inf:  # the method's own CROWN pass and set-up (MILP: the encoding)
            # run before its clock starts: measured on mnist_fc 256x2, ~1 s over an 8 s limit
            # under load (bench/RESULTS.md, issue 11), so a tenth of the time is kept back
            left = EXACT_SHARE * left - 2 * state.bound_seconds - state.exact_overrun
        return max(0.0, min(own, left))

    first = seconds_for(int(todo[0])) if todo.numel() else 0.0
    if optional and todo.numel() and state.bound_seconds > first:
        warnings.warn(
            f"verify_dataset: {name} skipped on {todo.numel()} undecided samples: one bound pass "
            f"takes {state.bound_seconds:.1f} s per sample on this network, more than the "
            f"{first:.3g} s it would get. Raise the time limit to run it.", UserWarning,
            stacklevel=5)
        state.stats.setdefault("skipped", []).append(f"{name}: bound pass over its time")
        state.mark(name)
        return
    details = state.stats.setdefault(name, {})
    bar = progress_bar(todo.tolist(), desc=name, disable=not progress, leave=False)
    for i in bar:
        seconds = seconds_for(i)
        if seconds <= 0 or (optional and state.bound_seconds > seconds):
            details[i] = [{"status": "skipped (time limit)"}]
            continue
        idx = torch.tensor([i], device=state.x.device)
        rows = state.open_rows(i)
        t0 = time.perf_counter()
        result = make(seconds)(state.model, state.x[idx], y[idx], state.threat,
                               state.spec_of(idx, rows))
        spent = time.perf_counter() - t0
        state.exact_seconds[i] = state.exact_seconds.get(i, 0.0) + spent
        state.exact_overrun = max(state.exact_overrun, spent - seconds)
        take(state, idx, result, rows)
        details[i] = _row_details(result, rows)
        bar.set_postfix(verdict=state.verdicts()[i].value)
    state.mark(name)


def _row_details(result: BoundResult, rows: Tensor) -> list[dict[str, Any]]:
    """An exact method's per-row log (statuses, domains, solver, seconds) in spec row numbers."""
    samples = result.stats.get("samples") or [[]]
    out = []
    for entry in samples[0]:
        entry = dict(entry)
        if "row" in entry:
            entry["row"] = int(rows[int(entry["row"])])
        out.append({k: (float(v) if isinstance(v, float) else v) for k, v in entry.items()
                    if isinstance(v, (int, float, str)) or v is None})
    return out
