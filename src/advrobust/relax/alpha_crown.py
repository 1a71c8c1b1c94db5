"""alpha-CROWN: optimised lower slopes for every unstable ReLU, intermediate bounds included.

Xu et al. 2021, "Fast and complete: enabling complete neural network verification with rapid
and massively parallel incomplete verifiers". CROWN's lower relaxation ``relu(z) >= alpha z`` is
valid for any ``alpha`` in [0, 1], so every choice gives a sound bound and the slopes can be
optimised by gradient ascent on the bound. The slopes are separate per output row and, when
the intermediate (pre-activation) bounds are optimised too, separate per intermediate neuron
bound (each of the ``2 u_k`` rows ``+-z_k`` of layer ``k`` has its own slopes of the layers
below): a tighter layer ``k`` tightens the relaxation of every layer above it.

The engine runs over the op registry's graph pass (:func:`~advrobust.relax.dag.graph_backward`):
any graph of registered ops (chains, residual additions, concatenations). Every op with
optimisable slopes (``init_slopes``: ReLU, and LeakyReLU's lower line in [slope, 1]) gets them;
the other nonlinear ops (sigmoid, tanh, max pooling) keep their fixed relaxations inside the
optimisation, and the nodes they read still get optimised bounds. Every step's bounds are sound
(float64 with every op's rounding allowance, as in :mod:`advrobust.relax.crown`); the result
keeps the best bound of every neuron and row over the steps (an intersection of sound bounds).

The same back-substitution with Lagrange multipliers ``beta`` on split constraints
(:func:`~advrobust.relax._alpha_parts.linear_pass`, re-exported here with the other building
blocks: :class:`Adam`, :func:`check_chain`, :func:`check_branchable`, :func:`concretize`) is the
bound of beta-CROWN (:mod:`advrobust.exact._beta`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from advrobust.core.threat import LpBall
from advrobust.network.graph import Graph
from advrobust.network.graph.graph import as_graph
from advrobust.network.ir import Network
from advrobust.relax._alpha_budget import fit_budget
from advrobust.relax._alpha_parts import (
    Adam,
    Slopes,
    bound_targets,
    check_branchable,
    check_chain,
    concretize,
    linear_pass,
)
from advrobust.relax.crown import crown_layer_bounds
from advrobust.relax.dag import (
    Allowance,
    GraphBounds,
    graph_backward,
    graph_crown_bounds,
)
from advrobust.relax.ibp import LayerBounds

__all__ = ["Adam", "AlphaResult", "alpha_crown", "check_branchable", "check_chain", "concretize",
           "linear_pass"]


@dataclass
class AlphaResult:
    """What :func:`alpha_crown` found.

    Attributes:
        bounds: sound bounds of every node's output (N, *shape) each: for a chain network
            the input of every op and the output (``bounds[j]`` is op ``j``'s input).
        lower: (N, R) sound lower bounds of the rows ``C f + d``.
        alphas: per op index (node index - 1) of an op with optimisable slopes (ReLU,
            LeakyReLU), the final rows' slopes (N, R, *shape) at each row's best step.
        steps: optimisation steps run.
        seconds: time spent.
        inter_alphas: per optimised ReLU input ``k``: the flat indices of its neurons unstable at
            the start and the slopes of the ReLUs below ``k`` of their bound rows, per ReLU
            index (N, 2u, *shape), lower-bound rows first (any slopes give sound bounds: e.g.
            for re-bounding layer ``k`` on a sub-domain).
    """

    bounds: LayerBounds
    lower: Tensor
    alphas: dict[int, Tensor]
    steps: int
    seconds: float
    inter_alphas: dict[int, tuple[Tensor, dict[int, Tensor]]] = field(default_factory=dict)


def alpha_crown(network: Network | Graph, x0: Tensor, threat: LpBall, c: Tensor,
                d: Tensor | None = None, *, steps: int = 20, lr: float = 0.1,
                intermediate: bool = True, bounds: LayerBounds | None = None,
                deadline: float = math.inf, stop_above: float = math.inf,
                memory_limit: int | None = None) -> AlphaResult:
    """alpha-CROWN lower bounds of ``C f + d`` (and optimised intermediate bounds).

    Works on any network graph of registered ops (chains, residual additions,
    concatenations): every op with optimisable slopes (``init_slopes``: ReLU, LeakyReLU) gets
    them, the other nonlinear ops (sigmoid, tanh, max pooling) keep their fixed relaxations.

    Args:
        network: a chain :class:`Network` or a :class:`Graph` (float64 for the verifiers).
        x0: (N, *input_shape) centres.
        threat: the set.
        c: (N, R, num_outputs) rows; d: optional (N, R) offsets.
        steps: Adam steps on the slopes.
        lr: Adam's learning rate.
        intermediate: optimise the bounds of every nonlinear op's input that has an op with
            slopes below it too (each with its own slopes); otherwise only the final rows'.
        bounds: starting node bounds (default: CROWN's, with rounding allowances).
        deadline: ``time.perf_counter()`` value at which the optimisation stops early.
        stop_above: stop once every row's bound exceeds this (e.g. the verification
            tolerance: nothing left to prove).
        memory_limit: bytes the optimisation may take (estimated before allocating; default
            :func:`~advrobust.core.memory.default_memory_limit`): intermediate nodes that do
            not fit keep their starting bounds, with a warning.

    Raises:
        MemoryLimitError: the final rows' slopes alone do not fit ``memory_limit``.

    Returns:
        :class:`AlphaResult`; every bound in it is sound in floating point.
    """
    start = time.perf_counter()
    graph = as_graph(network)
    c = c.to(x0.dtype)
    d = x0.new_zeros(c.shape[:2]) if d is None else d.to(x0.dtype)
    best = _start_bounds(network, graph, x0, threat, bounds)
    slopes = Slopes(graph, best)
    final = slopes.init(best, c.shape[1], slopes.nodes)
    targets = fit_budget(graph, best, slopes.nodes, c.shape[1],
                          bound_targets(graph, best, slopes.nodes, intermediate), memory_limit)
    inter = {t: (idx, rows.to(x0.dtype), slopes.init(best, rows.shape[1], mine))
             for t, (idx, rows, mine) in targets.items()}
    ascent = _Ascent(graph, x0, threat, c, d, best, slopes, final, inter)
    done = ascent.run(steps, lr, deadline, stop_above)
    _bound_unread(graph, best)
    # slopes keyed like ``alphas``: by op index (node index - 1)
    inter_alphas = {k: (idx, {j - 1: v.detach() for j, v in al.items()})
                    for k, (idx, _, al) in inter.items()}
    return AlphaResult(best, ascent.best_lower,
                       {j - 1: v for j, v in ascent.best_alpha.items()}, done,
                       time.perf_counter() - start, inter_alphas)


def _start_bounds(network: Network | Graph, graph: Graph, x0: Tensor, threat: LpBall,
                  bounds: LayerBounds | None) -> GraphBounds:
    """Copies of the starting node bounds (default: CROWN's, with rounding allowances)."""
    with torch.no_grad():
        if bounds is None:
            bounds = (graph_crown_bounds(graph, x0, threat, rounding=True)
                      if isinstance(network, Graph) else
                      crown_layer_bounds(network, x0, threat, rounding=True))
        return [(lo.detach().clone(), hi.detach().clone()) for lo, hi in bounds]


def _bound_unread(graph: Graph, best: GraphBounds) -> None:
    """Tighten the nodes no relaxation reads from their (tightened) inputs, in place."""
    with torch.no_grad():
        for i, node in enumerate(graph.nodes):
            if node.op is not None and not graph.needs_bounds(i):
                lo, hi = node.op.sound_interval(*(best[j] for j in node.inputs))
                best[i] = (torch.maximum(best[i][0], lo), torch.minimum(best[i][1], hi))


class _Ascent:
    """Adam ascent on the slopes of one :func:`alpha_crown` call, keeping the best node bounds
    (``best``, updated in place), final rows' bounds and their slopes over the steps."""

    def __init__(self, graph: Graph, x0: Tensor, threat: LpBall, c: Tensor, d: Tensor,
                 best: GraphBounds, slopes: Slopes, final: dict[int, Tensor],
                 inter: dict[int, tuple[Tensor, Tensor, dict[int, Tensor]]]) -> None:
        self.graph, self.x0, self.threat, self.d = graph, x0, threat, d
        self.best, self.slopes, self.final, self.inter = best, slopes, final, inter
        self.a_out = c.reshape(c.shape[:2] + graph.output_shape)
        self.best_lower = torch.full(c.shape[:2], -math.inf, dtype=x0.dtype, device=x0.device)
        self.best_alpha = {j: v.detach().clone() for j, v in final.items()}

    def run(self, steps: int, lr: float, deadline: float, stop_above: float) -> int:
        """Up to ``steps`` Adam steps (each pass's bounds kept); the number run."""
        params = list(self.final.values()) + [
            v for _, _, al in self.inter.values() for v in al.values()]
        opt = Adam([(params, lr)], decay=0.98)
        steps = steps if params else 0
        done = 0
        for step in range(steps + 1):
            last = step == steps or time.perf_counter() >= deadline
            with torch.enable_grad() if not last else torch.no_grad():
                cur, lower, inter_objective = self._pass()
            with torch.no_grad():
                self._keep(cur, lower)
            if last or bool((self.best_lower > stop_above).all()):
                break
            # each intermediate row has its own slopes: the sum optimises every row's own bound
            opt.step(lower.sum() + inter_objective)
            with torch.no_grad():
                self.slopes.clamp(self.final, self.best)
                for _, _, al in self.inter.values():
                    self.slopes.clamp(al, self.best)
            done += 1
        return done

    def _pass(self) -> tuple[GraphBounds, Tensor, Tensor]:
        """Node bounds, the final rows' lower bounds (N, R) and the intermediate objective."""
        graph, x0, threat, d = self.graph, self.x0, self.threat, self.d
        # every node's rounding terms, once per pass (they depend on its inputs' bounds)
        allowances: dict[int, Allowance] = {}
        cur, inter_objective = _bounds_pass(graph, x0, threat, self.best, self.inter, allowances)
        a, const, err = graph_backward(graph, graph.output, self.a_out, cur, slopes=self.final,
                                       rounding=True, allowances=allowances)
        assert err is not None
        lower = concretize(threat, x0, a, const + d, err)
        lower = lower - 4 * torch.finfo(x0.dtype).eps * (lower.abs() + d.abs()).detach()
        return cur, lower, inter_objective

    def _keep(self, cur: GraphBounds, lower: Tensor) -> None:
        """Intersect the optimised nodes' bounds; keep each row's best bound and slopes."""
        best = self.best
        for k in self.inter:
            best[k] = (torch.maximum(best[k][0], cur[k][0].detach()),
                       torch.minimum(best[k][1], cur[k][1].detach()))
        better = lower.detach() > self.best_lower
        self.best_lower = torch.where(better, lower.detach(), self.best_lower)
        for j, v in self.final.items():
            mask = better.reshape(better.shape + (1,) * (v.dim() - 2))
            self.best_alpha[j] = torch.where(mask, v.detach(), self.best_alpha[j])


def _bounds_pass(graph: Graph, x0: Tensor, threat: LpBall, best: GraphBounds,
                 inter: Mapping[int, tuple[Tensor, Tensor, dict[int, Tensor]]],
                 allowances: dict[int, Allowance]) -> tuple[GraphBounds, Tensor]:
    """One pass of node bounds: sound intervals from the nodes' inputs, intersected with the
    best bounds so far, then the optimised rows of each target node (intersected too).
    Also returns the sum of the optimised rows' bounds (what their slopes maximise)."""
    cur: GraphBounds = [best[0]]
    objective = x0.new_zeros(())
    for i, node in enumerate(graph.nodes[1:], start=1):
        assert node.op is not None
        nxt_lo, nxt_hi = node.op.sound_interval(*(cur[j] for j in node.inputs))
        lo, hi = torch.maximum(nxt_lo, best[i][0]), torch.minimum(nxt_hi, best[i][1])
        if i in inter:
            idx, rows, al = inter[i]
            a, const, err = graph_backward(graph, i, rows, cur, slopes=al, rounding=True,
                                           allowances=allowances)
            assert err is not None
            val = concretize(threat, x0, a, const, err)
            objective = objective + val.sum()
            k = idx.numel()
            lo_f, hi_f = lo.flatten(1), hi.flatten(1)
            new_lo = torch.maximum(lo_f[:, idx], val[:, :k])
            new_hi = torch.minimum(hi_f[:, idx], -val[:, k:])
            lo_f = lo_f.index_copy(1, idx, new_lo)
            hi_f = hi_f.index_copy(1, idx, new_hi)
            lo, hi = lo_f.reshape(lo.shape), hi_f.reshape(hi.shape)
        cur.append((lo, hi))
    return cur, objective
