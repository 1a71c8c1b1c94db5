"""The work of one task: the brackets of ``batch_size`` samples at every eps of a threat.

Per task (one model, one norm, a fixed slice of samples) the stages run over the whole eps grid
at once and hand their results along the grid:

1. **clean**: a misclassified input is its own witness, FALSIFIED at every eps;
2. **bounds** (IBP / CROWN / LP, batched), from the largest eps down: a lower bound over a ball
   is a lower bound over every smaller ball, so a sample verified at eps stays verified as eps
   shrinks and is not bounded again;
3. **attacks**, from the smallest eps up, each only on the units still open; a point found at
   eps lies in every larger ball, so a sample broken at eps stays broken as eps grows;
4. **exact** methods (branch and bound, MILP) sample by sample on what is still open, their
   bounds and counterexamples passed along the grid the same ways.

Verdicts come from :func:`~advrobust.core.result.decide_verdicts`, the rule ``verify`` uses:
VERIFIED from a sound lower bound, FALSIFIED from a witness inside the set whose spec values,
recomputed through the real model, are negative.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advrobust.core.result import Verdict, decide_verdicts
from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall
from advrobust.evaluation.campaign.config import AttackSpec, CampaignConfig
from advrobust.evaluation.campaign.store import UnitRecord, pack

__all__ = ["Task", "run_task", "stage_progress", "task_seed"]


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


class _Grid:
    """Per (eps, sample) best lower bounds and best witness, shared along the eps grid."""

    def __init__(self, model: nn.Module, x: Tensor, spec: Spec, norm: str,
                 eps: Sequence[float]) -> None:
        self.model, self.x, self.spec = model, x, spec
        self.threats = [LpBall(norm, e) for e in eps]
        # Witnesses pass the one gate (projected onto the exact set, float64 values): a float32
        # value can lie a few ulps below a tight float64 lower bound, and a float64 bound
        # stored in float32 could round up; values and lower bounds are therefore float64.
        from advrobust.relax.witness import WitnessGate  # relax pulls scipy: import on use

        self.gate = WitnessGate(model)
        with torch.no_grad():
            self.logits = model(x)
            clean = self._values(spec, self.gate.model(x.double()))
        e, n = len(eps), x.shape[0]
        self.values = clean.unsqueeze(0).repeat(e, 1, 1)          # (E, N, K) at the witness
        self.lower = torch.full_like(self.values, -torch.inf)     # (E, N, K), float64
        self.witness = x.unsqueeze(0).repeat(e, *([1] * x.dim()))  # (E, N, ...)
        self.found_by: list[list[str | None]] = [[None] * n for _ in eps]
        self.lowers: list[list[dict[str, float]]] = [[{} for _ in range(n)] for _ in eps]
        self.decided_by = [["clean" if v is Verdict.FALSIFIED else "" for v in
                            decide_verdicts(self.lower[0], clean)]] * e
        self.decided_by = [list(row) for row in self.decided_by]
        self.seconds: list[list[dict[str, float]]] = [[{} for _ in range(n)] for _ in eps]
        self.black_box: set[str] = set()  # names of the attacks that used no gradients

    def open(self, e: int) -> Tensor:
        """Indices of the samples still UNKNOWN at eps index ``e``."""
        verdicts = decide_verdicts(self.lower[e], self.values[e])
        return torch.tensor([i for i, v in enumerate(verdicts) if v is Verdict.UNKNOWN],
                            dtype=torch.long)

    def spec_of(self, idx: Tensor) -> Spec:
        return Spec(self.spec.C[idx], self.spec.d[idx])

    def offer(self, e: int, idx: Tensor, points: Tensor, name: str | Sequence[str]) -> None:
        """A point of the eps-``e`` ball lies in every larger ball: try it there too."""
        names = [name] * idx.numel() if isinstance(name, str) else list(name)
        # Projected onto the eps-e set with zero tolerance (float64 values, +inf outside), so
        # the point lies in every larger ball too.
        points, values = self.gate(self.x[idx], points, self.threats[e], self.spec_of(idx))
        for f in range(e, len(self.threats)):
            better = values.amin(1) < self.values[f, idx].amin(1)
            for j in better.nonzero().flatten().tolist():
                i = int(idx[j])
                self.values[f, i], self.witness[f, i] = values[j], points[j]
                self.found_by[f][i] = names[j]

    @staticmethod
    def _values(spec: Spec, logits: Tensor) -> Tensor:
        """(N, K) float64 spec values of (N, O) logits."""
        return torch.einsum("nko,no->nk", spec.C.double(), logits.double()) + spec.d.double()

    def raise_lower(self, e: int, idx: Tensor, lower: Tensor, name: str) -> None:
        """A lower bound over the eps-``e`` ball holds for every smaller ball."""
        margin = lower.amin(1)
        for f in range(e + 1):
            self.lower[f, idx] = torch.maximum(self.lower[f, idx], lower.to(self.lower))
            for j, i in enumerate(idx.tolist()):
                best = self.lowers[f][i].get(name, -float("inf"))
                self.lowers[f][i][name] = max(best, float(margin[j]))

    def mark(self, stage: str) -> None:
        for f in range(len(self.threats)):
            verdicts = decide_verdicts(self.lower[f], self.values[f])
            for i, v in enumerate(verdicts):
                if v is not Verdict.UNKNOWN and not self.decided_by[f][i]:
                    self.decided_by[f][i] = stage

    def charge(self, e: int, idx: Tensor, stage: str, seconds: float) -> None:
        """Spread a call's wall time over the units it ran on."""
        share = seconds / max(1, idx.numel())
        for i in idx.tolist():
            self.seconds[e][i][stage] = self.seconds[e][i].get(stage, 0.0) + share


