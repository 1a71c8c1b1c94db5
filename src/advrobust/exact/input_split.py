"""Branch and bound on the input box: the input splitting of low-dimensional problems.

Where the input has few coordinates (ACAS Xu: 5) and the box is wide, ReLU splits stall: every
neuron is unstable and the root relaxation is far from the truth, while halving the box a few
times makes most neurons stable and CROWN's bound nearly exact. The search keeps a list of
sub-boxes, bounds a batch of the lowest ones at a time with CROWN (its intermediate bounds
recomputed on each sub-box; float64 with rounding allowances, so every bound is sound) over
all the spec rows together, closes a box once every row is proved on it, shrinks the others to
the part where an open row's linear minorant is below twice the proof threshold (input-domain
clipping: the parts cut away count as proved at that level) and halves them along the
coordinate whose width times its weight is largest (the worst row's minorant coefficient, its
gradient at the box's centre and the coordinate's reach into the first layer the relaxations
read, each scaled to 1, summed; at least ``_FLOOR``). Before the first
box is bounded, a signed-gradient search from points on the box's faces looks for
counterexamples; then a few signed-gradient steps inside each box from its centre are offered
as well. A row's sound lower bound is the least of its bounds over the closed boxes and the
open ones (a child starts from its parent's bound).
:class:`~advrobust.exact.BaB` runs it for linf sets of at most ``input_split`` input values.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor

from advrobust.core.threat import LpBall, Norm
from advrobust.exact._candidates import Row
from advrobust.exact._domains import _CLOSE
from advrobust.network.graph import Graph
from advrobust.network.graph.graph import as_graph
from advrobust.network.ir import Network

__all__ = ["InputSplitResult", "input_split"]

#: The level input-domain clipping keeps a box's points below (:func:`_clip`): above the
#: proof threshold, so the parts it cuts away count as proved for their rows.
_CUT = 2 * _CLOSE

#: Signed-gradient steps of the candidate search inside each box of a batch.
_ATTACK_STEPS = 5

#: Elements of the widest coefficient tensor of one bound pass (boxes x rows x width, the rows
#: of a layer of the widest width): the boxes of a batch are bounded this many at a time. On
#: ACAS Xu (layers of 50, rows +-50) 512 boxes at once made tensors of 20 MB that no cache
#: holds; ~104 at a time bounded 2.2-2.4x the boxes per second (session 23). The batch's
#: union pass then stays below CROWN's size for per-sample passes (``relax.dag``), which on
#: such small layers are slower.
_CHUNK_ELEMENTS = 1 << 19

#: Starts and signed-gradient steps of the search from the box's faces (:func:`_face_search`).
_FACE_POINTS = 2048
_FACE_STEPS = 10
_FACE_SHARE = 0.1  # of the search's time at most

#: Least weight of a coordinate in the choice of the coordinate to halve (:func:`_halves`):
#: the largest weight of a box is 1-3, so a coordinate the weights ignore is halved once its
#: width is 50-150 times the others'.
_FLOOR = 0.02

#: Weight of a coordinate's reach into the first bounded layer (:func:`_reach`, scaled to 1 at
#: the largest) in the choice of the coordinate to halve, beside the worst row's minorant
#: coefficient and gradient (each scaled to 1). VNN-COMP 2021 ACAS Xu at 30 s (session 23):
#: 182 / 186 without it, 184 with 0.5 or 1 (and 106-110 s instead of 174 s on the 182).
_REACH = 0.5


class _Boxes:
    """Per-sample input boxes as the set of a bound pass (only what the passes read: the linf
    norm, ``eps``, the boxes and the box concretisation)."""

    norm = Norm.LINF
    eps = 0.0

    def __init__(self, lower: Tensor, upper: Tensor) -> None:
        self.lower, self.upper = lower, upper

    def input_bounds(self, x0: Tensor) -> tuple[Tensor, Tensor]:
        if x0.shape[0] != self.lower.shape[0]:
            raise ValueError("input_split: one centre per box")
        return self.lower, self.upper

    def take(self, index: Tensor) -> _Boxes:
        """The boxes ``index`` (CROWN's per-sample pass gathers its group's boxes)."""
        return _Boxes(self.lower[index], self.upper[index])

    # the linf ball's box concretisation, on these boxes
    concretize_lower = LpBall.concretize_lower


@dataclass
class InputSplitResult:
    """What :func:`input_split` reached.

    Attributes:
        lower: (R,) sound lower bounds of the rows over the box.
        rows: per row its search state (best point and value, status, domains).
        boxes: boxes bounded.
        open: boxes left open.
    """

    lower: Tensor
    rows: list[Row]
    boxes: int = 0
    open: int = 0
    log: dict[str, Any] = field(default_factory=dict)


def input_split(network: Network | Graph, lower: Tensor, upper: Tensor, c: Tensor, d: Tensor,
                deadline: float, *, batch_size: int = 512, max_boxes: int = 2_000_000,
                early_stop: bool = True) -> InputSplitResult:
    """Bound rows ``c f(x) + d`` over the box ``[lower, upper]`` by splitting it.

    A box is closed for a row once the row is proved on it (bound above the tolerance) or,
    where the row's lowest value found is itself within the tolerance (no proof possible), its
    bound is within the tolerance of that value (the box cannot hold a point much lower: with
    ``early_stop`` False the search then ends at the row's minimum), and dropped once every
    row is closed on it.

    Args:
        network: the float64 IR.
        lower, upper: (1, *input_shape) the box (float64).
        c: (R, outputs) spec rows; d: (R,) offsets.
        deadline: ``time.perf_counter()`` value after which no batch starts.
        batch_size: boxes bounded per pass (their children: twice that).
        max_boxes: open boxes kept at most (the search stops beyond).
        early_stop: stop once a row is falsified.

    Returns:
        The rows' sound lower bounds and states (statuses ``verified``, ``falsified``,
        ``at tolerance`` (the search ended without deciding the row's sign), ``time_limit``,
        ``domain_limit``, ``stopped (another row falsified)``).
    """
    graph = as_graph(network)  # the graph pass (4x the chain pass's speed on ACAS Xu)
    n_rows = c.shape[0]
    rows = [Row() for _ in range(n_rows)]
    c, d = c.to(lower.dtype), d.to(lower.dtype)
    open_lo, open_hi = lower.clone(), upper.clone()
    open_bound = torch.full((1, n_rows), -math.inf, dtype=lower.dtype)
    closed = torch.full((n_rows,), math.inf, dtype=lower.dtype)
    boxes, status = 0, ""
    start = time.perf_counter()
    reach = _reach(graph, lower, upper)
    _face_search(graph, lower, upper, c, d, rows, start + _FACE_SHARE * (deadline - start))
    if early_stop and any(r.best_value < 0 for r in rows):
        status = "stopped"
    while open_lo.shape[0] and not status:
        if time.perf_counter() >= deadline:
            status = "time_limit"
            break
        if open_lo.shape[0] > max_boxes:
            status = "domain_limit"
            break
        # the boxes nearest a counterexample first (their lowest row still open on them)
        pending = torch.where(_done(open_bound, rows), math.inf, open_bound).amin(1)
        order = pending.argsort()
        take, keep = order[:batch_size], order[batch_size:]
        lo, hi, parent = open_lo[take], open_hi[take], open_bound[take]
        open_lo, open_hi, open_bound = open_lo[keep], open_hi[keep], open_bound[keep]
        raw, coef = _bound(graph, lo, hi, c, d)
        boxes += lo.shape[0]
        bound = torch.maximum(raw, parent)
        # clipped with the minorants' own bounds: what leaves the box has every live row
        # above _CUT there (its bound), every other row above its bound on the box
        live = ~_done(bound, rows)
        new_lo, new_hi = _clip(lo, hi, raw, coef, live, _CUT)
        shrunk = ((new_lo > lo) | (new_hi < hi)).flatten(1).any(1)
        if bool(shrunk.any()):
            left_out = torch.where(live, torch.full_like(bound, _CUT), bound)
            closed = torch.minimum(closed, left_out[shrunk].amin(0))
        lo, hi = new_lo, new_hi
        grad = _attack(graph, lo, hi, c, d, bound, rows)
        if early_stop and any(r.best_value < 0 for r in rows):
            status = "stopped"
            open_lo, open_hi = torch.cat([open_lo, lo]), torch.cat([open_hi, hi])
            open_bound = torch.cat([open_bound, bound])
            break
        done = _done(bound, rows).all(1)
        if bool(done.any()):
            closed = torch.minimum(closed, bound[done].amin(0))
        lo, hi, bound, coef, grad = lo[~done], hi[~done], bound[~done], coef[~done], grad[~done]
        if lo.shape[0]:
            worst = torch.where(_done(bound, rows), math.inf, bound).argmin(1)
            minorant = coef[torch.arange(lo.shape[0]), worst].reshape(grad.shape)
            weight = (_unit(minorant) + _unit(grad) + _REACH * reach).clamp_min(_FLOOR)
            left, right = _halves(lo, hi, weight)
            open_lo = torch.cat([open_lo, left[0], right[0]])
            open_hi = torch.cat([open_hi, left[1], right[1]])
            open_bound = torch.cat([open_bound, bound, bound])
    best = torch.minimum(closed, open_bound.amin(0)) if open_lo.shape[0] else closed
    for r, row in enumerate(rows):
        row.domains = boxes
        row.status = "falsified" if row.best_value < 0 else \
            "verified" if float(best[r]) > _CLOSE else \
            "stopped (another row falsified)" if status == "stopped" else \
            status or "at tolerance"
    return InputSplitResult(best, rows, boxes, int(open_lo.shape[0]))


def _done(bound: Tensor, rows: list[Row]) -> Tensor:
    """(B, R): the rows closed on each box (proved, or, for a row whose lowest value found is
    at most ``_CLOSE`` and so can never be proved, bounded within the tolerance of it).

    A row whose lowest value found is above ``_CLOSE`` may still be proved: its boxes stay
    open until they are (closing them near that value ended ACAS Xu property 6's second box
    at tolerance, bound 6e-5 for a lowest value of 2.6e-4)."""
    found = torch.tensor([r.best_value for r in rows], dtype=bound.dtype)
    return (bound > _CLOSE) | ((bound >= found - _CLOSE) & (found <= _CLOSE))


def _bound(network: Graph, lo: Tensor, hi: Tensor, c: Tensor, d: Tensor
           ) -> tuple[Tensor, Tensor]:
    """CROWN lower bounds (B, R) of the rows on boxes ``[lo, hi]`` and the input coefficients
    (B, R, D) of their linear minorants (whose box minima the bounds are), a few boxes at a
    time (see ``_CHUNK_ELEMENTS``)."""
    widest = max(math.prod(node.op.out_shape) for node in network.nodes[1:]
                 if node.op is not None)
    step = max(1, _CHUNK_ELEMENTS // (2 * widest * widest))
    if lo.shape[0] <= step:
        return _bound_boxes(network, lo, hi, c, d)
    parts = [_bound_boxes(network, lo[i:i + step], hi[i:i + step], c, d)
             for i in range(0, lo.shape[0], step)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _bound_boxes(network: Graph, lo: Tensor, hi: Tensor, c: Tensor, d: Tensor
                 ) -> tuple[Tensor, Tensor]:
    from advrobust.relax._rounding import add_offset
    from advrobust.relax.crown import _concretize
    from advrobust.relax.dag import graph_backward, graph_crown_bounds

    b = lo.shape[0]
    boxes = cast(LpBall, _Boxes(lo, hi))
    mid = (lo + hi) / 2
    with torch.no_grad():
        bounds = graph_crown_bounds(network, mid, boxes, rounding=True)
        a = c.expand(b, -1, -1).reshape((b, c.shape[0]) + tuple(network.output_shape))
        a_in, const, err = graph_backward(network, network.output, a, bounds, rounding=True)
        bound = add_offset(_concretize(boxes, mid, a_in, const, err), d.expand(b, -1))
    return bound, a_in.reshape(b, c.shape[0], -1)


def _clip(lo: Tensor, hi: Tensor, raw: Tensor, coef: Tensor, live: Tensor, tau: float
          ) -> tuple[Tensor, Tensor]:
    """Each box shrunk to the smallest box that holds every point where a ``live`` row (B, R)
    could be <= ``tau`` under its linear minorant (input-domain clipping).

    A row's minorant ``a x + k <= f(x)`` has its box minimum >= ``raw`` (the row's sound
    bound from that minorant), so ``f(x) <= tau`` forces ``a_i (x_i - lo_i) <= tau - raw`` for
    ``a_i > 0`` (and the mirror for ``a_i < 0``): ``x_i <= lo_i + (tau - raw) / a_i``. The new
    ends are rounded outwards (a relative 1e-12 and one ulp) and the union over the live rows is
    kept; a box with no live row stays as it is. Outside the result every live row is > tau.
    """
    b = lo.shape[0]
    flo, fhi = lo.reshape(b, 1, -1), hi.reshape(b, 1, -1)
    reach = (tau - raw).clamp_min(0.0).unsqueeze(2) / coef.abs() * (1 + 1e-12)  # (B, R, D)
    inf = torch.full_like(reach, math.inf)
    up = torch.nextafter(flo + reach, inf)
    down = torch.nextafter(fhi - reach, -inf)
    new_hi = torch.where(coef > 0, torch.minimum(fhi, up), fhi)
    new_lo = torch.where(coef < 0, torch.maximum(flo, down), flo)
    mask = live.unsqueeze(2)
    new_hi = torch.where(mask, new_hi, -inf).amax(1)
    new_lo = torch.where(mask, new_lo, inf).amin(1)
    any_live = live.any(1, keepdim=True)
    new_lo = torch.where(any_live, torch.maximum(new_lo, lo.reshape(b, -1)), lo.reshape(b, -1))
    new_hi = torch.where(any_live, torch.minimum(new_hi, hi.reshape(b, -1)), hi.reshape(b, -1))
    return new_lo.reshape(lo.shape), new_hi.reshape(hi.shape)


def _attack(network: Network | Graph, lo: Tensor, hi: Tensor, c: Tensor, d: Tensor,
            bound: Tensor, rows: list[Row]) -> Tensor:
    """Signed-gradient descent on each box's worst row from its centre (its points offered to
    the rows); returns that row's gradient (B, *shape) at the centre."""
    worst = bound.argmin(1)
    return _descend(network, ((lo + hi) / 2).clone(), lo, hi, c, d, worst, rows,
                    (hi - lo) / 4, 0.5, _ATTACK_STEPS)


