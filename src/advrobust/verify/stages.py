"""The stages of a verification run, each a function of the :class:`~advrobust.verify.bracket.
Bracket` (the problem and what is known so far) and the time it may take.

A relaxation bounds every sample in batches; the attack offers points of the still-undecided
samples; an exact method runs sample by sample on the rows no earlier stage proved. Bounders
that start from layer bounds (CROWN, BaB, the MILP: ``reuses_layer_bounds``) get the problem's
cached ones (:meth:`~advrobust.verify.problem.Problem.ensure_layer_bounds`), so the intermediate
bounds of a sample are computed once per run. Which stage runs with how much time is the
driver's business (:mod:`advrobust.verify.cascade`).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from advrobust.core.progress import progress_bar
from advrobust.core.result import BoundResult
from advrobust.relax.base import Bounder
from advrobust.verify.bracket import Bracket
from advrobust.verify.budget import Budget, exact_share
from advrobust.verify.problem import BoundRecord

__all__ = ["attack_stage", "call_bounder", "exact_stage", "relax_stage"]


def _reuses(bounder: Any) -> bool:
    """True for a bounder that starts from the problem's (float64) layer bounds."""
    return bool(getattr(bounder, "reuses_layer_bounds", False)) and \
        getattr(bounder, "precision", "float64") == "float64"


def call_bounder(bracket: Bracket, bounder: Any, idx: Tensor, stage: str, *,
                 rows: Tensor | None = None, compute: bool = False) -> BoundResult:
    """Run ``bounder`` on samples ``idx`` (rows ``rows`` of one sample), from the problem's
    cached layer bounds where it reuses them (with ``compute``, computed now and cached where
    no earlier stage did; else the bounder makes its own)."""
    p = bracket.problem
    args = (p.model, p.x[idx], p.y[idx], p.threat, p.spec_of(idx, rows))
    # the problem's float64 copy and witness gate, instead of one more per call
    shared: dict[str, Any] = {"gate": p.gate} if isinstance(bounder, Bounder) else {}
    if _reuses(bounder):
        layers = p.ensure_layer_bounds(idx, stage) if compute else p.layer_bounds(idx)
        if layers is not None:
            result: BoundResult = bounder(*args, layer_bounds=layers, **shared)
            return result
    return bounder(*args, **shared)  # type: ignore[no-any-return]


def relax_stage(bracket: Bracket, bounder: Any, name: str, budget: Budget, *,
                batch_size: int, progress: bool, only_open: bool = False,
                keep_bounds: bool = False) -> None:
    """One relaxation over every sample (``only_open``: every undecided one), in batches;
    stops (UNKNOWN) at the deadline. With ``keep_bounds`` the layer bounds of the samples it
    leaves undecided stay cached for the exact stages; the others' are dropped."""
    x = bracket.problem.x
    todo = bracket.undecided().nonzero().flatten().to(x.device) if only_open \
        else torch.arange(x.shape[0], device=x.device)
    chunks = list(todo.split(batch_size)) if todo.numel() else []
    start, done = time.perf_counter(), 0
    for idx in progress_bar(chunks, desc=name, disable=not progress, leave=False):
        if done and (time.perf_counter() - start) / done * len(idx) > budget.left():
            bracket.skip(name, "deadline")
            break
        t0 = time.perf_counter()
        result = call_bounder(bracket, bounder, idx, name, compute=True)
        bracket.charge(idx, name, time.perf_counter() - t0)
        bracket.take(idx, result, stage=name, gated=isinstance(bounder, Bounder))
        open_ = bracket.undecided()
        bracket.problem.forget([int(i) for i in idx if not (keep_bounds and open_[int(i)])])
        done += len(idx)
    bracket.bound_seconds = (time.perf_counter() - start) / max(1, done)
    bracket.mark(name)


def attack_stage(bracket: Bracket, attack: Any, budget: Budget, *, batch_size: int,
                 progress: bool, generator: torch.Generator | None,
                 name: str = "attack") -> None:
    """Offer the attack's points of the still-undecided samples (re-checked by the model).

    :class:`~advrobust.attacks.spec_apgd.SpecAPGD` attacks the spec rows themselves and fits
    its runs to the deadline; any other :class:`~advrobust.attacks.Attack` attacks the label
    margins. Points are credited to ``name`` (an :class:`~advrobust.attacks.Ensemble`'s to the
    member that found them); attacks that report using no gradients go to
    :attr:`Bracket.black_box`.
    """
    from advrobust.attacks.spec_apgd import SpecAPGD

    p = bracket.problem
    todo = bracket.undecided().nonzero().flatten().to(p.x.device)
    chunks = list(todo.split(batch_size)) if todo.numel() else []
    runs = 0
    for idx in progress_bar(chunks, desc=name, disable=not progress, leave=False):
        if budget.left() <= 0:
            break
        t0 = time.perf_counter()
        if isinstance(attack, SpecAPGD):
            result = attack.minimize(p.model, p.x[idx], p.threat, p.spec_of(idx),
                                     generator=generator, deadline=budget.deadline)
            bracket.charge(idx, name, time.perf_counter() - t0)
            bracket.offer(idx, result.points.detach(), name)
            runs += result.restarts
        else:
            res = attack(p.model, p.x[idx], p.y[idx], p.threat, generator=generator)
            bracket.charge(idx, name, time.perf_counter() - t0)
            bracket.offer(idx, res.x_adv.detach(), _credit(bracket, attack, res, name))
    bracket.stats[name] = {"runs": runs}
    bracket.mark(name)