def _timed(grid: _Grid, e: int, idx: Tensor, stage: str, call: Callable[..., Any],
           *args: Any, **kwargs: Any) -> Any:
    t0 = time.perf_counter()
    out = call(*args, **kwargs)
    grid.charge(e, idx, stage, time.perf_counter() - t0)
    return out


def _bounder(name: str, config: CampaignConfig) -> Any:
    from advrobust.exact import MILP, BaB
    from advrobust.relax import CROWN, IBP, LPRelaxation

    limit, threads = config.time_limit, config.threads
    makers: dict[str, Callable[[], Any]] = {
        "ibp": IBP, "crown": CROWN,
        "lp": lambda: LPRelaxation(threads=threads, time_limit=limit),
        "milp": lambda: MILP(time_limit=limit, threads=threads),
        "bab": lambda: BaB(time_limit=limit)}
    return makers[name]()


def _bound_stage(grid: _Grid, y: Tensor, name: str, config: CampaignConfig) -> None:
    bounder = _bounder(name, config)
    for e in reversed(range(len(grid.threats))):
        idx = grid.open(e)
        if idx.numel():
            res = _timed(grid, e, idx, name, bounder, grid.model, grid.x[idx], y[idx],
                         grid.threats[e], grid.spec_of(idx))
            grid.raise_lower(e, idx, res.lower, name)
            if res.witness is not None:
                grid.offer(e, idx, res.witness.detach(), name)
    grid.mark(name)


def _attack_stage(grid: _Grid, y: Tensor, spec: AttackSpec, number: int, task: Task,
                  config: CampaignConfig) -> None:
    from advrobust.attacks.ensemble import Ensemble, attack_label
    from advrobust.evaluation.campaign._check import build_attack

    for e, threat in enumerate(grid.threats):
        idx = grid.open(e)
        if not idx.numel():
            continue
        attack = build_attack(spec, task.norm, threat)
        gen = torch.Generator().manual_seed(task_seed(config.seed, task.model, task.norm,
                                                      task.chunk, number, e))
        res = _timed(grid, e, idx, spec.name, attack, grid.model, grid.x[idx], y[idx], threat,
                     generator=gen)
        names = [spec.name] * idx.numel()
        if res.info.get("black_box"):
            grid.black_box.add(spec.name)
        if isinstance(attack, Ensemble):
            broken = res.info.get("broken_by") or [None] * idx.numel()
            names = [b or attack_label(attack.attacks[0]) for b in broken]
            grid.black_box.update(res.info.get("black_box_members") or ())
        grid.offer(e, idx, res.x_adv.detach(), names)
    grid.mark(spec.name)


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