def _face_search(network: Graph, lo: Tensor, hi: Tensor, c: Tensor, d: Tensor,
                 rows: list[Row], until: float) -> None:
    """Signed-gradient descent from ``_FACE_POINTS`` points of the box's faces, each on one
    row, every point offered to the rows; no step starts after ``until``.

    Each coordinate of a start is the box's lower end, its upper end or uniform between
    (a third each, seeded): a nearly piecewise-linear network takes its extremes on the box's
    faces, and a descent from the interior stalls where the ReLUs of a coordinate are all
    inactive (a zero gradient) after a step too long. On ACAS Xu property 7 (N1,9) the
    counterexample (four inputs at their ends, one in a window of 15 % of its range) is among
    the starts, while 10,000 interior starts of 100 steps (plain or APGD) all stopped 6e-4
    above the threshold (bench/RESULTS.md, issue 11, session 22).
    """
    gen = torch.Generator().manual_seed(0)
    shape = (_FACE_POINTS,) + tuple(lo.shape[1:])
    pick = torch.randint(0, 3, shape, generator=gen)
    inside = lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=lo.dtype)
    x = torch.where(pick == 0, lo, torch.where(pick == 1, hi, inside))
    row = torch.arange(_FACE_POINTS) % c.shape[0]
    _descend(network, x, lo, hi, c, d, row, rows, (hi - lo) / 16, 0.85, _FACE_STEPS, until)


