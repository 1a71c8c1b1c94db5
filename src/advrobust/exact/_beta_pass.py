"""The bound passes of beta-CROWN (:mod:`advrobust.exact._beta`) over a batch of split domains.

A domain's bound is the alpha-CROWN back-substitution (:func:`~advrobust.relax.alpha_crown.
linear_pass`) under the root's intermediate bounds clamped by its splits (:meth:`BetaPasses.
clamped`; optionally re-bounded above the splits, :meth:`BetaPasses.tightened`), with the split
constraints' multipliers in the Lagrangian.

Chains and graphs (residual additions, concatenations, ...) whose only nonlinear nodes are ReLUs
share the code: a ReLU is keyed by its node index - 1 (a chain's op position), its split
constraints act on its input node's bounds. On a chain the pass runs with the batch's ReLU
relaxations precomputed once per batch; on a graph it is the graph pass
(:func:`~advrobust.relax.dag.graph_backward`, with split multipliers and recorded coefficients)
with every node's rounding terms taken once from the root's bounds (they enclose every
domain's, and the terms grow with the bounds).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from advrobust.core.threat import LpBall
from advrobust.exact._domains import _Relu
from advrobust.exact._twin import Float32Twin
from advrobust.network.graph import Graph
from advrobust.network.ir import Network
from advrobust.relax._alpha_parts import by_node
from advrobust.relax._rounding import abs_dot, add_offset, op_gamma
from advrobust.relax.alpha_crown import concretize, linear_pass
from advrobust.relax.dag import Allowance, graph_backward
from advrobust.relax.ibp import LayerBounds

__all__ = ["BetaPasses"]


class BetaPasses:
    """The passes of :class:`~advrobust.exact._beta.BetaBounder` (a mixin: the bounder's
    constructor sets the attributes below)."""

    net: Network | Graph
    x0: Tensor
    threat: LpBall
    graph: Graph
    chain: bool
    relus: list[int]
    graph_ops: list
    src: dict[int, int]
    readers: dict[int, list[int]]
    c: Tensor
    d: Tensor
    root: LayerBounds
    domain_bounds: bool
    inter_alphas: dict[int, tuple[Tensor, dict[int, Tensor]]]
    fast: Float32Twin | None
    sizes: list[int]
    mags: dict[int, Tensor]
    allow: dict[int, Allowance]

    def _terms(self, i: int, bounds: LayerBounds) -> Allowance:
        op = self.graph.nodes[i].op
        assert op is not None
        return op.rounding_terms(self.x0.dtype, *(bounds[j] for j in self.graph.nodes[i].inputs))


    def clamped(self, split: dict[int, Tensor]) -> LayerBounds:
        """Root bounds (B, ...) with every split neuron's bound set to 0 on its side."""
        b = next(iter(split.values())).shape[0]
        out: LayerBounds = []
        for i, (lo, hi) in enumerate(self.root):
            lo_b = lo.expand((b,) + tuple(lo.shape[1:]))
            hi_b = hi.expand((b,) + tuple(hi.shape[1:]))
            for j in self.readers.get(i, ()):
                s = split[j].reshape(lo_b.shape)
                lo_b = torch.where(s > 0, lo_b.clamp_min(0), lo_b)
                hi_b = torch.where(s < 0, hi_b.clamp_max(0), hi_b)
            out.append((lo_b, hi_b))
        return out

    def tightened(self, split: dict[int, Tensor]) -> tuple[LayerBounds, Tensor]:
        """The split-clamped root bounds (:meth:`clamped`), with the ReLU inputs above each
        domain's lowest split re-bounded on the domain (when ``domain_bounds``), and a (B,)
        mask of domains proved empty (some neuron's bounds crossed: no point satisfies the
        splits).

        Layer by layer upwards, every neuron unstable in some domain of the batch gets one
        back-substitution of ``+-z`` through the domain's (already tightened) bounds below it,
        with the root's optimised slopes of that neuron's rows, and the rounding allowances of
        :func:`~advrobust.relax.alpha_crown.linear_pass`; the result is intersected with the
        clamped bounds (both enclose the domain's values), so the splits' clamps stay.
        """
        bounds = self.clamped(split)
        b = next(iter(split.values())).shape[0]
        empty = torch.zeros(b, dtype=torch.bool)
        if not self.domain_bounds:
            return bounds, empty
        # per domain, the position (in self.relus) of its lowest split
        has = torch.stack([split[j].any(1) for j in self.relus], 1)  # (B, L)
        lowest = torch.where(has.any(1), has.to(torch.int8).argmax(1),
                             torch.full((b,), len(self.relus)))
        for pos, key in enumerate(self.relus):  # in topological order
            need = (lowest < pos).nonzero().flatten()
            if need.numel() == 0:
                continue
            self._rebound(bounds, self.src[key], need)
        for j in self.relus:
            lo, hi = bounds[self.src[j]]
            empty |= (lo > hi).flatten(1).any(1)
        return bounds, empty

    def _rebound(self, bounds: LayerBounds, k: int, need: Tensor) -> None:
        """:meth:`tightened`'s step for one ReLU input node ``k``: re-bound its neurons unstable
        in some domain of ``need`` (indices into the batch) on those domains, in place."""
        lo, hi = bounds[k]
        lo_f, hi_f = lo.flatten(1), hi.flatten(1)
        if k in self.inter_alphas:
            idx, alphas = self.inter_alphas[k]
        else:
            idx, alphas = torch.arange(lo_f.shape[1]), {}
        unstable = ((lo_f[need][:, idx] < 0) & (hi_f[need][:, idx] > 0)).any(0)
        sel = unstable.nonzero().flatten()
        if sel.numel() == 0:
            return
        u, m = idx.numel(), sel.numel()
        keep = torch.cat([sel, sel + u])
        al = {j: v[:, keep] for j, v in alphas.items()} if alphas else None
        neurons = idx[sel]
        rows = lo.new_zeros(2 * m, lo_f.shape[1])
        ar = torch.arange(m)
        rows[ar, neurons] = 1.0
        rows[ar + m, neurons] = -1.0
        rows = rows.reshape((1, 2 * m) + tuple(lo.shape[1:]))
        widest = max(v[0][0].numel() for v in bounds[:k])
        chunk = max(1, (1 << 23) // (2 * m * widest))
        new_lo, new_hi = lo_f[need][:, neurons], hi_f[need][:, neurons]
        for start in range(0, need.numel(), chunk):
            part = need[start:start + chunk]
            sub = [(v_lo[part], v_hi[part]) for v_lo, v_hi in bounds[:k]]
            a, const, err = self._back(rows, k, sub, al)
            x0 = self.x0.expand((part.numel(),) + tuple(self.x0.shape[1:]))
            val = concretize(self.threat, x0, a, const, err).nan_to_num(nan=-math.inf)
            sl = slice(start, start + part.numel())
            new_lo[sl] = torch.maximum(new_lo[sl], val[:, :m])
            new_hi[sl] = torch.minimum(new_hi[sl], -val[:, m:])
        lo_f, hi_f = lo_f.clone(), hi_f.clone()
        lo_f[need.unsqueeze(1), neurons.unsqueeze(0)] = new_lo
        hi_f[need.unsqueeze(1), neurons.unsqueeze(0)] = new_hi
        bounds[k] = (lo_f.reshape(lo.shape), hi_f.reshape(hi.shape))

    def _back(self, a: Tensor, stop: int, bounds: LayerBounds,
              alphas: dict[int, Tensor] | None, betas: dict[int, Tensor] | None = None,
              record: dict[int, Tensor] | None = None, sound: bool = True,
              graph: Graph | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Back-substitute ``a`` from node ``stop`` (mappings keyed by ReLU key): the chain's
        :func:`~advrobust.relax.alpha_crown.linear_pass`, or the graph pass with the root's
        rounding terms (without them, and without any allowance, unless ``sound``)."""
        if self.chain:
            return linear_pass(self.net, a, stop, bounds, alphas, betas, record, self.mags)
        seen: dict[int, Tensor] | None = None if record is None else {}
        a_in, const, err = graph_backward(
            self.graph if graph is None else graph, stop, a, bounds, slopes=by_node(alphas),
            rounding=sound, allowances=dict(self.allow), betas=by_node(betas), record=seen)
        if record is not None and seen is not None:
            record.update({i - 1: v for i, v in seen.items()})
        return a_in, const, a.new_zeros(a.shape[:2]) if err is None else err

    def _relus(self, bounds: LayerBounds) -> dict[int, _Relu]:
        if not self.chain:
            return {}
        return {j: _Relu.of(*bounds[j]) for j in self.relus}

    def _pass(self, bounds: LayerBounds, split: dict[int, Tensor], alpha: dict[int, Tensor],
              beta: dict[int, Tensor], row: Tensor, record: dict[int, Tensor] | None = None,
              relus: dict[int, _Relu] | None = None, sound: bool = True, fast: bool = False
              ) -> tuple[Tensor, Tensor]:
        """Lower bounds (B,) and the input coefficients (B, D) of one pass.

        The back-substitution of :func:`~advrobust.relax.alpha_crown.linear_pass` (same
        relaxation, split terms and rounding allowances), with what does not change between
        optimisation steps (``relus``) computed once per batch. ``sound=False`` leaves out the
        layers' rounding allowances (~1e-12 relative in float64; a quarter of a step's time):
        for the optimisation steps, whose values only pick the parameters; the bound itself
        always comes from a sound pass. ``fast`` (not sound; needs :attr:`fast`): the
        back-substitution in float32 (``bounds``, ``relus``, ``alpha`` and ``beta`` float32
        too), concretised in float64.
        """
        assert not (fast and (sound or self.fast is None))
        if not isinstance(self.net, Network):
            return self._graph_pass(bounds, split, alpha, beta, row, record, sound, fast)
        a, const, err = self._chain_back(bounds, split, alpha, beta, row, record, relus,
                                         sound, fast)
        x0 = self.x0.expand((row.shape[0],) + tuple(self.x0.shape[1:]))
        if fast:
            a, const, err = a.to(x0.dtype), const.to(x0.dtype), err.to(x0.dtype)
        value = concretize(self.threat, x0, a, const, err)[:, 0]
        return add_offset(value, self.d[row]), a.flatten(2)[:, 0]

    def _chain_back(self, bounds: LayerBounds, split: dict[int, Tensor],
                    alpha: dict[int, Tensor], beta: dict[int, Tensor], row: Tensor,
                    record: dict[int, Tensor] | None = None,
                    relus: dict[int, _Relu] | None = None, sound: bool = True,
                    fast: bool = False, start: tuple[int, Tensor, Tensor] | None = None,
                    consts: dict[int, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`_pass`'s back-substitution on a chain: the input coefficients
        (B, 1, *input_shape), the constant and the rounding allowance (B, 1), in float32 when
        ``fast``. ``record`` / ``consts`` get the coefficient entering each ReLU (B, 1,
        *shape) and the constant so far; ``start`` (op, coefficients, constant) starts the
        pass at that op (included) with those, instead of at the output with the spec rows."""
        assert isinstance(self.net, Network)
        b = row.shape[0]
        relus = self._relus(bounds) if relus is None else relus
        ops = self.fast.graph_ops if fast and self.fast is not None else self.graph_ops
        if start is None:
            top = len(self.net.ops) - 1
            a = (self.fast.c if fast and self.fast is not None else self.c)[row].unsqueeze(1)
            const = a.new_zeros(a.shape[:2])
        else:
            top, a, const = start
        err = a.new_zeros(a.shape[:2])
        for j in reversed(range(top + 1)):
            op = self.net.ops[j]
            if j in relus:
                rel = relus[j]
                shape = (b, 1) + tuple(self.root[j][0].shape[1:])
                if record is not None:
                    record[j] = a
                if consts is not None:
                    consts[j] = const
                if sound:
                    err = err + rel.gamma * abs_dot(a, rel.mag)
                a, c = rel.backward(a, alpha[j].reshape(shape))
                if bool(split[j].any()):
                    a = a - (beta[j] * split[j].to(beta[j].dtype)).reshape(shape)
                    if sound:
                        err = err + rel.gamma * abs_dot(a, rel.beta_mag)
            else:  # a linear op (check_chain: every nonlinear op is a ReLU of `relus`)
                if sound and j in self.mags:
                    mag = self.mags[j]
                    err = err + op_gamma(op, a.dtype) * abs_dot(a, mag.expand(
                        (b,) + tuple(mag.shape[1:])))
                (back,), c = ops[j].backward(a)
                assert back is not None
                a = back
            const = const + c
        return a, const, err

    def _graph_pass(self, bounds: LayerBounds, split: dict[int, Tensor],
                    alpha: dict[int, Tensor], beta: dict[int, Tensor], row: Tensor,
                    record: dict[int, Tensor] | None, sound: bool, fast: bool = False
                    ) -> tuple[Tensor, Tensor]:
        """:meth:`_pass` on a graph: the graph pass with the domains' slopes and signed
        multipliers (B, 1, *shape) on every ReLU (``fast``: on the float32 copy)."""
        b = row.shape[0]
        shape = {j: (b, 1) + tuple(self.root[self.src[j]][0].shape[1:]) for j in self.relus}
        alphas = {j: alpha[j].reshape(shape[j]) for j in self.relus}
        betas = {j: (beta[j] * split[j].to(beta[j].dtype)).reshape(shape[j])
                 for j in self.relus if bool(split[j].any())}
        graph = self.fast.graph if fast and self.fast is not None else None
        c = self.fast.c if fast and self.fast is not None else self.c
        a = c[row].reshape((b, 1) + tuple(self.graph.output_shape))
        a_in, const, err = self._back(a, self.graph.output, bounds, alphas, betas, record,
                                      sound, graph)
        x0 = self.x0.expand((b,) + tuple(self.x0.shape[1:]))
        if fast:
            a_in, const, err = a_in.to(x0.dtype), const.to(x0.dtype), err.to(x0.dtype)
        value = concretize(self.threat, x0, a_in, const, err)[:, 0]
        return add_offset(value, self.d[row]), a_in.flatten(2)[:, 0]

