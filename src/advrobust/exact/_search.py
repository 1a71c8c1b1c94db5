"""The search of :class:`~advrobust.exact.bab.BaB` on one sample: all its open spec rows at once.

Every domain belongs to one row; a batch mixes rows (each open row's lowest domains get an equal
share of it, then the lowest of any row: best-first), so no row waits behind one that stalls.
The union of a row's domains covers the threat set, so the minimum of their bounds is a sound
lower bound at every moment. Bounds come from :class:`~advrobust.exact._beta.BetaBounder`;
counterexample candidates, linear regions and the MILP fallback from
:class:`~advrobust.exact._candidates.Candidates`.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from advrobust.core.memory import default_memory_limit
from advrobust.core.threat import LpBall
from advrobust.exact._beta import BetaBounder
from advrobust.exact._beta import Domains as _Domains
from advrobust.exact._beta import OptState as _OptState
from advrobust.exact._candidates import Candidates
from advrobust.exact._candidates import Row as _Row
from advrobust.exact._domains import _CLOSE, OpenList
from advrobust.exact._fork import GRACE, SharedFlag, fork_map
from advrobust.network.graph import Graph
from advrobust.network.graph.graph import as_graph
from advrobust.network.ir import Network
from advrobust.relax._alpha_budget import sloped_nodes, workset_bytes
from advrobust.relax.alpha_crown import AlphaResult

if TYPE_CHECKING:
    from advrobust.exact.bab import BaB

__all__ = ["RowSearch", "search_dealt"]

#: Seconds a dealt search (:func:`search_dealt`) must have left for a process whose domains are
#: all closed to have the others' dealt again: a deal costs a fork and the handed-over domains'
#: transfer (tenths of a second for thousands of domains).
_HANDOFF_SECONDS = 2.0


class RowSearch(Candidates):
    """beta-CROWN branch and bound on the rows ``c_r . f(x) + d_r`` of one sample, all at once.

    Every domain belongs to one row; a batch mixes rows and the lowest bounds of any row are
    split first (best-first). A row is done when its domains are all closed (proved) or a
    point of the set makes it negative (falsified; with ``stop_on_counterexample`` the whole
    search stops).
    """

    def __init__(self, network: Network | Graph, x0: Tensor, threat: LpBall, c: Tensor,
                 d: Tensor, bab: BaB, root: AlphaResult, shared: SharedFlag | None = None
                 ) -> None:
        self.net, self.x0, self.threat = network, x0, threat
        # searches of the same property's other rows in other processes: a counterexample
        # found by any of them stops all (with ``stop_on_counterexample``)
        self.shared = shared
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

    def bound(self, split: dict[int, Tensor], alpha: dict[int, Tensor],
              beta: dict[int, Tensor], row: Tensor, floor: Tensor | None = None,
              steps: int | None = None, deadline: float = math.inf,
              state: _OptState | None = None) -> _Domains:
        """Optimised bounds and branching scores of B domains; their corners are offered."""
        dom, coef = self.bounder.bound(split, alpha, beta, row, floor, steps, deadline, state)
        self._offer_corners(coef, row)
        return dom

    def run(self, deadline: float, stop_on_counterexample: bool) -> tuple[Tensor, list[_Row]]:
        """Search until decided or ``deadline``; return sound lower bounds (R,) and the rows."""
        open_, limit = self._start()
        status = self.loop(open_, limit, deadline, stop_on_counterexample)
        return self._finish(open_.view, status, deadline), self.rows

    def loop(self, open_: OpenList, limit: int, deadline: float, stop_on_counterexample: bool,
             handoff: SharedFlag | None = None) -> str:
        """Split and bound the domains of ``open_`` (at most ``limit``) until a stop
        (:meth:`_stop`); return why. With ``handoff`` (a search dealt to processes,
        :func:`search_dealt`): a process whose domains are all closed with at least
        ``_HANDOFF_SECONDS`` left sets it, and the others stop at their next batch
        (``"handoff"``) to have their domains dealt again."""
        draining = False
        while True:
            self._close(open_)
            status = self._stop(open_, limit, deadline, stop_on_counterexample)
            if status is None and handoff is not None and handoff.is_set():
                status = "handoff"
            if status is not None:
                if status == "" and handoff is not None and \
                        deadline - time.perf_counter() >= _HANDOFF_SECONDS:
                    handoff.set()
                return status
            # near the limit, split the domains closest to a proof (their children close and
            # free their slots) until the list is back under three quarters of it
            draining = len(open_) > 0.9 * limit or (draining and len(open_) > 0.75 * limit)
            self._step(open_, deadline, draining)

    def _start(self) -> tuple[OpenList, int]:
        """The open list holding every row's root domain (the root's slopes, no split), and
        how many open domains it may hold."""
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
        return open_, limit

    def _stop(self, open_: OpenList, limit: int, deadline: float,
              stop_on_counterexample: bool) -> str | None:
        """Why the search stops now (``""``: every domain closed), or None to go on."""
        if stop_on_counterexample:
            if any(r.best_value < 0 for r in self.rows):
                if self.shared is not None:
                    self.shared.set()
                return "stopped"
            if self.shared is not None and self.shared.is_set():
                return "stopped"
        if len(open_) == 0:
            return ""
        if self._affordable(deadline) < 1:
            return "time_limit"
        if len(open_) > limit:
            return "domain_limit"
        if self.leaves > self.max_leaves:
            return "milp"  # linear regions keep coming: finish with the MILP
        return None

    def _finish(self, open_: _Domains, status: str, deadline: float,
                elsewhere: Tensor | None = None) -> Tensor:
        """Per-row lower bounds and statuses once the loop stops with ``status``;
        ``elsewhere`` (R,): per row, the lowest bound of its open domains that other processes
        held when they stopped (inf where none)."""
        lower = torch.tensor([r.closed for r in self.rows], dtype=torch.float64)
        for r, state in enumerate(self.rows):
            mine = open_.lower[open_.row == r]
            # the lowest bound of the row's open domains, here or held elsewhere (inf: none;
            # an open domain's bound is never +inf: it would have been closed)
            low = min(float(mine.min()) if mine.numel() else math.inf,
                      math.inf if elsewhere is None else float(elsewhere[r]))
            if low < math.inf:
                lower[r] = min(float(lower[r]), low)
                if status == "milp" and state.best_value >= 0:
                    lower[r] = max(float(lower[r]), self.finish_with_milp(r, deadline))
                    state.status = "verified" if lower[r] > _CLOSE else "time_limit"
                else:
                    state.status = status or "time_limit"
            else:
                state.status = "verified" if lower[r] > _CLOSE else "at tolerance"
            if state.best_value < 0:
                state.status = "falsified"
            elif status == "stopped" and low < math.inf:
                state.status = "stopped (another row falsified)"
        return lower

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
        """Solve the open linear regions if there are any; else split a batch of parents
        (:meth:`_pick`) and bound their children."""
        view = open_.view
        leaf = view.score.amax(1) <= 0
        if bool(leaf.any()):
            self._solve_leaves(open_, view, leaf, deadline)
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

    def _solve_leaves(self, open_: OpenList, view: _Domains, leaf: Tensor,
                      deadline: float) -> None:
        """Close the open domains (``view``) that ``leaf`` (B,) marks, linear regions, by their
        LP minimum."""
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


def search_dealt(search: RowSearch, deadline: float, stop_on_counterexample: bool,
                 workers: int) -> tuple[Tensor, list[_Row], set[int]]:
    """:meth:`RowSearch.run` on ``workers`` processes: this one and forked copies
    (:func:`~advrobust.exact._fork.fork_map`, which they inherit the search from). The open
    domains, lowest first, are dealt round-robin (each process gets its share of every row's
    hard and easy domains) and each process splits its own until the deadline; when one has
    closed all of its with ``_HANDOFF_SECONDS`` left, the others stop at their next batch,
    hand their open domains back and all are dealt again. Every process stays busy until the
    last ``_HANDOFF_SECONDS`` however unequal the rows are: dealing rows, a process whose rows
    were all proved sat idle while another searched the last hard row alone (VNN-COMP 2022
    mnist_fc 256x4 ``prop_9_0.05`` at 300 s, ``--threads 2``: one core idle for ~40 of 285 s).

    Returns sound lower bounds (R,), the rows' states (merged over the processes) and the
    rows that had domains in a copy that failed, died or answered late: their bound is
    ``-inf`` (nothing proved; they are not searched further)."""
    open_, limit = search._start()
    most = limit + 2 * search.batch_size
    lost: set[int] = set()
    elsewhere = torch.full((search.c.shape[0],), math.inf, dtype=torch.float64)
    while True:
        search._close(open_)
        status = search._stop(open_, workers * limit, deadline, stop_on_counterexample)
        if status is not None:
            break
        if len(open_) < workers:  # too few to deal: a batch here
            search._step(open_, deadline)
            continue
        # copies of the open domains, lowest first, dealt round-robin (the list itself is
        # freed: the processes' parts hold them now)
        view = open_.view
        order = view.lower.argsort()
        parts = [view.take(order[i::workers]) for i in range(workers)]
        del view, open_
        final, open_, held = _deal(search, parts, limit, most, deadline,
                                   stop_on_counterexample, lost)
        elsewhere = torch.minimum(elsewhere, held)
        if final is not None:
            search._close(open_)
            status = final
            break
    lower = search._finish(open_.view, status, deadline, elsewhere)
    for r in lost:
        lower[r] = -math.inf
        search.rows[r].status = "worker_lost"
    return lower, search.rows, lost


def _deal(search: RowSearch, parts: list[_Domains], limit: int, most: int, deadline: float,
          stop_on_counterexample: bool, lost: set[int]) -> tuple[str | None, OpenList, Tensor]:
    """One deal of :func:`search_dealt`: each process searches its part of the open domains
    until the deadline or a handoff. Returns the status that ends the search (a
    counterexample, the MILP's turn, the domain limit) or None, the domains handed back, and
    per row the lowest bound of the open domains a process kept when it stopped for good (inf
    where none). The copies' row states are merged into ``search.rows``; ``lost`` gains the
    rows of a copy that gave no answer."""
    workers = len(parts)
    empty = parts[0].take(torch.arange(0))
    before = [row.domains for row in search.rows]
    leaves = search.leaves
    handoff = SharedFlag()
    n_rows = search.c.shape[0]

    def work(dom: _Domains) -> tuple[str, _Domains | None, Tensor, list[_Row], int]:
        mine = OpenList(dom, most=most)
        status = search.loop(mine, limit, deadline, stop_on_counterexample, handoff)
        left = mine.view
        held = torch.full((n_rows,), math.inf, dtype=torch.float64)
        if status == "handoff":  # its domains are dealt again: copies, not the storage
            return status, left.take(torch.arange(len(left))), held, search.rows, search.leaves
        held.scatter_reduce_(0, left.row.long(), left.lower.to(torch.float64), "amin")
        return status, None, held, search.rows, search.leaves

    results = fork_map(work, parts, until=deadline + GRACE,
                       max_bytes=search.memory_limit or default_memory_limit())
    statuses: list[str] = []
    back = [empty]
    held = torch.full((n_rows,), math.inf, dtype=torch.float64)
    for k, (part, got) in enumerate(zip(parts, results, strict=True)):
        if got is None:
            lost.update(int(r) for r in part.row.unique())
            continue
        status, rest, theirs, rows, their_leaves = got
        statuses.append(status)
        held = torch.minimum(held, theirs)
        if rest is not None:
            back.append(rest)
        if k == 0:  # this process's own part: its rows are ``search.rows`` already
            continue
        search.leaves += their_leaves - leaves
        for r, (row, other) in enumerate(zip(search.rows, rows, strict=True)):
            row.closed = min(row.closed, other.closed)
            if other.best_point is not None:
                row.offer(other.best_value, other.best_point)
            row.domains += other.domains - before[r]
            row.log.update(other.log)
    merged = back[0]
    for more in back[1:]:
        merged = merged.cat(more)
    if lost:  # a lost copy's rows prove nothing: their other domains need no more search
        keep = ~torch.isin(merged.row, torch.tensor(sorted(lost), dtype=merged.row.dtype))
        merged = merged.take(keep.nonzero().flatten())
    final = next((s for s in ("stopped", "milp", "domain_limit") if s in statuses), None)
    return final, OpenList(merged, most=workers * most), held


def _memory_batch(network: Network | Graph, root: AlphaResult, limit: int | None) -> int:
    """Parents per batch whose children (two each, one row, slopes and split multipliers on
    every ReLU) fit the memory limit."""
    graph = as_graph(network)
    child = 2 * workset_bytes(graph, root.bounds, sloped_nodes(graph, root.bounds),
                              set(range(len(graph.nodes))), 1)
    budget = default_memory_limit() if limit is None else limit
    return max(1, budget // max(1, 2 * child))