def _exact_stage(grid: _Grid, y: Tensor, name: str, config: CampaignConfig, task: Task) -> None:
    """One exact method, sample by sample, on what is open, eps ascending (a unit can take up
    to the time limit: a progress bar / status line per task shows how far it is)."""
    exact = _bounder(name, config)
    planned = [grid.open(e).numel() for e in range(len(grid.threats))]
    desc = f"{name} {task.model} {task.norm} #{task.chunk}"
    with _stage_bar(sum(planned), desc) as bar:
        for e, threat in enumerate(grid.threats):
            units = grid.open(e).tolist()
            for i in units:
                idx = torch.tensor([i])
                res = _timed(grid, e, idx, name, exact, grid.model, grid.x[idx], y[idx], threat,
                             grid.spec_of(idx))
                grid.raise_lower(e, idx, res.lower, name)
                if res.witness is not None:
                    grid.offer(e, idx, res.witness.detach(), name)
                bar.update(1)
            bar.update(planned[e] - len(units))  # decided along the grid before their turn
        grid.mark(name)


def run_task(model: nn.Module, x: Tensor, y: Tensor, task: Task, config: CampaignConfig,
             black_box: set[str] | None = None) -> list[UnitRecord]:
    """The bracket of every unit of ``task``; ``x`` (N, ...) and ``y`` (N,) are its samples.

    ``black_box``, when given, receives the names (as in the records' ``attack``) of the
    attacks that reported using no gradients (Square, ensemble members ...), for the report's
    black-box-beats-white-box check."""
    threat_spec = next(t for t in config.threats if t.norm == task.norm)
    bounders, exact = config.certify_for(task.norm)
    t0 = time.perf_counter()
    with torch.no_grad():
        spec = Spec.margins(y, int(model(x[:1]).shape[1]))
    grid = _Grid(model, x, spec, task.norm, threat_spec.eps)
    for e in range(len(grid.threats)):
        grid.charge(e, torch.arange(x.shape[0]), "clean",
                    (time.perf_counter() - t0) / len(grid.threats))
    for name in bounders:
        _bound_stage(grid, y, name, config)
    for number, attack in enumerate(config.attacks):
        if task.norm in attack.norms:
            _attack_stage(grid, y, attack, number, task, config)
    for name in exact:
        _exact_stage(grid, y, name, config, task)
    if black_box is not None:
        black_box.update(grid.black_box)
    return _records(grid, y, task, threat_spec.eps)


def _records(grid: _Grid, y: Tensor, task: Task, eps: Sequence[float]) -> list[UnitRecord]:
    preds = grid.logits.argmax(1)
    clean_margin = grid.spec.apply(grid.logits).amin(1)
    out = []
    for e, eps_value in enumerate(eps):
        verdicts = decide_verdicts(grid.lower[e], grid.values[e])
        for i, sample in enumerate(task.samples):
            moved = not torch.equal(grid.witness[e, i], grid.x[i])
            lowers: Mapping[str, float] = grid.lowers[e][i]
            out.append(UnitRecord(
                model=task.model, sample=sample, norm=task.norm, eps_index=e, eps=eps_value,
                label=int(y[i]), verdict=verdicts[i].value, clean_pred=int(preds[i]),
                clean_margin=float(clean_margin[i]), upper=float(grid.values[e, i].amin()),
                attack=grid.found_by[e][i] if moved else ("clean" if verdicts[i] is
                                                           Verdict.FALSIFIED else None),
                lower=float(grid.lower[e, i].amin()), lowers=dict(lowers),
                decided_by=grid.decided_by[e][i],
                witness=pack(grid.witness[e, i].numpy()) if moved else None,
                seconds=grid.seconds[e][i]))
    return out
