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

The same back-substitution with Lagrange multipliers ``beta`` on split constraints is the
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
from advrobust.errors import UnsupportedLayerError
from advrobust.network.graph import Graph
from advrobust.network.graph.base import GraphOp
from advrobust.network.graph.graph import as_graph
from advrobust.network.ir import Network
from advrobust.relax._alpha_budget import ancestors, fit_budget, sloped_nodes
from advrobust.relax._rounding import abs_dot, input_gamma
from advrobust.relax.crown import crown_layer_bounds
from advrobust.relax.dag import (
    Allowance,
    GraphBounds,
    graph_backward,
    graph_crown_bounds,
    refine_mask,
)
from advrobust.relax.ibp import LayerBounds

__all__ = ["Adam", "AlphaResult", "alpha_crown", "check_branchable", "check_chain", "concretize",
           "linear_pass"]


class Adam:
    """Adam (Kingma & Ba 2015) ascent steps on leaf tensors, with per-group rates and decay.

    A few lines instead of ``torch.optim.Adam``, whose first construction imports
    ``torch._dynamo`` (~6 s of start-up measured on the shared machine): a one-process-per-
    instance harness would pay that on every instance.
    """

    def __init__(self, groups: list[tuple[list[Tensor], float]], decay: float = 1.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.groups = groups
        self.decay, self.betas, self.eps = decay, betas, eps
        self.m = [[torch.zeros_like(p) for p in ps] for ps, _ in groups]
        self.v = [[torch.zeros_like(p) for p in ps] for ps, _ in groups]
        self.t = 0

    def step(self, objective: Tensor) -> None:
        """One step that *increases* ``objective`` (a scalar depending on the tensors)."""
        params = [p for ps, _ in self.groups for p in ps]
        grads = torch.autograd.grad(objective, params, allow_unused=True)
        self.t += 1
        b1, b2 = self.betas
        k = 0
        with torch.no_grad():
            for g_idx, (ps, lr) in enumerate(self.groups):
                rate = lr * self.decay ** (self.t - 1)
                for p_idx, p in enumerate(ps):
                    g = grads[k]
                    k += 1
                    if g is None:
                        continue
                    m, v = self.m[g_idx][p_idx], self.v[g_idx][p_idx]
                    m.mul_(b1).add_(g, alpha=1 - b1)
                    v.mul_(b2).addcmul_(g, g, value=1 - b2)
                    m_hat = m / (1 - b1 ** self.t)
                    v_hat = v / (1 - b2 ** self.t)
                    p.add_(rate * m_hat / (v_hat.sqrt() + self.eps))


def check_chain(network: Network) -> list[int]:
    """The ReLU positions of a chain network whose ops branch-and-bound can split (every
    nonlinear graph op ``branchable``); a clear error naming anything else."""
    if not isinstance(network, Network):  # the IR's shape, not an op type
        raise UnsupportedLayerError(
            f"alpha/beta-CROWN branch-and-bound works on chain networks (a list of ops); got "
            f"{type(network).__name__}.")
    try:
        graph_ops = network.graph_ops
    except NotImplementedError as exc:  # an op without a registered graph op
        raise UnsupportedLayerError(
            f"alpha/beta-CROWN supports chains of registered affine and ReLU ops only: "
            f"{exc}.") from exc
    for op, gop in zip(network.ops, graph_ops, strict=True):
        if gop.nonlinear and not gop.branchable:
            raise UnsupportedLayerError(
                f"alpha/beta-CROWN branch-and-bound splits ReLU phases only; op {op!r} is "
                f"a {type(op).__name__}.")
    return [i for i, op in enumerate(graph_ops) if op.nonlinear]


def check_branchable(network: Network | Graph) -> list[int]:
    """The ReLUs branch-and-bound can split, keyed by node index - 1 (a chain's op positions,
    :func:`check_chain`; on a graph the same key, so slopes from :func:`alpha_crown` line up);
    an UnsupportedLayerError naming any other nonlinear node (sigmoid, tanh, max pooling,
    LeakyReLU) or a nonlinear node with several inputs."""
    if not isinstance(network, Graph):
        return check_chain(network)
    keys = []
    for i, node in enumerate(network.nodes[1:], start=1):
        op = node.op
        assert op is not None
        if not op.nonlinear:
            continue
        if not op.branchable or len(node.inputs) != 1:
            raise UnsupportedLayerError(
                f"BaB (beta-CROWN branch and bound) splits ReLU phases only; node {node.name} "
                f"is a {type(op).__name__} (inputs {list(node.inputs)}). Use the MILP (LP "
                "relaxations of such nodes) or CROWN for this network.")
        keys.append(i - 1)
    return keys


def linear_pass(network: Network | Graph, a: Tensor, stop: int, bounds: LayerBounds,
                alphas: Mapping[int, Tensor] | None = None,
                betas: Mapping[int, Tensor] | None = None,
                record: dict[int, Tensor] | None = None,
                mags: Mapping[int, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Back-substitute ``a`` (N, K, *shape of op ``stop``'s input) to the network input.

    The graph pass (:func:`~advrobust.relax.dag.graph_backward`) over the chain's graph ops
    (or a :class:`Graph`'s nodes; ``stop`` is a node index) with rounding allowances: op ``j``
    is node ``j + 1``, so every mapping below is keyed by op index (node index - 1).
    ``betas[j]`` (broadcastable to (N, K, *shape_j)) are signed Lagrange multipliers of split
    constraints on the input ``z_j`` of ReLU ``j``: ``beta * s`` with ``s = +1`` for a
    split ``z_j >= 0`` and ``-1`` for ``z_j <= 0``, ``beta >= 0``; the term ``-beta s z_j`` is
    non-positive on the split domain, so the result still lower-bounds ``<a, z_stop>`` there.
    ``record``, when given, receives the coefficients on every ReLU's output (for branching).
    ``mags`` may hold precomputed term magnitudes of affine ops (1 or N, *out_shape), from any
    bounds that contain ``bounds`` (e.g. the root's, for every sub-domain).

    Returns:
        ``(a_in, const, err)``: ``<a, z_stop> >= <a_in, x> + const - err`` over the box of
        ``bounds[0]`` (and the split domain), ``err`` (N, K) the rounding allowance.
    """
    graph = as_graph(network)
    allowances: dict[int, Allowance] = {} if mags is None else {
        j + 1: (_op(graph, j + 1).rounding_gamma(a.dtype), m) for j, m in mags.items()}
    seen: dict[int, Tensor] | None = None if record is None else {}
    a_in, const, err = graph_backward(
        graph, stop, a, bounds, slopes=_by_node(alphas), rounding=True,
        allowances=allowances, betas=_by_node(betas), record=seen)
    if record is not None and seen is not None:
        record.update({i - 1: v for i, v in seen.items()})
    assert err is not None
    return a_in, const, err


def _op(graph: Graph, i: int) -> GraphOp:
    op = graph.nodes[i].op
    assert op is not None
    return op


def _by_node(values: Mapping[int, Tensor] | None) -> dict[int, Tensor] | None:
    """A mapping keyed by op index, keyed by node index (op ``j`` is node ``j + 1``)."""
    return None if values is None else {j + 1: v for j, v in values.items()}


def concretize(threat: LpBall, x0: Tensor, a: Tensor, const: Tensor, err: Tensor) -> Tensor:
    """Sound ``min <a, x> + const`` over the set, less ``err`` and this sum's own allowance."""
    value = threat.concretize_lower(a.flatten(2), x0) + const
    if x0.shape[0] > 1 and x0.stride(0) == 0:  # one centre, expanded (BaB's domains)
        x0 = x0[:1]
    lo, hi = threat.input_bounds(x0)
    mag = torch.maximum(lo.abs(), hi.abs()) + threat.eps
    size = a[0, 0].numel()
    return value - err - input_gamma(size, value.dtype) * (abs_dot(a, mag) + const.detach().abs())


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


def _rows(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Flat indices of neurons ``mask``ed in some sample, and the +-unit coefficient rows on
    them (1, 2u, *shape)."""
    mask_f = mask.flatten(1)
    idx = mask_f.any(0).nonzero().flatten()
    k = idx.numel()
    rows = torch.zeros(2 * k, mask_f.shape[1], dtype=torch.float64, device=mask.device)
    ar = torch.arange(k, device=mask.device)
    rows[ar, idx] = 1.0
    rows[ar + k, idx] = -1.0
    return idx, rows.reshape((1, 2 * k) + tuple(mask.shape[1:]))


class _Slopes:
    """The optimisable slopes of a graph: which nodes have them, and fresh copies."""

    def __init__(self, graph: Graph, best: GraphBounds) -> None:
        self.graph = graph
        self.nodes = sloped_nodes(graph, best)

    def init(self, best: GraphBounds, rows: int, nodes: list[int]) -> dict[int, Tensor]:
        out = {}
        for i in nodes:
            op = self.graph.nodes[i].op
            assert op is not None
            init = op.init_slopes(*best[self.graph.nodes[i].inputs[0]], rows)
            assert init is not None
            out[i] = init.requires_grad_(True)
        return out

    def clamp(self, slopes: Mapping[int, Tensor], best: GraphBounds) -> None:
        for i, v in slopes.items():
            op = self.graph.nodes[i].op
            assert op is not None
            op.clamp_slopes(v, *best[self.graph.nodes[i].inputs[0]])


def _targets(graph: Graph, best: GraphBounds, sloped: list[int], intermediate: bool
             ) -> dict[int, tuple[Tensor, Tensor, list[int]]]:
    """The nodes whose bounds are optimised: every node a nonlinear op reads that has a node
    with slopes among its ancestors (the first ReLU's input depends on no relaxation), with
    the neurons its consumers' relaxations depend on and those slope nodes."""
    out: dict[int, tuple[Tensor, Tensor, list[int]]] = {}
    if not intermediate:
        return out
    for t in range(1, len(graph.nodes)):
        if not graph.needs_bounds(t):
            continue
        above = ancestors(graph, t)
        mine = [j for j in sloped if j in above]
        mask = refine_mask(graph, t, *best[t])
        if not mine or mask is None:
            continue
        idx, rows = _rows(mask)
        if idx.numel():
            out[t] = (idx, rows, mine)
    return out


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
    with torch.no_grad():
        if bounds is None:
            bounds = (graph_crown_bounds(graph, x0, threat, rounding=True)
                      if isinstance(network, Graph) else
                      crown_layer_bounds(network, x0, threat, rounding=True))
        best = [(lo.detach().clone(), hi.detach().clone()) for lo, hi in bounds]
    slopes = _Slopes(graph, best)
    final = slopes.init(best, c.shape[1], slopes.nodes)
    targets = fit_budget(graph, best, slopes.nodes, c.shape[1],
                          _targets(graph, best, slopes.nodes, intermediate), memory_limit)
    inter = {t: (idx, rows.to(x0.dtype), slopes.init(best, rows.shape[1], mine))
             for t, (idx, rows, mine) in targets.items()}
    params = list(final.values()) + [v for _, _, al in inter.values() for v in al.values()]
    opt = Adam([(params, lr)], decay=0.98)
    steps = steps if params else 0
    best_lower = torch.full(c.shape[:2], -math.inf, dtype=x0.dtype, device=x0.device)
    best_alpha = {j: v.detach().clone() for j, v in final.items()}
    a_out = c.reshape(c.shape[:2] + graph.output_shape)
    done = 0
    for step in range(steps + 1):
        last = step == steps or time.perf_counter() >= deadline
        with torch.enable_grad() if not last else torch.no_grad():
            # every node's rounding terms, once per pass (they depend on its inputs' bounds)
            allowances: dict[int, Allowance] = {}
            cur, inter_objective = _bounds_pass(graph, x0, threat, best, inter, allowances)
            a, const, err = graph_backward(graph, graph.output, a_out, cur, slopes=final,
                                           rounding=True, allowances=allowances)
            assert err is not None
            lower = concretize(threat, x0, a, const + d, err)
            lower = lower - 4 * torch.finfo(x0.dtype).eps * (lower.abs() + d.abs()).detach()
        with torch.no_grad():
            for k in inter:
                best[k] = (torch.maximum(best[k][0], cur[k][0].detach()),
                           torch.minimum(best[k][1], cur[k][1].detach()))
            better = lower.detach() > best_lower
            best_lower = torch.where(better, lower.detach(), best_lower)
            for j, v in final.items():
                mask = better.reshape(better.shape + (1,) * (v.dim() - 2))
                best_alpha[j] = torch.where(mask, v.detach(), best_alpha[j])
        if last or bool((best_lower > stop_above).all()):
            break
        # each intermediate row has its own slopes: the sum optimises every row's own bound
        opt.step(lower.sum() + inter_objective)
        with torch.no_grad():
            slopes.clamp(final, best)
            for _, _, al in inter.values():
                slopes.clamp(al, best)
        done += 1
    with torch.no_grad():  # the nodes no relaxation reads, from the tightened inputs
        for i, node in enumerate(graph.nodes):
            if node.op is not None and not graph.needs_bounds(i):
                lo, hi = node.op.sound_interval(*(best[j] for j in node.inputs))
                best[i] = (torch.maximum(best[i][0], lo), torch.minimum(best[i][1], hi))
    # slopes keyed like ``alphas``: by op index (node index - 1)
    inter_alphas = {k: (idx, {j - 1: v.detach() for j, v in al.items()})
                    for k, (idx, _, al) in inter.items()}
    return AlphaResult(best, best_lower, {j - 1: v for j, v in best_alpha.items()}, done,
                       time.perf_counter() - start, inter_alphas)


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
