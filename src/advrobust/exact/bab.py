"""Complete verification by branch and bound on ReLU splits, with batched CROWN bounds.

Bunel et al. 2018/2020, "A unified view of piecewise linear neural network verification" and
"Branch and bound for piecewise linear neural network verification"; Wang et al. 2021
("beta-CROWN") for bounding many sub-domains at once on the tensor side. Each spec row is
minimised separately. A *domain* fixes the sign of some unstable ReLUs (``z >= 0`` or
``z <= 0``); its bound is CROWN with the split neurons' pre-activation bounds clamped, every
intermediate bound recomputed under the splits and intersected with the parent's (a child is a
subset of its parent, so both bounds hold). The union of the domains always covers the threat
set, so the minimum of their bounds is a sound lower bound at every moment. A domain whose
bound clears the verification tolerance is closed; the lowest ones are split on the neuron
with the largest contribution to the relaxation gap (the BaBSR score of Bunel et al.). A domain
with no unstable neuron left is a linear region: its exact minimum is an LP (HiGHS), which
makes the search complete. The CROWN minimiser of every domain (a corner of the box for linf)
and every LP point are re-evaluated through the network as counterexample candidates.

Unlike the MILP, a row's search stops once its sign is decided, so on robust rows the lower
bound is a proof (above the tolerance), not the exact minimum.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from advrobust.core._validation import check_bool, check_float, check_int
from advrobust.core.result import VERIFY_TOLERANCE
from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall, Norm
from advrobust.errors import InvalidThreatModelError
from advrobust.network.ir import Network
from advrobust.network.relu import ReLUOp
from advrobust.relax._encoding import encode_sample, row_cost
from advrobust.relax.base import Bounder, Bounds
from advrobust.relax.crown import _refine, crown_layer_bounds, crown_lower
from advrobust.relax.ibp import LayerBounds
from advrobust.solvers.highs import HighsSolver
from advrobust.solvers.program import SolveStatus

__all__ = ["BaB"]

#: A domain is closed once its bound exceeds this (twice the verdict tolerance, so the proved
#: lower bound always clears the tolerance itself).
_CLOSE = 2 * VERIFY_TOLERANCE


@dataclass
class _Domains:
    """A batch of sub-domains of one row: per-ReLU pre-activation bounds, bound, scores."""

    lo: dict[int, Tensor]
    hi: dict[int, Tensor]
    lower: Tensor  # (B,)
    score: Tensor  # (B, total unstable-capable neurons): branching scores, 0 if stable

    def take(self, idx: Tensor) -> _Domains:
        return _Domains({i: v[idx] for i, v in self.lo.items()},
                        {i: v[idx] for i, v in self.hi.items()}, self.lower[idx],
                        self.score[idx])

    def cat(self, other: _Domains) -> _Domains:
        return _Domains({i: torch.cat([v, other.lo[i]]) for i, v in self.lo.items()},
                        {i: torch.cat([v, other.hi[i]]) for i, v in self.hi.items()},
                        torch.cat([self.lower, other.lower]),
                        torch.cat([self.score, other.score]))

    def __len__(self) -> int:
        return int(self.lower.shape[0])


@dataclass
class _Row:
    """Search state of one spec row."""

    best_value: float = math.inf
    best_point: Tensor | None = None
    closed: float = math.inf  # min bound over closed domains
    domains: int = 0
    leaves: int = 0
    status: str = "verified"
    log: dict[str, Any] = field(default_factory=dict)


class _RowSearch:
    """Branch and bound on one spec row ``c . f(x) + d`` of one sample."""

    def __init__(self, network: Network, x0: Tensor, threat: LpBall, c: Tensor, d: float,
                 batch_size: int, max_domains: int, max_leaves: int,
                 root_bounds: LayerBounds) -> None:
        self.net, self.x0, self.threat = network, x0, threat
        self.c, self.d = c.reshape(1, 1, -1).to(x0.dtype), d
        self.batch_size, self.max_domains = batch_size, max_domains
        self.max_leaves = max_leaves
        self.relus = network.relu_indices
        self.root_bounds = root_bounds
        self.row = _Row()
        # Seconds to bound one sub-domain, measured as the search goes: on large (convolutional)
        # networks one batched step of ``batch_size`` domains can take longer than the whole
        # time limit, so the batch is sized to what the time left affords.
        self.seconds_per_domain = 0.0

    # ------------------------------------------------------------------ bounding
    def layer_bounds(self, lo: dict[int, Tensor], hi: dict[int, Tensor]) -> LayerBounds:
        """Bounds of every op's input under the domains' clamps (B domains)."""
        b = next(iter(lo.values())).shape[0]
        x0 = self.x0.expand((b,) + tuple(self.x0.shape[1:]))
        bounds = [self.threat.input_bounds(x0)]
        first = True
        for i, op in enumerate(self.net.ops):
            if isinstance(op, ReLUOp):
                cur_lo = torch.maximum(bounds[i][0], lo[i])
                cur_hi = torch.minimum(bounds[i][1], hi[i])
                if not first:  # the first ReLU's bounds do not depend on any split
                    cur_lo, cur_hi = _refine(self.net, x0, self.threat, [*bounds[:i],
                                                                       (cur_lo, cur_hi)], i)
                bounds[i] = (cur_lo, cur_hi)
                first = False
            bounds.append(op.interval(*bounds[i]))
        return bounds

    def bound(self, lo: dict[int, Tensor], hi: dict[int, Tensor]) -> _Domains:
        """CROWN bound, branching scores and counterexample candidates of B domains."""
        bounds = self.layer_bounds(lo, hi)
        b = bounds[0][0].shape[0]
        a = self.c.expand(b, 1, -1).clone()
        const = a.new_zeros(b, 1)
        scores: dict[int, Tensor] = {}
        for j in reversed(range(len(self.net.ops))):
            op = self.net.ops[j]
            if isinstance(op, ReLUOp):
                l_j, h_j = bounds[j]
                rel = op.relaxation(l_j, h_j)
                unstable = (l_j < 0) & (h_j > 0)
                # BaBSR: what the upper relaxation's intercept costs this row, plus a tie-break
                gap = (a[:, 0].clamp(max=0) * rel.up_b).abs() + 1e-6 * (h_j - l_j)
                scores[j] = torch.where(unstable, gap, torch.zeros_like(l_j)).flatten(1)
                a, c = op.backward(a, l_j, h_j)
            else:
                c = op.bias_term(a)  # type: ignore[attr-defined]
                a = op.backward(a)  # type: ignore[attr-defined]
            const = const + c
        x0 = self.x0.expand((b,) + tuple(self.x0.shape[1:]))
        lower = (self.threat.concretize_lower(a.flatten(2), x0) + const)[:, 0] + self.d
        empty = torch.zeros(b, dtype=torch.bool, device=lower.device)
        for i in self.relus:
            empty |= (bounds[i][0] > bounds[i][1]).flatten(1).any(1)
        lower = lower.masked_fill(empty, math.inf)  # an empty domain bounds anything
        self._offer_corners(a.flatten(2)[:, 0], x0, empty)
        score = torch.cat([scores[i] for i in self.relus], dim=1)
        return _Domains({i: bounds[i][0] for i in self.relus},
                        {i: bounds[i][1] for i in self.relus}, lower, score)

    def _offer_corners(self, a: Tensor, x0: Tensor, empty: Tensor) -> None:
        """Evaluate the box corners minimising the domains' linear bounds."""
        low, up = self.threat.input_bounds(x0)
        pts = torch.where(a.reshape(low.shape) >= 0, low, up)[~empty]
        if pts.shape[0] == 0:
            return
        values = (self.net.forward(pts) * self.c[0, 0]).sum(1) + self.d
        k = int(values.argmin())
        self.offer(float(values[k]), pts[k])

    def offer(self, value: float, point: Tensor) -> None:
        if value < self.row.best_value:
            self.row.best_value, self.row.best_point = value, point.detach().clone()

    # ------------------------------------------------------------------ leaves
    def solve_leaf(self, dom: _Domains, time_limit: float) -> float:
        """Exact minimum of a linear region (one domain without unstable neurons) by LP."""
        bounds = self.layer_bounds(dom.lo, dom.hi)
        enc = encode_sample(self.net, bounds, 0, integer=False, threat=self.threat, x0=self.x0)
        sol = HighsSolver(enc.program, time_limit=max(time_limit, 1e-3)).minimize(
            row_cost(enc, self.c[0, 0]), self.d)
        self.row.leaves += 1
        if sol.status is SolveStatus.INFEASIBLE:
            return math.inf
        if sol.x is not None:
            point = torch.as_tensor(sol.x[enc.inputs]).to(self.x0).reshape(self.x0.shape)
            point = torch.minimum(torch.maximum(point, bounds[0][0]), bounds[0][1])
            value = float((self.net.forward(point) * self.c[0, 0]).sum() + self.d)
            self.offer(value, point[0])
        if sol.status is SolveStatus.OPTIMAL:
            return max(float(dom.lower[0]), sol.bound)
        return float(dom.lower[0])

    # ------------------------------------------------------------------ branching
    def split(self, dom: _Domains) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
        """Children of every domain on its highest-scoring neuron (inactive, then active)."""
        best = dom.score.argmax(1)
        lo = {i: torch.cat([v, v]) for i, v in dom.lo.items()}
        hi = {i: torch.cat([v, v]) for i, v in dom.hi.items()}
        b, offset = len(dom), 0
        for i in self.relus:
            size = self.net.ops[i].in_size
            rows = ((best >= offset) & (best < offset + size)).nonzero().flatten()
            cols = best[rows] - offset
            hi_f, lo_f = hi[i].flatten(1), lo[i].flatten(1)
            hi_f[rows, cols] = 0.0  # first copy: z <= 0
            lo_f[rows + b, cols] = 0.0  # second copy: z >= 0
            hi[i], lo[i] = hi_f.reshape(hi[i].shape), lo_f.reshape(lo[i].shape)
            offset += size
        return lo, hi

    # ------------------------------------------------------------------ the search
    def run(self, deadline: float, stop_on_counterexample: bool) -> tuple[float, _Row]:
        """Search until decided or ``deadline``; return a sound lower bound and the state."""
        root_bounds = self.root_bounds
        start = time.perf_counter()
        open_ = self.bound({i: root_bounds[i][0] for i in self.relus},
                           {i: root_bounds[i][1] for i in self.relus})
        self.seconds_per_domain = time.perf_counter() - start
        self.row.domains = 1
        while True:
            open_ = self._close(open_)
            if self.row.best_value < 0 and stop_on_counterexample:
                self.row.status = "falsified"
                break
            if len(open_) == 0:
                self.row.status = ("verified" if self.row.closed > _CLOSE
                                   else "at tolerance")
                break
            if self._affordable(deadline) < 1:
                self.row.status = "time_limit"
                break
            if len(open_) > self.max_domains:
                self.row.status = "domain_limit"
                break
            if self.row.leaves > self.max_leaves:
                self.row.status = "milp"  # linear regions keep coming: finish with the MILP
                break
            open_ = self._step(open_, deadline)
        lower = min(self.row.closed, float(open_.lower.min()) if len(open_) else math.inf)
        if self.row.status == "milp":
            lower = max(lower, self.finish_with_milp(root_bounds, deadline))
            self.row.status = "verified" if lower > _CLOSE else "time_limit"
        if self.row.best_value < 0 and self.row.status != "falsified":
            self.row.status = "falsified"
        return lower, self.row

    def finish_with_milp(self, bounds: LayerBounds, deadline: float) -> float:
        """Decide the row with the big-M MILP on the root bounds (a sound global bound)."""
        enc = encode_sample(self.net, bounds, 0, integer=True, threat=self.threat, x0=self.x0)
        sol = HighsSolver(enc.program, time_limit=max(deadline - time.perf_counter(), 1e-3)
                          ).minimize(row_cost(enc, self.c[0, 0]), self.d, stop_below=-1e-6,
                                     stop_above=_CLOSE)
        self.row.log["milp"] = sol.backend_status
        if sol.x is not None:
            point = torch.as_tensor(sol.x[enc.inputs]).to(self.x0).reshape(self.x0.shape)
            point = torch.minimum(torch.maximum(point, bounds[0][0]), bounds[0][1])
            self.offer(float((self.net.forward(point) * self.c[0, 0]).sum() + self.d), point[0])
        if sol.status is SolveStatus.INFEASIBLE:
            return math.inf
        return sol.bound

    def _close(self, dom: _Domains) -> _Domains:
        done = dom.lower > _CLOSE
        if bool(done.any()):
            self.row.closed = min(self.row.closed, float(dom.lower[done].min()))
        return dom.take((~done).nonzero().flatten())

    def _affordable(self, deadline: float) -> int:
        """How many parents can still be split (two children each) before ``deadline``."""
        left = deadline - time.perf_counter()
        if left <= 0:
            return 0
        if self.seconds_per_domain <= 0:
            return self.batch_size
        return min(self.batch_size, int(left / (2 * self.seconds_per_domain)))

    def _step(self, open_: _Domains, deadline: float) -> _Domains:
        leaf = open_.score.amax(1) <= 0
        if bool(leaf.any()):
            solved = torch.zeros_like(leaf)
            for k in leaf.nonzero().flatten().tolist():
                if time.perf_counter() >= deadline:
                    break
                # a linear region is settled by its exact minimum, whatever its sign
                value = self.solve_leaf(open_.take(torch.tensor([k])),
                                        deadline - time.perf_counter())
                self.row.closed = min(self.row.closed, value)
                solved[k] = True
            return open_.take((~solved).nonzero().flatten())
        order = open_.lower.argsort()
        count = max(1, min(self.batch_size, self._affordable(deadline)))
        pick, rest = order[:count], order[count:]
        parents = open_.take(pick)
        start = time.perf_counter()
        children = self.bound(*self.split(parents))
        self.seconds_per_domain = (time.perf_counter() - start) / len(children)
        children.lower = torch.maximum(children.lower, parents.lower.repeat(2))
        self.row.domains += len(children)
        return children.cat(open_.take(rest))