def _descend(network: Network | Graph, x: Tensor, lo: Tensor, hi: Tensor, c: Tensor,
             d: Tensor, row: Tensor, rows: list[Row], step: Tensor, decay: float, steps: int,
             until: float = math.inf) -> Tensor:
    """``steps`` signed-gradient steps of each point of ``x`` (B, ...) on its row ``row[b]``
    inside ``[lo, hi]`` (the step shrinking by ``decay``), every point offered to ``rows``;
    stops early once a row is falsified or ``until`` has passed. Returns the rows' gradients
    at the starts."""
    cr, dr = c[row], d[row]
    first = None
    for _ in range(steps):
        x.requires_grad_(True)
        with torch.enable_grad():
            value = (network.forward(x) * cr).flatten(1).sum(1) + dr
            (g,) = torch.autograd.grad(value.sum(), x)
        x = x.detach()
        if first is None:
            first = g.detach()
        with torch.no_grad():
            _offer(network, x, c, d, rows)
        if any(r.best_value < 0 for r in rows) or time.perf_counter() >= until:
            return first
        x = torch.minimum(torch.maximum(x - step * g.sign(), lo), hi)
        step = step * decay
    with torch.no_grad():
        _offer(network, x, c, d, rows)
    assert first is not None
    return first


def _offer(network: Network | Graph, x: Tensor, c: Tensor, d: Tensor, rows: list[Row]) -> None:
    """Offer each row the point of ``x`` (B, ...) with its lowest value."""
    values = network.forward(x) @ c.T + d  # (B, R)
    low, at = values.min(0)
    for r, row in enumerate(rows):
        row.offer(float(low[r]), x[int(at[r])])


