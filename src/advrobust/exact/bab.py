"""Complete verification by beta-CROWN branch and bound on ReLU splits.

Bunel et al. 2018/2020, "A unified view of piecewise linear neural network verification" and
"Branch and bound for piecewise linear neural network verification"; Xu et al. 2021
(alpha-CROWN, "Fast and complete"); Wang et al. 2021 ("Beta-CROWN"). The root is bounded by
alpha-CROWN with optimised intermediate bounds (:func:`~advrobust.relax.alpha_crown.
alpha_crown`); those intermediate bounds hold in every sub-domain. A *domain* fixes the sign of
some unstable ReLUs (``z >= 0`` or ``z <= 0``); its bound is beta-CROWN (:mod:`advrobust.exact.
_beta`): the split constraints enter the bound through optimised Lagrange multipliers, with the
lower slopes optimised per domain, both warm-started from the parent, domains bounded in batches.
All open spec rows of a sample are searched together: a domain belongs to one row, the batch
mixes rows (each open row's lowest domains get an equal share of it, then the lowest of any
row: best-first), so no row waits behind one that stalls. The union of the domains always
covers the threat set, so the minimum of their bounds is a sound lower bound at every moment. A
domain whose bound clears the verification tolerance is closed; the others are split on the
neuron chosen by BaBSR or filtered smart branching (:mod:`advrobust.exact._branching`). A domain
with no unstable neuron left is a linear region: its exact minimum is an LP (HiGHS), which
makes the search complete. The linear bound's minimiser of every domain (a corner of the box
for linf) and every LP point are re-evaluated through the network as counterexample candidates.

Unlike the MILP, a row's search stops once its sign is decided, so on robust rows the lower
bound is a proof (above the tolerance), not the exact minimum.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from advrobust.core._validation import check_bool, check_float, check_int
from advrobust.core.memory import default_memory_limit, parse_size
from advrobust.core.result import VERIFY_TOLERANCE
from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall, Norm
from advrobust.errors import InvalidParameterError, InvalidThreatModelError, MemoryLimitError
from advrobust.exact._beta import BetaBounder
from advrobust.exact._beta import Domains as _Domains
from advrobust.exact._beta import OptState as _OptState
from advrobust.exact._domains import OpenList
from advrobust.network.graph import Graph
from advrobust.network.graph.graph import as_graph
from advrobust.network.ir import Network
from advrobust.relax._alpha_budget import sloped_nodes, workset_bytes
from advrobust.relax._encoding import encode_sample, row_cost
from advrobust.relax.alpha_crown import AlphaResult, alpha_crown, check_branchable
from advrobust.relax.base import Bounder, Bounds
from advrobust.relax.crown import crown_layer_bounds, crown_lower
from advrobust.relax.dag import graph_crown_bounds
from advrobust.relax.ibp import LayerBounds
from advrobust.solvers.highs import HighsSolver
from advrobust.solvers.program import SolveStatus

__all__ = ["BaB"]

#: A domain is closed once its bound exceeds this (twice the verdict tolerance, so the proved
#: lower bound always clears the tolerance itself).
_CLOSE = 2 * VERIFY_TOLERANCE


@dataclass
class _Row:
    """Search state of one spec row."""

    best_value: float = math.inf
    best_point: Tensor | None = None
    closed: float = math.inf  # min bound over closed domains
    domains: int = 0
    status: str = "verified"
    log: dict[str, Any] = field(default_factory=dict)


class _RowSearch:
    """beta-CROWN branch and bound on the rows ``c_r . f(x) + d_r`` of one sample, all at once.

    Every domain belongs to one row; a batch mixes rows and the lowest bounds of any row are
    split first (best-first). A row is done when its domains are all closed (proved) or a
    point of the set makes it negative (falsified; with ``stop_on_counterexample`` the whole
    search stops).
    """

    def __init__(self, network: Network | Graph, x0: Tensor, threat: LpBall, c: Tensor,
                 d: Tensor, bab: BaB, root: AlphaResult) -> None:
        self.net, self.x0, self.threat = network, x0, threat
        self.c, self.d = c.reshape(-1, c.shape[-1]).to(x0.dtype), d.reshape(-1).to(x0.dtype)
        self.batch_size, self.max_domains = bab.batch_size, bab.max_domains
        self.memory_limit = bab.memory_limit
        self.batch_size = min(self.batch_size, _memory_batch(network, root, bab.memory_limit))
        self.max_leaves, self.fsb_k = bab.max_leaves, bab._fsb_k
        self.attack_steps = bab.attack_steps
        self.root = root
        self.bounder = BetaBounder(network, x0, threat, self.c, self.d, root.bounds,
                                   steps=bab.beta_steps, domain_bounds=bab.domain_bounds,
                                   keep_state=bab.keep_state,
                                   inter_alphas=root.inter_alphas)
        self.relus = self.bounder.relus
        self.rows = [_Row() for _ in range(self.c.shape[0])]
        self.leaves = 0
        # Seconds to bound one sub-domain, measured as the search goes: on large (convolutional)
        # networks one batched step of ``batch_size`` domains can take longer than the whole
        # time limit, so the batch is sized to what the time left affords.
        self.seconds_per_domain = 0.0

    # ------------------------------------------------------------------ bounding
    def bound(self, split: dict[int, Tensor], alpha: dict[int, Tensor],
              beta: dict[int, Tensor], row: Tensor, floor: Tensor | None = None,
              steps: int | None = None, deadline: float = math.inf,
              state: _OptState | None = None) -> _Domains:
        """Optimised bounds and branching scores of B domains; their corners are offered."""
        dom, coef = self.bounder.bound(split, alpha, beta, row, floor, steps, deadline, state)
        self._offer_corners(coef, row)
        return dom

    def _offer_corners(self, a: Tensor, row: Tensor) -> None:
        """Evaluate the box corners minimising the domains' linear bounds, on their rows."""
        b = row.shape[0]
        x0 = self.x0.expand((b,) + tuple(self.x0.shape[1:]))
        low, up = self.threat.input_bounds(x0)
        pts = torch.where(a.reshape(low.shape) >= 0, low, up)
        with torch.no_grad():
            values = (self.net.forward(pts) * self.c[row]).sum(1) + self.d[row]
        starts, rows = [], []
        for r in row.unique().tolist():
            mine = (row == r).nonzero().flatten()
            k = mine[values[mine].argmin()]
            self.offer(r, float(values[k]), pts[k])
            if self.rows[r].best_value >= 0:
                starts.append(pts[k])
                rows.append(r)
        if starts and self.attack_steps:
            self._descend(torch.stack(starts), torch.tensor(rows), low[:1], up[:1])

    def _descend(self, x: Tensor, rows: Tensor, low: Tensor, up: Tensor) -> None:
        """A few signed-gradient steps on each row's value from the corner of its lowest
        domain (PGD inside the box; a promising domain's corner is often near a violation)."""
        step = (up - low) / 4
        for _ in range(self.attack_steps):
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                value = (self.net.forward(x) * self.c[rows]).sum(1) + self.d[rows]
                (grad,) = torch.autograd.grad(value.sum(), x)
            x = torch.minimum(torch.maximum(x.detach() - step * grad.sign(), low), up)
            step = step * 0.7
        with torch.no_grad():
            value = (self.net.forward(x) * self.c[rows]).sum(1) + self.d[rows]
        for k, r in enumerate(rows.tolist()):
            self.offer(r, float(value[k]), x[k])

    def offer(self, r: int, value: float, point: Tensor) -> None:
        state = self.rows[r]
        if value < state.best_value:
            state.best_value, state.best_point = value, point.detach().clone()

    def _value(self, r: int, point: Tensor) -> float:
        with torch.no_grad():
            return float((self.net.forward(point) * self.c[r]).sum() + self.d[r])

    # ------------------------------------------------------------------ leaves
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

    # ------------------------------------------------------------------ the search
    def run(self, deadline: float, stop_on_counterexample: bool) -> tuple[Tensor, list[_Row]]:
        """Search until decided or ``deadline``; return sound lower bounds (R,) and the rows."""
        n_rows = self.c.shape[0]
        start = time.perf_counter()
        row = torch.arange(n_rows, device=self.x0.device)
        split = {j: torch.zeros((n_rows, size), dtype=torch.int8)
                 for j, size in zip(self.relus, self.bounder.sizes, strict=True)}
        alpha = {j: self.root.alphas[j][0].flatten(1) for j in self.relus}
        beta = {j: torch.zeros_like(v) for j, v in alpha.items()}
        first = self.bound(split, alpha, beta, row, floor=self.root.lower[0], steps=0)
        limit = self._open_limit(first)
        # storage for the limit and one batch's children above it (the loop stops past it)
        open_ = OpenList(first, most=limit + 2 * self.batch_size)
        # a first guess until a batch is measured: one optimisation step (forward and
        # backward) costs about three passes like this one
        self.seconds_per_domain = (time.perf_counter() - start) / n_rows * (
            3 * self.bounder.steps + 1)
        for state in self.rows:
            state.domains = 1
        status, draining = "", False
        while True:
            self._close(open_)
            if stop_on_counterexample and any(r.best_value < 0 for r in self.rows):
                status = "stopped"
                break
            if len(open_) == 0:
                break
            if self._affordable(deadline) < 1:
                status = "time_limit"
                break
            if len(open_) > limit:
                status = "domain_limit"
                break
            if self.leaves > self.max_leaves:
                status = "milp"  # linear regions keep coming: finish with the MILP
                break
            # near the limit, split the domains closest to a proof (their children close and
            # free their slots) until the list is back under three quarters of it
            draining = len(open_) > 0.9 * limit or (draining and len(open_) > 0.75 * limit)
            self._step(open_, deadline, draining)
        return self._finish(open_.view, status, deadline), self.rows

    def _finish(self, open_: _Domains, status: str, deadline: float) -> Tensor:
        """Per-row lower bounds and statuses once the loop stops with ``status``."""
        lower = torch.tensor([r.closed for r in self.rows], dtype=torch.float64)
        for r, state in enumerate(self.rows):
            mine = open_.lower[open_.row == r]
            if mine.numel():
                lower[r] = min(float(lower[r]), float(mine.min()))
                if status == "milp" and state.best_value >= 0:
                    lower[r] = max(float(lower[r]), self.finish_with_milp(r, deadline))
                    state.status = "verified" if lower[r] > _CLOSE else "time_limit"
                else:
                    state.status = status or "time_limit"
            else:
                state.status = "verified" if lower[r] > _CLOSE else "at tolerance"
            if state.best_value < 0:
                state.status = "falsified"
            elif status == "stopped" and mine.numel():
                state.status = "stopped (another row falsified)"
        return lower

    def finish_with_milp(self, r: int, deadline: float) -> float:
        """Decide row ``r`` with the big-M MILP on the root bounds (a sound global bound)."""
        bounds = self.root.bounds
        enc = encode_sample(self.net, bounds, 0, integer=True, threat=self.threat, x0=self.x0)
        sol = HighsSolver(enc.program, time_limit=max(deadline - time.perf_counter(), 1e-3)
                          ).minimize(row_cost(enc, self.c[r]), float(self.d[r]),
                                     stop_below=-1e-6, stop_above=_CLOSE)
        self.rows[r].log["milp"] = sol.backend_status
        if sol.x is not None:
            point = torch.as_tensor(sol.x[enc.inputs]).to(self.x0).reshape(self.x0.shape)
            point = torch.minimum(torch.maximum(point, bounds[0][0]), bounds[0][1])
            self.offer(r, self._value(r, point), point[0])
        if sol.status is SolveStatus.INFEASIBLE:
            # the root program holds the clean input: "infeasible" is numerical trouble
            self.rows[r].log["milp"] = "infeasible root (numerical trouble): not a proof"
            return -math.inf
        return sol.bound

    def _close(self, open_: OpenList) -> None:
        """Drop proved domains and those of falsified rows, keeping their bounds' minimum
        (the union of a row's domains covers the set, so that minimum stays a lower bound)."""
        dom = open_.view
        broken = torch.tensor([state.best_value < 0 for state in self.rows],
                              device=dom.row.device)
        done = (dom.lower > _CLOSE) | broken[dom.row]
        for r in dom.row[done].unique().tolist():
            mine = done & (dom.row == r)
            self.rows[r].closed = min(self.rows[r].closed, float(dom.lower[mine].min()))
        open_.drop(done.nonzero().flatten())

    def _affordable(self, deadline: float) -> int:
        """How many parents can still be split (two children each) before ``deadline``."""
        left = deadline - time.perf_counter()
        if left <= 0:
            return 0
        if self.seconds_per_domain <= 0:
            return self.batch_size
        return min(self.batch_size, int(left / (2 * self.seconds_per_domain)))

    def _open_limit(self, first: _Domains) -> int:
        """Open domains the search may hold: ``max_domains``, and what half the memory limit
        holds (slopes, multipliers, Adam moments, scores per domain; the batches take the
        other half)."""
        budget = self.memory_limit if self.memory_limit is not None else default_memory_limit()
        fits = max(1, (budget // 2) // max(1, first.bytes_per_domain()))
        return fits if self.max_domains is None else min(self.max_domains, fits)

    def _pick(self, open_: _Domains, count: int, drain: bool = False
              ) -> tuple[Tensor, Tensor]:
        """``count`` domains to split, and the rest: every open row's lowest domains, an equal
        share each (an easy row closes in a few splits even while another one stalls), then
        the lowest of any row up to ``count``; ``drain``: the highest domains (the closest to
        a proof: their children free the list's memory)."""
        if drain:
            order = open_.lower.argsort(descending=True)
            return order[:count], order[count:]
        order = open_.lower.argsort()
        onehot = torch.nn.functional.one_hot(open_.row[order], self.c.shape[0])
        rank = (onehot.cumsum(0) * onehot).sum(1) - 1  # position within its own row
        quota = max(1, count // max(1, int(onehot.any(0).sum())))
        first = rank < quota
        extra = (~first).nonzero().flatten()[:max(0, count - int(first.sum()))]
        chosen = first.clone()
        chosen[extra] = True
        if int(chosen.sum()) > count:  # more open rows than ``count``: lowest ones first
            chosen = torch.zeros_like(chosen)
            chosen[first.nonzero().flatten()[:count]] = True
        return order[chosen], order[~chosen]

    def _step(self, open_: OpenList, deadline: float, drain: bool = False) -> None:
        view = open_.view
        leaf = view.score.amax(1) <= 0
        if bool(leaf.any()):
            solved = torch.zeros_like(leaf)
            for k in leaf.nonzero().flatten().tolist():
                if time.perf_counter() >= deadline:
                    break
                # a linear region is settled by its exact minimum, whatever its sign
                value = self.solve_leaf(view.take(torch.tensor([k])),
                                        deadline - time.perf_counter())
                r = int(view.row[k])
                self.rows[r].closed = min(self.rows[r].closed, value)
                solved[k] = True
            open_.drop(solved.nonzero().flatten())
            return
        count = max(1, min(self.batch_size, self._affordable(deadline)))
        pick, _ = self._pick(view, count, drain)
        parents = view.take(pick)
        start = time.perf_counter()
        neuron = self.bounder.choose(parents, self.fsb_k)
        split, alpha, beta, row = self.bounder.children(parents, neuron)
        state = self.bounder.child_state(parents, neuron)
        children = self.bound(split, alpha, beta, row, floor=parents.lower.repeat(2),
                              state=state,
                              deadline=deadline)
        self.seconds_per_domain = (time.perf_counter() - start) / len(children)
        for r, count_r in zip(*children.row.unique(return_counts=True), strict=True):
            self.rows[int(r)].domains += int(count_r)
        open_.drop(pick)
        open_.add(children)


def _memory_batch(network: Network | Graph, root: AlphaResult, limit: int | None) -> int:
    """Parents per batch whose children (two each, one row, slopes and split multipliers on
    every ReLU) fit the memory limit."""
    graph = as_graph(network)
    child = 2 * workset_bytes(graph, root.bounds, sloped_nodes(graph, root.bounds),
                              set(range(len(graph.nodes))), 1)
    budget = default_memory_limit() if limit is None else limit
    return max(1, budget // max(1, 2 * child))


class BaB(Bounder):
    """Complete verifier: beta-CROWN branch and bound on ReLU splits.

    Runs on chains and on graphs (residual additions, concatenations, reshapes, convolutions,
    batch norm, average pooling) whose only nonlinear nodes are ReLUs; any other nonlinear node
    (sigmoid, tanh, max pooling, LeakyReLU) is refused with an UnsupportedLayerError naming it.

    Each spec row not already proved at the root (alpha-CROWN) is searched until its sign is
    decided (all sub-domains bounded above the tolerance: proved; a point of the set below
    zero: broken) or the time runs out (UNKNOWN, with the lowest open sub-domain bound as the
    lower bound). linf threats only: on l1 balls the split constraints matter so much that the
    search degenerates into one LP per linear region (use the MILP).

    Args:
        time_limit: seconds per sample (all its rows together, the root's alpha-CROWN
            included).
        batch_size: parent domains split per step (their children bounded in one batch).
        max_domains: open sub-domains kept before the search gives up (None, default: as
            many as half of ``memory_limit`` holds). Near the limit the search splits the
            domains closest to a proof first, so that their children close and free memory.
        max_leaves: linear regions solved by LP before the row is handed to the big-M MILP
            (on the root's alpha-CROWN bounds) for the rest of the time.
        early_stop: stop a sample at its first row with a counterexample.
        alpha_steps: Adam steps of the root's alpha-CROWN.
        intermediate: let the root's alpha-CROWN optimise the intermediate bounds too.
        beta_steps: Adam steps on slopes and multipliers per batch of domains (5: on the
            mnist_fc 256x2 instances BaB decides, 25-30 % less time than 10 for ~15 % more
            domains; bench/RESULTS.md, issue 11).
        branching: ``"babsr"`` or ``"fsb"`` (filtered smart branching over the top 3 BaBSR
            candidates), or an int ``k`` (FSB over the top ``k``).
        attack_steps: signed-gradient steps per batch from the box corner of each open row's
            lowest domain (0: only the corners are evaluated).
        domain_bounds: re-bound each domain's intermediate layers above its splits (CROWN with
            the root's optimised slopes, under the split-clamped bounds below). Off: on the
            mnist_fc 256x4 instances it costs 2-2.5x per domain for no better bound
            (bench/RESULTS.md, issue 11, session 4).
        keep_state: each domain keeps its Adam state (moments and step counts of its slopes
            and multipliers) and its children continue it, instead of a fresh optimiser per
            batch (bench/RESULTS.md, issue 11, developer babadam).
        memory_limit: bytes (or a size such as ``"8G"``) the root's alpha-CROWN and each
            batch of domains may take, estimated before allocating (default: half the
            available memory, :func:`~advrobust.core.memory.default_memory_limit`). What does
            not fit is done more cheaply (fewer optimised intermediate nodes, smaller
            batches); a sample whose root alone does not fit keeps its CROWN bounds, with a
            warning — never an out-of-memory kill.
    """

    def __init__(self, *, time_limit: float = 60.0, batch_size: int = 256,
                 max_domains: int | None = None, max_leaves: int = 8,
                 early_stop: bool = True, alpha_steps: int = 20, intermediate: bool = True,
                 beta_steps: int = 5, branching: str | int = "fsb",
                 attack_steps: int = 10, domain_bounds: bool = False,
                 keep_state: bool = True, memory_limit: int | str | None = None) -> None:
        self.time_limit = check_float(time_limit, "time_limit", "BaB", low=0.0, low_open=True,
                                      allow_inf=True)
        self.batch_size = check_int(batch_size, "batch_size", "BaB", low=1)
        self.max_domains = None if max_domains is None else check_int(
            max_domains, "max_domains", "BaB", low=1)
        self.max_leaves = check_int(max_leaves, "max_leaves", "BaB", low=0)
        self.early_stop = check_bool(early_stop, "early_stop", "BaB")
        self.alpha_steps = check_int(alpha_steps, "alpha_steps", "BaB", low=0)
        self.intermediate = check_bool(intermediate, "intermediate", "BaB")
        self.beta_steps = check_int(beta_steps, "beta_steps", "BaB", low=0)
        self.attack_steps = check_int(attack_steps, "attack_steps", "BaB", low=0)
        self.domain_bounds = check_bool(domain_bounds, "domain_bounds", "BaB")
        self.keep_state = check_bool(keep_state, "keep_state", "BaB")
        self.memory_limit = None if memory_limit is None else parse_size(
            memory_limit, "BaB memory_limit")
        if branching not in ("babsr", "fsb") and not (
                isinstance(branching, int) and not isinstance(branching, bool) and branching >= 1):
            raise InvalidParameterError(
                "BaB: 'branching' must be 'babsr', 'fsb' or an int >= 1 (FSB candidates). "
                f"Got {branching!r} instead.")
        self.branching = branching

    reuses_layer_bounds = True

    @property
    def _fsb_k(self) -> int:
        return {"babsr": 1, "fsb": 3}.get(self.branching, self.branching)  # type: ignore[arg-type]

    def _bound_graph(self, graph: Graph, x: Tensor, threat: LpBall, spec: Spec, *,
                     layer_bounds: LayerBounds | None = None) -> Bounds:
        return self._bound(graph, x, threat, spec, layer_bounds=layer_bounds)

    def _bound(self, network: Network | Graph, x: Tensor,  # type: ignore[override]
               threat: LpBall, spec: Spec, *,
               layer_bounds: LayerBounds | None = None) -> Bounds:
        if threat.norm is not Norm.LINF:
            raise InvalidThreatModelError(
                f"BaB supports the norm 'linf' only. Got {threat.norm.value!r} instead; use "
                "MILP for l1 and CROWN for l2.")
        check_branchable(network)
        with torch.no_grad():
            # one CROWN pass (or the caller's): the start of every sample's alpha-CROWN root
            layers = layer_bounds if layer_bounds is not None else (
                graph_crown_bounds(network, x, threat, rounding=True)
                if isinstance(network, Graph) else
                crown_layer_bounds(network, x, threat, rounding=True))
            crown = crown_lower(network, x, threat, spec.C, spec.d, bounds=layers,
                                rounding=True)
            clean = spec.apply(network.forward(x))
        lower = crown.clone()
        cand = x.unsqueeze(1).repeat_interleave(spec.num_rows, 1).clone()
        samples = []
        roots: dict[int, Any] = {}  # per sample its root's alpha-CROWN layer bounds
        for s in range(x.shape[0]):
            root = [(lo[s:s + 1], hi[s:s + 1]) for lo, hi in layers]
            samples.append(self._sample(network, x[s:s + 1], threat, spec, s, crown[s],
                                        clean[s], lower, cand, root, roots))
        return Bounds(lower, candidates=cand, stats={"crown": crown, "samples": samples,
                                                     "root_bounds": roots})

    def _sample(self, network: Network | Graph, x0: Tensor, threat: LpBall, spec: Spec, s: int,
                crown: Tensor, clean: Tensor, lower: Tensor, cand: Tensor, root: Any,
                roots: dict[int, Any]) -> list[dict[str, Any]]:
        start = time.perf_counter()
        deadline = start + self.time_limit
        if bool((clean < 0).any()) and self.early_stop:
            return []  # the clean point is its own counterexample
        todo = [j for j in clean.argsort().tolist() if float(crown[j]) <= VERIFY_TOLERANCE]
        if not todo:
            return []
        rows = torch.tensor(todo, device=x0.device)
        c, d = spec.C[s, rows].unsqueeze(0), spec.d[s, rows].unsqueeze(0)
        # the root: alpha-CROWN (at most a third of the time), its bounds hold in every domain
        try:
            alpha = alpha_crown(network, x0, threat, c, d, steps=self.alpha_steps,
                                intermediate=self.intermediate, bounds=root,
                                deadline=start + self.time_limit / 3, stop_above=_CLOSE,
                                memory_limit=self.memory_limit)
        except MemoryLimitError as err:
            warnings.warn(f"BaB: sample {s} keeps its CROWN bounds: {err}", UserWarning,
                          stacklevel=2)
            return []
        alpha.lower = torch.maximum(alpha.lower, crown[rows].unsqueeze(0))
        roots[s] = alpha.bounds  # sound on the whole set: later stages may start from them
        search = _RowSearch(network, x0, threat, c[0], d[0], self, alpha)
        values, states = search.run(deadline, stop_on_counterexample=self.early_stop)
        seconds = time.perf_counter() - start
        log = []
        for j, value, row, root_lower in zip(todo, values.tolist(), states,
                                             alpha.lower[0].tolist(), strict=True):
            lower[s, j] = max(float(lower[s, j]), value)
            if row.best_point is not None:
                cand[s, j] = row.best_point.reshape(cand.shape[2:]).to(cand)
            log.append({"row": j, "status": row.status, **row.log, "domains": row.domains,
                        "leaves": search.leaves, "alpha": root_lower, "lower": value,
                        "best": row.best_value, "seconds": seconds})
        return log
