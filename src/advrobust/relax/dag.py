"""IBP and CROWN over the graph IR (a DAG of registered ops); a chain is the special case.

Interval bounds run forward in topological order. CROWN's backward pass runs in reverse
topological order and accumulates the coefficients of a node with several consumers (a residual
branch point) before passing them on (Zhang et al. 2018; Xu et al. 2020, "Automatic perturbation
analysis for scalable certified robustness and beyond"). Every step asks the node's op only:
``backward`` for its relaxation, ``rounding`` for its floating-point allowance; the sum of two
consumers' coefficients adds its own allowance. The passes are sound in floating point exactly
as the chain passes (:mod:`advrobust.relax._rounding`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall, Norm
from advrobust.network.graph.base import abs_dot, gamma_of
from advrobust.network.graph.graph import Graph
from advrobust.relax._rounding import input_gamma

__all__ = ["GraphBounds", "graph_backward", "graph_crown_bounds", "graph_crown_lower",
           "graph_interval_bounds", "graph_spec_interval", "interval_is_exact", "optimize_slopes",
           "refine_dense", "refine_mask", "refine_padded", "refine_rows"]

#: Bounds of every node's output: ``len(graph)`` pairs of (N, *shape) tensors.
GraphBounds = list[tuple[Tensor, Tensor]]

#: ``(gamma, magnitude)`` of one node op's back-substitution step, or None if it is exact.
Allowance = tuple[float, Tensor] | None

_MAX_ELEMENTS = 1 << 24  # elements of one coefficient tensor before rows are chunked

#: A batch's dense intermediate-bound pass carries each sample's own neurons, not the union of
#: the neurons any sample needs for every sample, where that union's pass is larger than this
#: (samples x union x 2 x the widest node; below, on ACAS Xu's boxes of 50-wide layers, the
#: union's one pass was faster than the groups' several). Each sample then gets exactly the
#: bounds it gets alone, where the union's pass also tightened neurons a sample did not need,
#: which moved its later interval bounds (by up to 1.3 on mnist_fc 256x6): 100 MNIST images
#: through the VNN-COMP mnist_fc MLPs took 1.9-6.5x less time than with the union and 1.1-4.8x
#: less than one by one, even where the images need most of the union (bench/crown_batch.py;
#: bench/RESULTS.md, session 23).
_UNION_ELEMENTS = 1 << 19

#: Elements of the widest coefficient tensor of one pass over samples' own neurons (neurons x
#: 2 x the widest node): a few MB, so that the pass's elementwise steps run in cache (one pass
#: over a layer's 10,700 (image, neuron) pairs, 10,700 x 2 x 784 doubles, took longer than
#: the images one by one).
_PAIR_ELEMENTS = 1 << 19


def _mag(bound: tuple[Tensor, Tensor]) -> Tensor:
    return torch.maximum(bound[0].abs(), bound[1].abs())


def graph_interval_bounds(graph: Graph, lower: Tensor, upper: Tensor, *,
                          rounding: bool = False) -> GraphBounds:
    """Interval bounds of every node (node 0: the input box).

    Args:
        graph: the IR.
        lower, upper: (N, *input_shape) elementwise input bounds.
        rounding: widen every interval by its op's rounding allowance (what verifiers do).
    """
    bounds: GraphBounds = [(lower, upper)]
    for node in graph.nodes[1:]:
        assert node.op is not None
        ins = [bounds[j] for j in node.inputs]
        bounds.append(node.op.sound_interval(*ins) if rounding else node.op.interval(*ins))
    return bounds


def graph_backward(graph: Graph, start: int, a: Tensor, bounds: GraphBounds, *,
                   slopes: Mapping[int, Tensor] | None = None, rounding: bool = False,
                   allowances: dict[int, Allowance] | None = None,
                   betas: Mapping[int, Tensor] | None = None,
                   record: dict[int, Tensor] | None = None
                   ) -> tuple[Tensor, Tensor, Tensor | None]:
    """Carry coefficients ``a`` (N or 1, K, *shape of node ``start``) back to the input.

    ``allowances`` memoises every node op's ``rounding_terms`` (its ``(gamma, magnitude)``)
    across calls on the same ``bounds`` (the intermediate-bound passes make many).
    ``betas[i]`` (broadcastable to (N, K, *input shape of node ``i``), single-input nodes) are
    signed Lagrange multipliers ``beta * s`` of split constraints ``s z >= 0`` on node ``i``'s
    input ``z`` (beta-CROWN): the term ``-beta s z`` is non-positive on the split domain, so
    the result still lower-bounds ``<a, node_start>`` there. ``record``, when given, receives
    the coefficients on the output of every nonlinear node passed (for branching scores).

    Returns:
        ``(a_in, const, err)`` with ``<a, node_start> >= <a_in, x> + const - err`` on the box
        ``bounds[0]``; ``err`` (N, K) is the rounding allowance (None unless ``rounding``).
    """
    acc: dict[int, Tensor] = {start: a}
    const = a.new_zeros(a.shape[:2])
    err: Tensor | None = None

    def charge(e: Tensor | None) -> None:
        nonlocal err
        if e is not None:
            err = e if err is None else err + e

    for i in range(start, 0, -1):
        ai = acc.pop(i, None)
        if ai is None:
            continue
        node = graph.nodes[i]
        assert node.op is not None
        ins = [bounds[j] for j in node.inputs]
        if rounding:
            if allowances is not None and i in allowances:
                parts = allowances[i]
            else:
                parts = node.op.rounding_terms(ai.dtype, *ins)
                if allowances is not None:
                    allowances[i] = parts
            if parts is not None:
                charge(parts[0] * abs_dot(ai, parts[1]))
        if record is not None and node.op.nonlinear:
            record[i] = ai
        outs, c = node.op.backward(ai, *ins, slopes=None if slopes is None else slopes.get(i))
        const = const + c
        if betas is not None and i in betas:
            outs, e = _split_terms(outs, betas[i], ins[0], rounding)
            charge(e)
        for j, aj in zip(node.inputs, outs, strict=True):
            if aj is None:
                continue
            if j in acc:
                if rounding:  # the sum of two consumers' coefficients is rounded
                    s = _mag(bounds[j])
                    charge(gamma_of(1, aj.dtype) * (abs_dot(acc[j], s) + abs_dot(aj, s)))
                acc[j] = acc[j] + aj
            else:
                acc[j] = aj
    a_in = acc.get(0)
    if a_in is None:
        a_in = a.new_zeros(a.shape[:2] + graph.input_shape)
    if rounding and err is None:
        err = a.new_zeros(a.shape[:2])
    return a_in, const, err


def _split_terms(outs: list[Tensor | None], beta: Tensor, bound: tuple[Tensor, Tensor],
                 rounding: bool) -> tuple[list[Tensor | None], Tensor | None]:
    """``a - beta`` on a node's one input, with the subtraction's rounding allowance."""
    a = outs[0]
    assert a is not None and len(outs) == 1, "split terms need a single-input node"
    a = a - beta
    if not rounding:
        return [a], None
    lo, hi = bound
    return [a], gamma_of(lo[0].numel() + 4, a.dtype) * abs_dot(a, _mag(bound))


def _concretize(threat: LpBall, x0: Tensor, a: Tensor, const: Tensor,
                err: Tensor | None) -> Tensor:
    from advrobust.relax.crown import _concretize as concretize

    return concretize(threat, x0, a, const, err)


def interval_is_exact(graph: Graph, index: int, threat: LpBall) -> bool:
    """Interval bounds of node ``index`` are exact: a box (linf) through single-input linear
    ops of which at most one mixes coordinates."""
    if threat.norm is not Norm.LINF:
        return False
    seen, todo, mixing = set(), [index], 0
    while todo:
        i = todo.pop()
        if i == 0 or i in seen:
            continue
        seen.add(i)
        op = graph.nodes[i].op
        assert op is not None
        if op.nonlinear or len(graph.nodes[i].inputs) != 1:
            return False
        mixing += op.mixes
        todo.extend(graph.nodes[i].inputs)
    return mixing <= 1


def refine_mask(graph: Graph, index: int, lo: Tensor, hi: Tensor) -> Tensor | None:
    """Bool (N, *shape): node ``index``'s neurons whose bounds its nonlinear consumers'
    relaxations depend on (None when no consumer is nonlinear)."""
    mask = None
    for c in graph.consumers[index]:
        op = graph.nodes[c].op
        assert op is not None
        m = op.refine_mask(lo, hi) if op.nonlinear else None
        if m is not None:
            mask = m if mask is None else mask | m
    return mask


def refine_rows(graph: Graph, x0: Tensor, threat: LpBall, bounds: GraphBounds, index: int,
                part: Tensor, *, rounding: bool,
                allowances: dict[int, Allowance] | None = None) -> Tensor:
    """CROWN lower bounds (N, 2k) of ``+z_part`` then ``-z_part``, z = node ``index``'s output,
    ``part`` (k,) flat neuron indices, the same for every sample: the union pass of both
    drivers (:func:`refine_padded` with one row of neurons shared by the batch)."""
    return refine_padded(graph, x0, threat, bounds, index, part.unsqueeze(0),
                         rounding=rounding, allowances=allowances)


def refine_padded(graph: Graph, x0: Tensor, threat: LpBall, bounds: GraphBounds, index: int,
                  part: Tensor, *, rounding: bool,
                  allowances: dict[int, Allowance] | None = None) -> Tensor:
    """CROWN lower bounds (N, 2k) of ``+z`` then ``-z`` on the neurons ``part`` (N, k), each
    sample's own, or (1, k) shared by the batch (flat indices) of node ``index``.

    When node ``index``'s op has its rows at hand (a dense layer) the pass starts from its
    weight rows on its input (one product skipped, exactly: no rounding to charge); else from
    one-hot rows on ``part`` only (no identity matrix of the layer's size).
    """
    node = graph.nodes[index]
    lo = bounds[index][0]
    n, k = part.shape
    rows = node.op.output_rows(part.flatten(), lo) if node.op is not None and \
        len(node.inputs) == 1 else None
    if rows is not None:
        w, b = rows
        w = w.reshape((n, k) + tuple(w.shape[1:]))
        b = b.reshape(n, k)
        a, const0, start = torch.cat([w, -w], 1), torch.cat([b, -b], 1), node.inputs[0]
    else:
        unit = lo.new_zeros(n, k, lo[0].numel())
        unit.scatter_(2, part.unsqueeze(2), 1.0)
        a = torch.cat([unit, -unit], 1).reshape((n, 2 * k) + tuple(lo.shape[1:]))
        const0, start = lo.new_zeros(n, 2 * k), index
    a_in, const, err = graph_backward(graph, start, a, bounds, rounding=rounding,
                                      allowances=allowances)
    return _concretize(threat, x0, a_in, const + const0, err)


def _refine_by_sample(graph: Graph, x0: Tensor, threat: LpBall, bounds: GraphBounds,
                      index: int, flags: Tensor, lo_f: Tensor, hi_f: Tensor, widest: int,
                      most: int, *, rounding: bool) -> None:
    """``lo_f`` / ``hi_f`` (N, n) tightened in place on each sample's flagged neurons only:
    the samples in groups of similar counts (most first), each sample's neurons padded to
    its group's largest count with its first one, a group's rows ``_PAIR_ELEMENTS`` at most;
    a sample with more neurons than that alone, ``most`` of them at a time (the memory)."""
    counts = flags.sum(1)
    order = counts.argsort(descending=True)
    order = order[counts[order] > 0]
    budget = max(1, _PAIR_ELEMENTS // (2 * widest))  # neurons of a group, all samples
    take = getattr(threat, "take", None)  # a set of per-sample boxes gathers them too

    def run(group: Tensor, part: Tensor, valid: Tensor) -> None:
        k = part.shape[1]
        sub = [(lo[group], hi[group]) for lo, hi in bounds[:index + 1]]
        val = refine_padded(graph, x0[group], take(group) if take is not None else threat,
                            sub, index, part, rounding=rounding)
        rows = group.unsqueeze(1).expand(-1, k)[valid]
        cols = part[valid]
        lo_f[rows, cols] = torch.maximum(lo_f[rows, cols], val[:, :k][valid])
        hi_f[rows, cols] = torch.minimum(hi_f[rows, cols], -val[:, k:][valid])

    at = 0
    while at < order.numel():
        k = int(counts[order[at]])
        if k > budget:  # one sample, its neurons in pieces
            group = order[at:at + 1]
            at += 1
            for piece in flags[group[0]].nonzero().flatten().split(max(1, most)):
                run(group, piece.unsqueeze(0), torch.ones(1, piece.numel(), dtype=torch.bool,
                                                          device=piece.device))
            continue
        group = order[at:at + budget // k]
        group = group[counts[group] * 10 >= 7 * k]  # (a prefix: counts descend) little padding
        at += group.numel()
        mine = flags[group]
        # each sample's flagged neurons first (in order), then the rest
        part = torch.argsort(mine.to(torch.int8), dim=1, descending=True, stable=True)[:, :k]
        valid = torch.arange(k, device=part.device) < mine.sum(1, keepdim=True)
        run(group, torch.where(valid, part, part[:, :1]), valid)  # padding: its first neuron


def refine_dense(graph: Graph, x0: Tensor, threat: LpBall, bounds: GraphBounds, index: int,
                 mask: Tensor, chunk: int, *, rounding: bool,
                 allowances: dict[int, Allowance] | None = None) -> tuple[Tensor, Tensor]:
    """Node ``index``'s bounds intersected with CROWN's on the neurons ``mask`` (N, *shape)
    flags per sample: the pass of the union of the flagged neurons for every sample, ``chunk``
    neurons at a time, or, for a batch whose union pass is large (``_UNION_ELEMENTS``), each
    sample's own neurons (:func:`_refine_by_sample`): then a neuron a
    sample does not flag keeps its interval bounds there (its relaxation does not read them)
    and every sample gets the bounds it gets alone."""
    lo, hi = bounds[index]
    n = x0.shape[0]
    flags = mask.flatten(1)
    idx = flags.any(0).nonzero().flatten()
    lo_f, hi_f = lo.flatten(1).clone(), hi.flatten(1).clone()
    widest = max(b[0][0].numel() for b in bounds[:index + 1])
    if n > 1 and n * idx.numel() * 2 * widest > _UNION_ELEMENTS:
        _refine_by_sample(graph, x0, threat, bounds, index, flags, lo_f, hi_f, widest,
                          chunk * n, rounding=rounding)
        return lo_f.reshape(lo.shape), hi_f.reshape(hi.shape)
    for part in idx.split(chunk):
        k = part.numel()
        val = refine_rows(graph, x0, threat, bounds, index, part, rounding=rounding,
                          allowances=allowances)
        lo_f[:, part] = torch.maximum(lo_f[:, part], val[:, :k])
        hi_f[:, part] = torch.minimum(hi_f[:, part], -val[:, k:])
    return lo_f.reshape(lo.shape), hi_f.reshape(hi.shape)


def _refine(graph: Graph, x0: Tensor, threat: LpBall, bounds: GraphBounds, index: int,
            rounding: bool, allowances: dict[int, Allowance]) -> tuple[Tensor, Tensor]:
    """CROWN bounds of node ``index`` on the neurons its nonlinear consumers need,
    intersected with the interval bounds."""
    lo, hi = bounds[index]
    mask = refine_mask(graph, index, lo, hi)
    if mask is None or interval_is_exact(graph, index, threat):
        return lo, hi
    if not bool(mask.any()):
        return lo, hi
    n = x0.shape[0]
    widest = max(b[0][0].numel() for b in bounds[:index + 1])
    chunk = max(1, _MAX_ELEMENTS // (2 * n * widest))
    return refine_dense(graph, x0, threat, bounds, index, mask, chunk, rounding=rounding,
                        allowances=allowances)


def graph_crown_bounds(graph: Graph, x0: Tensor, threat: LpBall, *,
                       intermediate: str = "crown", rounding: bool = False) -> GraphBounds:
    """Bounds of every node; nodes that feed a nonlinear op get CROWN bounds (intersected with
    their interval bounds) unless ``intermediate="ibp"``."""
    lower, upper = threat.input_bounds(x0)
    if intermediate == "ibp":
        return graph_interval_bounds(graph, lower, upper, rounding=rounding)
    if intermediate != "crown":
        raise ValueError(f"'intermediate' must be 'crown' or 'ibp'. Got {intermediate!r}.")
    bounds: GraphBounds = [(lower, upper)]
    allowances: dict[int, Allowance] = {}
    for i, node in enumerate(graph.nodes[1:], start=1):
        assert node.op is not None
        ins = [bounds[j] for j in node.inputs]
        bounds.append(node.op.sound_interval(*ins) if rounding else node.op.interval(*ins))
        if graph.needs_bounds(i):
            bounds[i] = _refine(graph, x0, threat, bounds, i, rounding, allowances)
    return bounds


def graph_crown_lower(graph: Graph, x0: Tensor, threat: LpBall, c: Tensor,
                      d: Tensor | None = None, *, bounds: GraphBounds | None = None,
                      slopes: Mapping[int, Tensor] | None = None, intermediate: str = "crown",
                      rounding: bool = False) -> Tensor:
    """CROWN lower bounds (N, K) of ``C f(x) + d`` over the threat set around ``x0``.

    Args:
        graph: the IR.
        x0: (N, *input_shape) centres.
        threat: the set.
        c: (N, K, num_outputs) spec rows; d: optional (N, K) offsets.
        bounds: precomputed node bounds (else computed with ``intermediate``).
        slopes: optional optimisable slopes per node index (alpha-CROWN).
        rounding: subtract the rounding allowances (sound in floating point).
    """
    from advrobust.relax._rounding import add_offset

    if bounds is None:
        bounds = graph_crown_bounds(graph, x0, threat, intermediate=intermediate,
                                    rounding=rounding)
    a = c.to(x0.dtype).reshape(c.shape[:2] + graph.output_shape)
    a_in, const, err = graph_backward(graph, graph.output, a, bounds, slopes=slopes,
                                      rounding=rounding)
    lower = _concretize(threat, x0, a_in, const, err)
    if d is None:
        return lower
    return add_offset(lower, d) if rounding else lower + d.to(lower.dtype)


def graph_spec_interval(graph: Graph, bounds: GraphBounds, c: Tensor, *,
                        rounding: bool = False) -> tuple[Tensor, Tensor]:
    """Interval of ``C f`` with ``C`` folded into the output node's op when it is linear.

    Returns:
        (N, K) lower and upper bounds.
    """
    out = graph.nodes[graph.output]
    a = c.to(bounds[0][0].dtype).reshape(c.shape[:2] + graph.output_shape)
    if out.op is not None and not out.op.nonlinear:
        ins = [bounds[j] for j in out.inputs]
        coeffs, const = out.op.backward(a, *ins)
        err = out.op.rounding(a, *ins) if rounding else None
        pairs = [(cj, bounds[j]) for j, cj in zip(out.inputs, coeffs, strict=True)
                 if cj is not None]
    else:
        const, err, pairs = a.new_zeros(a.shape[:2]), None, [(a, bounds[graph.output])]
    centre, spread = const, torch.zeros_like(const)
    for cj, (lo, hi) in pairs:
        af = cj.flatten(2)
        mid = ((hi + lo) / 2).flatten(1).unsqueeze(2)
        rad = ((hi - lo) / 2).flatten(1).unsqueeze(2)
        centre = centre + torch.matmul(af, mid).squeeze(2)
        spread = spread + torch.matmul(af.abs(), rad).squeeze(2)
        if rounding:
            e = input_gamma(af.shape[2] + len(pairs), lo.dtype) * abs_dot(cj, _mag((lo, hi)))
            err = e if err is None else err + e
    if rounding:
        e = input_gamma(len(pairs) + 1, const.dtype) * const.abs()
        err = e if err is None else err + e
        spread = spread + err
    return centre - spread, centre + spread


def optimize_slopes(graph: Graph, x0: Tensor, threat: LpBall, spec: Spec, bounds: GraphBounds,
                    steps: int, lr: float) -> Tensor:
    """alpha-CROWN on the final bound: Adam on every optimisable slope (ReLU, LeakyReLU lower
    lines); the best bound per row over the steps is kept (each step's bound is sound)."""
    c = spec.C.to(x0.dtype)
    slopes: dict[int, Tensor] = {}
    for i, node in enumerate(graph.nodes[1:], start=1):
        assert node.op is not None
        if node.op.nonlinear and len(node.inputs) == 1:
            init = node.op.init_slopes(*bounds[node.inputs[0]], c.shape[1])
            if init is not None:
                slopes[i] = init.requires_grad_(True)

    def bound(with_slopes: bool) -> Tensor:
        return graph_crown_lower(graph, x0, threat, c, spec.d, bounds=bounds, rounding=True,
                                 slopes=slopes if with_slopes else None)

    with torch.no_grad():
        best = bound(False)
    if not slopes:
        return best
    opt = torch.optim.Adam(list(slopes.values()), lr=lr)
    for _ in range(steps):
        with torch.enable_grad():
            lower = bound(True)
            opt.zero_grad()
            (-lower.sum()).backward()
        opt.step()
        with torch.no_grad():
            for i, v in slopes.items():
                graph.nodes[i].op.clamp_slopes(v, *bounds[graph.nodes[i].inputs[0]])  # type: ignore[union-attr]
        best = torch.maximum(best, lower.detach())
    with torch.no_grad():
        return torch.maximum(best, bound(True))
