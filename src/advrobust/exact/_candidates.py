"""Counterexample candidates and exact solves of the row search (:mod:`advrobust.exact._search`).

Every bounded domain's linear bound has a minimiser over the box (a corner for linf): those of
each row's lowest domain are evaluated through the network, and a few signed-gradient steps
start from them. A domain without unstable neurons (a linear region) is solved exactly by LP;
a row whose linear regions keep coming is finished by the big-M MILP on the root's bounds.
Every solver point is a candidate too: the lowest value of a row is its upper bound (negative:
falsified, with the point as the witness).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from advrobust.core.threat import LpBall
from advrobust.exact._beta import BetaBounder
from advrobust.exact._beta import Domains as _Domains
from advrobust.exact._domains import _CLOSE
from advrobust.exact._twin import float32_chain, float32_forward
from advrobust.network.graph import Graph
from advrobust.network.ir import Network
from advrobust.relax._encoding import encode_sample, row_cost
from advrobust.relax.alpha_crown import AlphaResult
from advrobust.solvers.highs import HighsSolver
from advrobust.solvers.program import SolveStatus

__all__ = ["Candidates", "Row", "decide_by_milp"]

#: HiGHS options of the MILP tries: its feasibility jump runs before the root node without
#: checking the time limit (see :func:`advrobust.verify.cascade.make_bounder`).
_MILP_OPTIONS = {"mip_heuristic_run_feasibility_jump": False}


@dataclass
class Row:
    """Search state of one spec row."""

    best_value: float = math.inf
    best_point: Tensor | None = None
    closed: float = math.inf  # min bound over closed domains
    domains: int = 0
    status: str = "verified"
    log: dict[str, Any] = field(default_factory=dict)

    def offer(self, value: float, point: Tensor) -> None:
        """Keep ``point`` if its (re-evaluated) ``value`` is the row's lowest yet."""
        if value < self.best_value:
            self.best_value, self.best_point = value, point.detach().clone()


class Candidates:
    """The point side of :class:`~advrobust.exact._search.RowSearch` (a mixin: the search's
    constructor sets the attributes below)."""

    net: Network | Graph
    x0: Tensor
    threat: LpBall
    c: Tensor
    d: Tensor
    rows: list[Row]
    attack_steps: int
    leaves: int
    bounder: BetaBounder
    root: AlphaResult

    def _offer_corners(self, a: Tensor, row: Tensor) -> None:
        """Evaluate the box corners minimising the domains' linear bounds, on their rows: each
        row's lowest corner (chosen by the float32 copy of a chain when it has one) is
        evaluated by the network and offered, and the descents start from those."""
        b = row.shape[0]
        x0 = self.x0.expand((b,) + tuple(self.x0.shape[1:]))
        low, up = self.threat.input_bounds(x0)
        pts = torch.where(a.reshape(low.shape) >= 0, low, up)
        rows, pick = _lowest_per_row(self._rough_values(pts, row), row)
        pts = pts[pick]
        with torch.no_grad():
            values = (self.net.forward(pts) * self.c[rows]).sum(1) + self.d[rows]
        starts = []
        for k, r in enumerate(rows.tolist()):
            self.offer(r, float(values[k]), pts[k])
            if self.rows[r].best_value >= 0:
                starts.append(k)
        if starts and self.attack_steps:
            at = torch.tensor(starts)
            self._descend(pts[at], rows[at], low[:1], up[:1])

    def _rough_values(self, x: Tensor, row: Tensor) -> Tensor:
        """(B,) the rows' values at the points ``x``, through the float32 copy of a chain
        when it has one (they only choose which points the network evaluates)."""
        fast = float32_chain(self.net) if isinstance(self.net, Network) else None
        with torch.no_grad():
            if fast is None:
                return (self.net.forward(x) * self.c[row]).sum(1) + self.d[row]
            z = float32_forward(fast, x)
            return (z * self.c[row].to(z.dtype)).sum(1) + self.d[row].to(z.dtype)

    def _descend(self, x: Tensor, rows: Tensor, low: Tensor, up: Tensor) -> None:
        """A few signed-gradient steps on each row's value from the corner of its lowest
        domain (PGD inside the box; a promising domain's corner is often near a violation).
        The steps run on the float32 copy of a chain when it has one (they only choose the
        points); the points end in the box and are evaluated in the network's own precision."""
        fast = float32_chain(self.net) if isinstance(self.net, Network) else None
        dtype = x.dtype if fast is None else torch.float32
        lo_s, up_s, c = low.to(dtype), up.to(dtype), self.c[rows].to(dtype)
        step = (up_s - lo_s) / 4
        x = x.to(dtype)
        for _ in range(self.attack_steps):
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                z = self.net.forward(x) if fast is None else float32_forward(fast, x)
                (grad,) = torch.autograd.grad((z * c).sum(), x)
            x = torch.minimum(torch.maximum(x.detach() - step * grad.sign(), lo_s), up_s)
            step = step * 0.7
        x = torch.minimum(torch.maximum(x.to(low.dtype), low), up)
        with torch.no_grad():
            value = (self.net.forward(x) * self.c[rows]).sum(1) + self.d[rows]
        for k, r in enumerate(rows.tolist()):
            self.offer(r, float(value[k]), x[k])

    def offer(self, r: int, value: float, point: Tensor) -> None:
        self.rows[r].offer(value, point)

    def _value(self, r: int, point: Tensor) -> float:
        with torch.no_grad():
            return float((self.net.forward(point) * self.c[r]).sum() + self.d[r])

    def solve_leaf(self, dom: _Domains, time_limit: float) -> float:
        """Exact minimum of a linear region (one domain without unstable neurons) by LP."""
        r = int(dom.row[0])
        bounds, empty = self.bounder.tightened(dom.split)
        if bool(empty.any()):
            return math.inf
        enc = encode_sample(self.net, bounds, 0, integer=False, threat=self.threat, x0=self.x0)
        sol = HighsSolver(enc.program, time_limit=max(time_limit, 1e-3)).minimize(
            row_cost(enc, self.c[r]), float(self.d[r]))
        self.leaves += 1
        if sol.status is SolveStatus.INFEASIBLE:
            # a split domain may be empty: its exact (phase-fixed) encoding proves it vacuous
            return math.inf
        if sol.x is not None:
            point = torch.as_tensor(sol.x[enc.inputs]).to(self.x0).reshape(self.x0.shape)
            point = torch.minimum(torch.maximum(point, bounds[0][0]), bounds[0][1])
            self.offer(r, self._value(r, point), point[0])
        if sol.status is SolveStatus.OPTIMAL:
            return max(float(dom.lower[0]), sol.bound)
        return float(dom.lower[0])

    def finish_with_milp(self, r: int, deadline: float) -> float:
        """Decide row ``r`` with the big-M MILP on the root bounds (a sound global bound)."""
        return decide_by_milp(self.net, self.x0, self.threat, self.c, self.d, self.root.bounds,
                              [r], self.rows, deadline).get(r, -math.inf)