def _reach(graph: Graph, lower: Tensor, upper: Tensor) -> Tensor:
    """(1, *input_shape): how far each input coordinate spreads the first node whose bounds a
    relaxation reads (the summed width of its interval when only that coordinate varies), per
    unit of the coordinate's width, scaled to 1 at the largest (ones if no node is bounded or
    the input itself is: every coordinate spreads it alike).

    The nodes before it are linear, so a box's widths times this are the first layer's
    spread along each coordinate: the choice of the coordinate to halve no longer depends on
    how the input is scaled (a VNNLIB box is mapped onto the unit cube, where every side is
    as wide as every other, while the network reads some coordinates 20 times less than
    others). On ACAS Xu property 1 (N2,8 and N4,9, open at 30 s at every floor tried) the
    search decides both in 1.1 and 2.2 s (bench/RESULTS.md, issue 11, session 23).
    """
    from advrobust.relax.dag import graph_interval_bounds

    first = next((i for i in range(len(graph.nodes)) if graph.needs_bounds(i)), None)
    if first is None:
        return torch.ones_like(lower)
    dim = lower[0].numel()
    free = torch.eye(dim, dtype=torch.bool)
    mid = ((lower + upper) / 2).reshape(1, dim).expand(dim, dim)
    lo = torch.where(free, lower.reshape(1, dim), mid).reshape((dim,) + tuple(lower.shape[1:]))
    hi = torch.where(free, upper.reshape(1, dim), mid).reshape(lo.shape)
    with torch.no_grad():
        node_lo, node_hi = graph_interval_bounds(graph, lo, hi)[first]
    spread = (node_hi - node_lo).flatten(1).sum(1) / (upper - lower).reshape(dim)
    spread = torch.nan_to_num(spread, nan=0.0, posinf=0.0)  # a point's side: never halved
    return (spread / spread.amax().clamp_min(1e-300)).reshape(lower.shape)


