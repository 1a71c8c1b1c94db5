"""The building blocks of alpha- and beta-CROWN (:mod:`advrobust.relax.alpha_crown`,
:mod:`advrobust.exact._beta`): a small Adam, the checks that a network's nonlinear nodes are
ReLUs branch and bound can split, the back-substitution with slopes, split multipliers and
rounding allowances (:func:`linear_pass`), its sound concretisation over the threat set
(:func:`concretize`), and which slopes and node bounds alpha-CROWN optimises (:class:`Slopes`,
:func:`bound_targets`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from advrobust.core.threat import LpBall
from advrobust.errors import UnsupportedLayerError
from advrobust.network.graph import Graph
from advrobust.network.graph.base import GraphOp
from advrobust.network.graph.graph import as_graph
from advrobust.network.ir import Network
from advrobust.relax._alpha_budget import ancestors, sloped_nodes
from advrobust.relax._rounding import abs_dot, input_gamma
from advrobust.relax.dag import Allowance, GraphBounds, graph_backward, refine_mask
from advrobust.relax.ibp import LayerBounds

__all__ = ["Adam", "Slopes", "bound_targets", "by_node", "check_branchable", "check_chain",
           "concretize", "linear_pass"]


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
        graph, stop, a, bounds, slopes=by_node(alphas), rounding=True,
        allowances=allowances, betas=by_node(betas), record=seen)
    if record is not None and seen is not None:
        record.update({i - 1: v for i, v in seen.items()})
    assert err is not None
    return a_in, const, err


def _op(graph: Graph, i: int) -> GraphOp:
    op = graph.nodes[i].op
    assert op is not None
    return op


def by_node(values: Mapping[int, Tensor] | None) -> dict[int, Tensor] | None:
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


class Slopes:
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


def bound_targets(graph: Graph, best: GraphBounds, sloped: list[int], intermediate: bool
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