def _lowest_per_row(values: Tensor, row: Tensor) -> tuple[Tensor, Tensor]:
    """The rows present in ``row`` (B,) (ascending) and, per row, the position of its lowest
    value among ``values`` (B,) (the first one on ties; NaN counts as lowest)."""
    rows, inverse = row.unique(return_inverse=True)
    key = values.nan_to_num(nan=-math.inf)
    lowest = key.new_full((rows.numel(),), math.inf).scatter_reduce(0, inverse, key, "amin")
    where = torch.arange(row.numel())
    at = torch.where(key == lowest[inverse], where, row.numel())
    pick = torch.full_like(rows, row.numel()).scatter_reduce(0, inverse, at, "amin")
    return rows, pick


def decide_by_milp(network: Network | Graph, x0: Tensor, threat: LpBall, c: Tensor, d: Tensor,
                   bounds: Any, order: list[int], states: list[Row], until: float
                   ) -> dict[int, float]:
    """Try to decide the rows ``order`` (of ``c`` (R, outputs), ``d`` (R,); closest to a proof
    first) one after the other with the big-M MILP on ``bounds`` (HiGHS, each solve stopped
    once the row's sign is decided), until ``until``. A row left undecided ends the try: the
    rows after it are further from a proof (a falsified row does not). Points the solver
    finds are offered to the rows' ``states``; an infeasible program (it holds the clean
    input) is numerical trouble, not a proof. Returns each tried row's sound lower bound
    (-inf: none)."""
    enc = encode_sample(network, bounds, 0, integer=True, threat=threat, x0=x0)
    out: dict[int, float] = {}
    for r in order:
        left = until - time.perf_counter()
        if left <= 0:
            break
        sol = HighsSolver(enc.program, time_limit=left, options=_MILP_OPTIONS).minimize(
            row_cost(enc, c[r]), float(d[r]), stop_below=-1e-6, stop_above=_CLOSE)
        states[r].log["milp"] = sol.backend_status
        if sol.x is not None:
            point = torch.as_tensor(sol.x[enc.inputs]).to(x0).reshape(x0.shape)
            point = torch.minimum(torch.maximum(point, bounds[0][0]), bounds[0][1])
            with torch.no_grad():
                value = float((network.forward(point) * c[r]).sum() + d[r])
            states[r].offer(value, point[0])
        out[r] = sol.bound
        if sol.status is SolveStatus.INFEASIBLE:
            # the program holds the clean input: "infeasible" is numerical trouble
            states[r].log["milp"] = "infeasible root (numerical trouble): not a proof"
            out[r] = -math.inf
        if out[r] <= _CLOSE and states[r].best_value >= 0:
            break
    return out