def _unit(t: Tensor) -> Tensor:
    """``|t|`` over its largest entry per box (zeros stay zeros)."""
    flat = t.abs().flatten(1)
    return (flat / flat.amax(1, keepdim=True).clamp_min(1e-300)).reshape(t.shape)


def _halves(lo: Tensor, hi: Tensor, weight: Tensor
            ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """The two halves of every box along its coordinate of largest ``weight * width`` (the
    widest where the weights vanish).

    The search weighs a coordinate by its worst row's minorant coefficient plus its gradient
    at the box's centre, each scaled to 1 at its largest: on ACAS Xu the coefficient alone
    decided ``prop_1`` on N1,2 in 0.8 s (the gradient alone: 13 s) but not ``prop_3`` on N1,1
    in 30 s (the gradient: 4.3 s); the sum decides them in 0.4 s and 4.1 s (bench/RESULTS.md,
    issue 11, session 21). Both can be ~0 on a coordinate along which the box is still wide
    (where the worst row's minorant and gradient do not depend on it, its unstable neurons
    may): weighed by that, it was never halved and the box's bound stalled (``prop_1`` on
    N2,2 at -25 after 7,000 boxes, one coordinate still at half its range, another at 1/4000).
    Each weight is at least ``_FLOOR`` (session 22: 11 of the 14 single-box instances open
    at 30 s decided), and the search adds the coordinate's reach into the first layer
    (:func:`_reach`, session 23): the first two are blind to what a coordinate does to the
    relaxation of ReLUs the worst row barely reads."""
    b = lo.shape[0]
    width = (hi - lo).reshape(b, -1)
    score = weight.reshape(b, -1) * width
    score = torch.where(score.amax(1, keepdim=True) > 0, score, width)
    dim = score.argmax(1)
    flat_lo, flat_hi = lo.reshape(b, -1), hi.reshape(b, -1)
    at = torch.arange(b)
    mid = (flat_lo[at, dim] + flat_hi[at, dim]) / 2
    left_hi, right_lo = flat_hi.clone(), flat_lo.clone()
    left_hi[at, dim] = mid
    right_lo[at, dim] = mid
    return (lo, left_hi.reshape(lo.shape)), (right_lo.reshape(lo.shape), hi)