def _credit(bracket: Bracket, attack: Any, result: Any, name: str) -> list[str | None]:
    """Per sample, the name an attack's point is credited to; notes black-box attacks."""
    from advrobust.attacks.ensemble import Ensemble, attack_label

    n = int(result.x_adv.shape[0])
    if result.info.get("black_box"):
        bracket.black_box.add(name)
    if not isinstance(attack, Ensemble):
        return [name] * n
    bracket.black_box.update(result.info.get("black_box_members") or ())
    broken = result.info.get("broken_by") or [None] * n
    return [b or attack_label(attack.attacks[0]) for b in broken]


def exact_stage(bracket: Bracket, make: Callable[[float], Any], name: str, budget: Budget, *,
                optional: bool, time_limit: float, stages_left: int, progress: bool,
                own_limit: bool = False, bar: Any = None) -> None:
    """Run an exact method sample by sample on the rows no earlier stage proved.

    Of its ``time_limit``, a sample gives this stage an equal share of what the earlier exact
    stages left (``stages_left`` stages, this one included, share it; with ``own_limit`` the
    whole ``time_limit`` is this stage's), and never more than the
    same share of what is left of the budget; ``make(seconds)`` builds the method, which starts
    from the problem's cached layer bounds. ``bar``: a progress bar to advance per sample
    instead of this stage's own. In the ``auto`` cascade (``optional``) the stage is
    skipped with a warning where one bound pass costs more than the time it would get (the
    samples stay UNKNOWN); an exact method asked for by name always runs.
    """
    todo = bracket.undecided().nonzero().flatten().to(bracket.problem.x.device)
    seconds_for = _time_share(bracket, budget, time_limit, stages_left, own_limit)
    first = seconds_for(int(todo[0])) if todo.numel() else 0.0
    if optional and todo.numel() and bracket.bound_seconds > first:
        _skip_stage(bracket, name, int(todo.numel()), first)
        return
    details = bracket.stats.setdefault(name, {})
    own_bar = bar is None
    if own_bar:
        bar = progress_bar(total=todo.numel(), desc=name, disable=not progress, leave=False)
    for i in todo.tolist():
        seconds = seconds_for(i)
        if seconds <= 0 or (optional and bracket.bound_seconds > seconds):
            details[i] = [{"status": "skipped (time limit)"}]
            bar.update(1)
            continue
        _exact_sample(bracket, make, name, i, seconds, details)
        bar.update(1)
        if own_bar:
            bar.set_postfix(verdict=bracket.verdicts()[i].value)
    if own_bar:
        bar.close()
    bracket.mark(name)


def _time_share(bracket: Bracket, budget: Budget, time_limit: float, stages_left: int,
                own_limit: bool) -> Callable[[int], float]:
    """The seconds an exact stage gets on sample ``i`` (the shares of :func:`exact_stage`)."""

    def seconds_for(i: int) -> float:
        own = time_limit if own_limit else \
            (time_limit - bracket.exact_seconds.get(i, 0.0)) / stages_left
        left = budget.left() / stages_left
        if left != math.inf:  # the method's own bound pass and set-up (MILP: the encoding)
            # run before its clock starts: measured on mnist_fc 256x2, ~1 s over an 8 s limit
            # under load (bench/RESULTS.md, issue 11), so a tenth of the time (at most 1.5 s)
            # is kept back
            left = exact_share(left) - 2 * bracket.bound_seconds - bracket.exact_overrun
        return max(0.0, min(own, left))

    return seconds_for


def _skip_stage(bracket: Bracket, name: str, undecided: int, first: float) -> None:
    """Skip an optional exact stage whose bound pass takes longer than its time, saying so."""
    warnings.warn(
        f"verify_dataset: {name} skipped on {undecided} undecided samples: one bound pass "
        f"takes {bracket.bound_seconds:.1f} s per sample on this network, more than the "
        f"{first:.3g} s it would get. Raise the time limit to run it.", UserWarning,
        stacklevel=6)  # exact_stage's stacklevel 5, one frame deeper
    bracket.skip(name, "bound pass over its time")
    bracket.mark(name)


def _exact_sample(bracket: Bracket, make: Callable[[float], Any], name: str, i: int,
                  seconds: float, details: dict[Any, Any]) -> None:
    """Run the method ``make(seconds)`` on the open rows of sample ``i``; take its result,
    charge its time and log its rows in ``details``."""
    idx = torch.tensor([i], device=bracket.problem.x.device)
    rows = bracket.open_rows(i)
    t0 = time.perf_counter()
    result = call_bounder(bracket, make(seconds), idx, name, rows=rows)
    spent = time.perf_counter() - t0
    bracket.charge(idx, name, spent)
    bracket.exact_seconds[i] = bracket.exact_seconds.get(i, 0.0) + spent
    bracket.exact_overrun = max(bracket.exact_overrun, spent - seconds)
    bracket.take(idx, result, rows, stage=name)
    _keep_root_bounds(bracket, result, i, name, spent)
    details[i] = _row_details(result, rows)
    if "exact" in result.stats:  # the MILP on LP-relaxed ops: sound bounds, not minima
        exact = bracket.stats.setdefault("exact", {})
        exact[name] = exact.get(name, True) and bool(result.stats["exact"])


def _keep_root_bounds(bracket: Bracket, result: BoundResult, i: int, name: str,
                      seconds: float) -> None:
    """Cache (intersected with the problem's) the layer bounds an exact method optimised at
    its root (BaB's alpha-CROWN, after its refinement if any), so that a later stage (the
    MILP) starts from them."""
    roots = result.stats.get("root_bounds") or {}
    if 0 in roots:
        method = "bab-refine" if 0 in (result.stats.get("refinements") or {}) else "alpha-crown"
        record = BoundRecord(method, name, torch.float64, seconds, (i,))
        bracket.problem.store_layer_bounds([i], [(lo.to(torch.float64), hi.to(torch.float64))
                                                 for lo, hi in roots[0]], record)


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