class BaB(Bounder):
    """Complete verifier: branch and bound on ReLU splits with batched CROWN bounds.

    Each spec row not already proved by CROWN is searched until its sign is decided (all
    sub-domains bounded above the tolerance: proved; a point of the set below zero: broken) or
    the time runs out (UNKNOWN, with the lowest open sub-domain bound as the lower bound).
    linf threats only: on l1 balls the split constraints, which CROWN's concretisation ignores,
    matter so much that the search degenerates into one LP per linear region (use the MILP).

    Args:
        time_limit: seconds per sample (all its rows together).
        batch_size: sub-domains bounded per step (one batched CROWN pass).
        max_domains: open sub-domains kept before a row gives up (memory guard).
        max_leaves: linear regions solved by LP before the row is handed to the big-M MILP
            for the rest of the time (on low-dimensional inputs the split constraints CROWN
            ignores matter, and the search would otherwise enumerate regions).
        early_stop: stop a sample at its first row with a counterexample.
    """

    def __init__(self, *, time_limit: float = 60.0, batch_size: int = 256,
                 max_domains: int = 50_000, max_leaves: int = 8,
                 early_stop: bool = True) -> None:
        self.time_limit = check_float(time_limit, "time_limit", "BaB", low=0.0, low_open=True,
                                      allow_inf=True)
        self.batch_size = check_int(batch_size, "batch_size", "BaB", low=1)
        self.max_domains = check_int(max_domains, "max_domains", "BaB", low=1)
        self.max_leaves = check_int(max_leaves, "max_leaves", "BaB", low=0)
        self.early_stop = check_bool(early_stop, "early_stop", "BaB")

    def _bound(self, network: Network, x: Tensor, threat: LpBall, spec: Spec) -> Bounds:
        if threat.norm is not Norm.LINF:
            raise InvalidThreatModelError(
                f"BaB supports the norm 'linf' only. Got {threat.norm.value!r} instead; use "
                "MILP for l1 and CROWN for l2.")
        with torch.no_grad():
            # one CROWN pass: its intermediate bounds are also every row's root domain
            layers = crown_layer_bounds(network, x, threat)
            crown = crown_lower(network, x, threat, spec.C, spec.d, bounds=layers)
            clean = spec.apply(network.forward(x))
            lower = crown.clone()
            cand = x.unsqueeze(1).repeat_interleave(spec.num_rows, 1).clone()
            samples = []
            for s in range(x.shape[0]):
                root = [(lo[s:s + 1], hi[s:s + 1]) for lo, hi in layers]
                samples.append(self._sample(network, x[s:s + 1], threat, spec, s, crown[s],
                                            clean[s], lower, cand, root))
        return Bounds(lower, candidates=cand, stats={"crown": crown, "samples": samples})

    def _sample(self, network: Network, x0: Tensor, threat: LpBall, spec: Spec, s: int,
                crown: Tensor, clean: Tensor, lower: Tensor, cand: Tensor, root: LayerBounds
                ) -> list[dict[str, Any]]:
        deadline = time.perf_counter() + self.time_limit
        rows: list[dict[str, Any]] = []
        if bool((clean < 0).any()) and self.early_stop:
            return rows  # the clean point is its own counterexample
        for j in clean.argsort().tolist():
            if float(crown[j]) > VERIFY_TOLERANCE:
                continue
            if time.perf_counter() >= deadline:
                rows.append({"row": j, "status": "skipped (time limit)"})
                continue
            start = time.perf_counter()
            search = _RowSearch(network, x0, threat, spec.C[s, j], float(spec.d[s, j]),
                                self.batch_size, self.max_domains, self.max_leaves, root)
            value, row = search.run(deadline, stop_on_counterexample=True)
            lower[s, j] = max(float(lower[s, j]), value)
            if row.best_point is not None:
                cand[s, j] = row.best_point.reshape(cand.shape[2:]).to(cand)
            rows.append({"row": j, "status": row.status, **row.log, "domains": row.domains,
                         "leaves": row.leaves, "lower": value, "best": row.best_value,
                         "seconds": time.perf_counter() - start})
            if self.early_stop and row.best_value < 0:
                break
        return rows
