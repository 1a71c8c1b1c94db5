"""beta-CROWN bounds of batches of split domains (Wang et al. 2021, "Beta-CROWN: efficient bound
propagation with per-neuron split constraints for neural network robustness verification").

A domain fixes the sign of some unstable ReLU inputs (``z >= 0``: active, ``z <= 0``:
inactive). Its bound is the alpha-CROWN back-substitution (:func:`~advrobust.relax.alpha_crown.
linear_pass`) under the root's intermediate bounds clamped by the splits (the domain is a subset
of the root, so they stay valid), with the split constraints in the Lagrangian: a term
``-beta s z`` (``s = +1`` active, ``-1`` inactive, ``beta >= 0``) is non-positive on the domain,
so any ``beta`` gives a sound bound, and optimising it (with the slopes ``alpha``) lets the
constraints act on every layer, not only on the split neuron's relaxation. ``beta = 0`` is
exactly alpha-CROWN on the split domain; the best step is kept, so the optimised bound is not
below the starting one (up to the rounding of the steps' values: they run on a float32 copy of
the network, :class:`~advrobust.exact._twin.Float32Twin`; the one sound pass that gives the
bound is float64). Domains are bounded in batches: one row of the spec, one set of slopes and
multipliers per domain; children inherit their parent's (warm start).

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
import time

import torch
from torch import Tensor

from advrobust.core.threat import LpBall
from advrobust.exact._branching import babsr_scores
from advrobust.exact._domains import _STORE, Domains, OptState, _Relu
from advrobust.exact._twin import Float32Twin
from advrobust.network.graph import Graph
from advrobust.network.graph.graph import as_graph
from advrobust.network.ir import Network
from advrobust.relax._rounding import (
    abs_dot,
    add_offset,
    magnitude,
    op_gamma,
)
from advrobust.relax.alpha_crown import Adam, check_branchable, concretize, linear_pass
from advrobust.relax.dag import Allowance, graph_backward
from advrobust.relax.ibp import LayerBounds

__all__ = ["BetaBounder", "Domains", "OptState"]


class BetaBounder:
    """Optimised (alpha, beta) bounds of domains of one sample's spec rows.

    Args:
        network: a chain IR or a graph whose nonlinear nodes are all ReLUs (float64).
        x0: (1, *input_shape) centre.
        threat: the set.
        c: (R, num_outputs) rows; d: (R,) offsets.
        root: sound bounds of every node's output over the whole set (alpha-CROWN's; on a
            chain, of every op's input).
        steps, lr_alpha, lr_beta: Adam steps and learning rates per batch.
        domain_bounds: re-bound, per domain, the inputs of the ReLUs above its splits (one
            CROWN pass per layer under the split-clamped bounds below it, intersected with
            the root's): a split makes later neurons stable, which no multiplier can do.
        keep_state: keep each domain's Adam state (:class:`OptState`) and continue it in its
            children; off: every batch starts a fresh optimiser.
        lr_decay: with ``keep_state``, both rates times ``lr_decay ** (t - 1)`` at a domain's
            step ``t`` (counted over its generations).
        inter_alphas: slopes for those passes (:attr:`AlphaResult.inter_alphas` of the root;
            layers without any get CROWN's adaptive slopes).
    """

    def __init__(self, network: Network | Graph, x0: Tensor, threat: LpBall, c: Tensor, d: Tensor,
                 root: LayerBounds, *, steps: int = 10, lr_alpha: float = 0.1,
                 lr_beta: float = 0.05, domain_bounds: bool = False, keep_state: bool = True,
                 lr_decay: float = 1.0,
                 inter_alphas: dict[int, tuple[Tensor, dict[int, Tensor]]] | None = None
                 ) -> None:
        self.net, self.x0, self.threat = network, x0, threat
        self.graph, self.chain = as_graph(network), isinstance(network, Network)
        self.relus = check_branchable(network)
        # the registered ops (the linear steps of a chain pass)
        self.graph_ops = network.graph_ops if isinstance(network, Network) else []
        # the node whose output each ReLU reads (its splits clamp that node's bounds)
        self.src = {j: self.graph.nodes[j + 1].inputs[0] for j in self.relus}
        self.readers: dict[int, list[int]] = {}
        for j in self.relus:
            self.readers.setdefault(self.src[j], []).append(j)
        self.c, self.d = c.to(x0.dtype), d.to(x0.dtype)
        self.root = root
        self.steps, self.lr_alpha, self.lr_beta = steps, lr_alpha, lr_beta
        self.domain_bounds = domain_bounds
        self.keep_state, self.lr_decay = keep_state, lr_decay
        self.inter_alphas = inter_alphas or {}
        self.fast = Float32Twin.of(network, self.c, root)
        self.sizes = [root[self.src[j]][0][0].numel() for j in self.relus]
        # term magnitudes of the affine ops over the root's bounds (they hold in every domain)
        self.mags = {i: magnitude(op, *root[i]) for i, op in enumerate(network.ops)
                     if i not in self.relus and op_gamma(op, x0.dtype) > 0} \
            if isinstance(network, Network) else {}
        # graphs: every node's rounding terms over the root's bounds (sound in every domain)
        self.allow: dict[int, Allowance] = {} if self.chain else {
            i: self._terms(i, root) for i in range(1, len(self.graph.nodes))}

    def _terms(self, i: int, bounds: LayerBounds) -> Allowance:
        op = self.graph.nodes[i].op
        assert op is not None
        return op.rounding_terms(self.x0.dtype, *(bounds[j] for j in self.graph.nodes[i].inputs))

    # ------------------------------------------------------------------ bounds
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
            k = self.src[key]
            lo, hi = bounds[k]
            lo_f, hi_f = lo.flatten(1), hi.flatten(1)
            if k in self.inter_alphas:
                idx, alphas = self.inter_alphas[k]
            else:
                idx, alphas = torch.arange(lo_f.shape[1]), {}
            unstable = ((lo_f[need][:, idx] < 0) & (hi_f[need][:, idx] > 0)).any(0)
            sel = unstable.nonzero().flatten()
            if sel.numel() == 0:
                continue
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
        for j in self.relus:
            lo, hi = bounds[self.src[j]]
            empty |= (lo > hi).flatten(1).any(1)
        return bounds, empty

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
            self.graph if graph is None else graph, stop, a, bounds, slopes=_by_node(alphas),
            rounding=sound, allowances=dict(self.allow), betas=_by_node(betas), record=seen)
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
        b = row.shape[0]
        assert not (fast and (sound or self.fast is None))
        if not isinstance(self.net, Network):
            return self._graph_pass(bounds, split, alpha, beta, row, record, sound, fast)
        relus = self._relus(bounds) if relus is None else relus
        ops = self.fast.graph_ops if fast and self.fast is not None else self.graph_ops
        a = (self.fast.c if fast and self.fast is not None else self.c)[row].unsqueeze(1)
        const = a.new_zeros(a.shape[:2])
        err = a.new_zeros(a.shape[:2])
        for j in reversed(range(len(self.net.ops))):
            op = self.net.ops[j]
            if j in relus:
                rel = relus[j]
                shape = (b, 1) + tuple(self.root[j][0].shape[1:])
                if record is not None:
                    record[j] = a
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
        x0 = self.x0.expand((b,) + tuple(self.x0.shape[1:]))
        if fast:
            a, const, err = a.to(x0.dtype), const.to(x0.dtype), err.to(x0.dtype)
        value = concretize(self.threat, x0, a, const, err)[:, 0]
        return add_offset(value, self.d[row]), a.flatten(2)[:, 0]

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

    def bound(self, split: dict[int, Tensor], alpha: dict[int, Tensor],
              beta: dict[int, Tensor], row: Tensor, floor: Tensor | None = None,
              steps: int | None = None, deadline: float = math.inf,
              state: OptState | None = None) -> tuple[Domains, Tensor]:
        """Optimise slopes and multipliers of B domains; the best sound bound of each.

        Args:
            split, alpha, beta: per ReLU index (B, n) (the starting point: the parent's).
            row: (B,) spec rows.
            floor: (B,) sound bounds already known (the parent's): the result is never below.
            steps: Adam steps (default: the bounder's).
            deadline: ``time.perf_counter()`` value after which no further step starts (the
                bounds so far are sound).
            state: the domains' Adam state (their parents', :meth:`child_state`); None: fresh.
                Used and returned when the bounder keeps states (``keep_state``).

        Returns:
            The bounded domains (with branching scores), and (B, D) input coefficients of the
            best pass (their box minimiser is a counterexample candidate).
        """
        steps = self.steps if steps is None else steps
        bounds, empty = self.tightened(split)
        relus = self._relus(bounds)
        dtype = self.x0.dtype
        # the steps' passes: float32 on a chain that has a float32 twin (they only choose)
        fast = self.fast is not None and steps > 0
        o_bounds, o_relus, o_dtype = bounds, relus, dtype
        if fast:
            o_dtype = torch.float32
            o_bounds = [(lo.to(o_dtype), hi.to(o_dtype)) for lo, hi in bounds]
            o_relus = self._relus(o_bounds)
        al = {j: alpha[j].to(o_dtype).clone().requires_grad_(True) for j in self.relus}
        be = {j: beta[j].to(o_dtype).clone().requires_grad_(True) for j in self.relus}
        groups = [(list(al.values()), self.lr_alpha)]
        if any(bool(split[j].any()) for j in self.relus):
            groups.append((list(be.values()), self.lr_beta))
        opt = Adam(groups)
        st = None
        if self.keep_state:
            st = (state if state is not None else OptState.zeros(alpha)).map(
                lambda v: v.to(o_dtype).clone())
            live = {j: (split[j] != 0).to(o_dtype) for j in self.relus}
        b = row.shape[0]
        best = torch.full((b,), -math.inf, dtype=dtype)  # of the steps' (unsound) values
        best_al = {j: v.detach().clone() for j, v in al.items()}
        best_be = {j: v.detach().clone() for j, v in be.items()}
        for _ in range(steps):
            if time.perf_counter() >= deadline:
                break
            with torch.enable_grad():
                lower, _ = self._pass(o_bounds, split, al, be, row, relus=o_relus,
                                      sound=False, fast=fast)
                with torch.no_grad():
                    self._keep(lower.detach(), best, al, be, best_al, best_be)
                if st is None:
                    opt.step(lower.clamp(max=1e8).sum())
                else:
                    self._state_step(st, lower.clamp(max=1e8).sum(), al, be, live,
                                     len(groups) > 1)
            with torch.no_grad():
                for v in al.values():
                    v.clamp_(0.0, 1.0)
                for v in be.values():
                    v.clamp_(min=0.0)
        record: dict[int, Tensor] = {}
        with torch.no_grad():
            if steps:
                lower, _ = self._pass(o_bounds, split, al, be, row, relus=o_relus,
                                      sound=False, fast=fast)
                self._keep(lower, best, al, be, best_al, best_be)
            # one sound pass (float64) with the best parameters: the bound, and its
            # coefficients give scores and a corner
            best_al = {j: v.to(dtype) for j, v in best_al.items()}
            best_be = {j: v.to(dtype) for j, v in best_be.items()}
            best, coef = self._pass(bounds, split, best_al, best_be, row, record, relus)
            for j in self.relus:  # a ReLU no path to the output passes: coefficients 0
                if j not in record:
                    record[j] = coef.new_zeros((b, 1, self.sizes[self.relus.index(j)]))
            if floor is not None:
                best = torch.maximum(best, floor.to(dtype))
            best = best.nan_to_num(nan=-math.inf).masked_fill(empty, math.inf)
            scores = [babsr_scores(record[j].flatten(2)[:, 0],
                                   bounds[self.src[j]][0].flatten(1),
                                   bounds[self.src[j]][1].flatten(1), best_al[j].flatten(1))
                      for j in self.relus]
            lam = torch.cat([record[j].flatten(2)[:, 0] for j in self.relus], dim=1)
        dom = Domains(split, {j: v.to(_STORE) for j, v in best_al.items()},
                      {j: v.to(_STORE) for j, v in best_be.items()}, best,
                      torch.cat(scores, dim=1).to(_STORE), row, lam.to(_STORE),
                      None if st is None else st.map(lambda v: v.to(_STORE)))
        return dom, coef

    def _state_step(self, st: OptState, objective: Tensor, al: dict[int, Tensor],
                    be: dict[int, Tensor], live: dict[int, Tensor], with_beta: bool) -> None:
        """One Adam step of every domain from its own state (the domains' bounds are
        separate terms of ``objective``, so its gradient is each domain's own)."""
        params = list(al.values()) + (list(be.values()) if with_beta else [])
        grads = torch.autograd.grad(objective, params, allow_unused=True)
        n = len(al)
        with torch.no_grad():
            st.t.add_(1)
            st.step(al, dict(zip(al, grads[:n], strict=True)), self.lr_alpha, "alpha",
                    decay=self.lr_decay)
            if with_beta:
                for j in self.relus:
                    st.t_beta[j].add_(live[j])
                st.step(be, dict(zip(be, grads[n:], strict=True)), self.lr_beta, "beta",
                        decay=self.lr_decay)

    @staticmethod
    def _keep(lower: Tensor, best: Tensor, al: dict[int, Tensor], be: dict[int, Tensor],
              best_al: dict[int, Tensor], best_be: dict[int, Tensor]) -> None:
        better = lower > best
        best.copy_(torch.where(better, lower, best))
        for j in al:
            m = better.reshape((-1,) + (1,) * (al[j].dim() - 1))
            best_al[j].copy_(torch.where(m, al[j].detach(), best_al[j]))
            best_be[j].copy_(torch.where(m, be[j].detach(), best_be[j]))

    def quick(self, split: dict[int, Tensor], alpha: dict[int, Tensor],
              beta: dict[int, Tensor], row: Tensor) -> Tensor:
        """One pass, no optimisation: (B,) bounds that only rank split candidates (filtered
        smart branching): float32 without allowances on a chain with a float32 twin, else
        sound."""
        with torch.no_grad():
            bounds = self.clamped(split)
            if self.fast is not None:
                f32 = torch.float32
                low = [(lo.to(f32), hi.to(f32)) for lo, hi in bounds]
                al = {j: v.to(f32) for j, v in alpha.items()}
                be = {j: v.to(f32) for j, v in beta.items()}
                value = self._pass(low, split, al, be, row, sound=False, fast=True)[0]
            else:
                al = {j: v.to(self.x0.dtype) for j, v in alpha.items()}
                be = {j: v.to(self.x0.dtype) for j, v in beta.items()}
                value = self._pass(bounds, split, al, be, row)[0]
            return value.nan_to_num(nan=-math.inf)

    # ------------------------------------------------------------------ splits
    def child_state(self, dom: Domains, neuron: Tensor) -> OptState | None:
        """The Adam state of :meth:`children`'s children (inactive copies, then active
        copies): each continues its parent's. The new split's multiplier starts with fresh
        moments and count: an unsplit neuron's multiplier has no gradient (its term is
        ``beta * 0``) and its count advances only while split, so they are still 0."""
        if dom.state is None:
            return None
        return dom.state.map(lambda v: v.repeat((2,) + (1,) * (v.dim() - 1)))

    def locate(self, flat: Tensor) -> list[tuple[int, Tensor, Tensor]]:
        """(ReLU index, positions in ``flat``, neuron within the layer) per layer."""
        out, offset = [], 0
        for j, size in zip(self.relus, self.sizes, strict=True):
            rows = ((flat >= offset) & (flat < offset + size)).nonzero().flatten()
            out.append((j, rows, flat[rows] - offset))
            offset += size
        return out

    def children(self, dom: Domains, neuron: Tensor, *, warm: bool = True
                 ) -> tuple[dict[int, Tensor], dict[int, Tensor], dict[int, Tensor], Tensor]:
        """Split every domain on its ``neuron`` (flat index): inactive copy, then active copy.

        Returns the children's splits, slopes, multipliers and rows (2B,). The multipliers
        are inherited; the new split's starts where it reproduces the parent's relaxation of
        the neuron when the parent's bound used its lower line (coefficient ``lam > 0`` on
        ``relu(z)``, slope ``alpha``): ``lam * alpha`` on the inactive side, ``lam * (1 -
        alpha)`` on the active side, so those children start at their parent's bound; 0
        otherwise, and everywhere without ``warm`` (filtered smart branching scores the
        candidates by what the split alone gives: with the warm start both children of every
        such candidate would tie at the parent's bound).
        """
        b = len(dom)
        split = {j: v.repeat(2, 1) for j, v in dom.split.items()}
        alpha = {j: v.repeat(2, 1) for j, v in dom.alpha.items()}
        beta = {j: v.repeat(2, 1) for j, v in dom.beta.items()}
        for j, rows, cols in self.locate(neuron):
            split[j][rows, cols] = -1
            split[j][rows + b, cols] = 1
            lam = dom.coef[rows, neuron[rows]].clamp_min(0).to(beta[j].dtype) * warm
            slope = dom.alpha[j][rows, cols].clamp(0, 1).to(beta[j].dtype)
            beta[j][rows, cols] = lam * slope
            beta[j][rows + b, cols] = lam * (1 - slope)
        return split, alpha, beta, dom.row.repeat(2)

    def choose(self, dom: Domains, k: int) -> Tensor:
        """The neuron to split in every domain: BaBSR's best, or (``k > 1``) the best of its
        top ``k`` by the worse child's one-pass bound (filtered smart branching)."""
        best = dom.score.argmax(1)
        if k <= 1 or len(dom) == 0:
            return best
        k = min(k, dom.score.shape[1])
        values, cand = dom.score.topk(k, dim=1)  # (B, k)
        b = len(dom)
        rep = dom.take(torch.arange(b).repeat(k))
        split, alpha, beta, row = self.children(rep, cand.T.reshape(-1), warm=False)
        low = self.quick(split, alpha, beta, row).reshape(2, k, b)
        worse = low.amin(0).T  # (B, k)
        worse = worse.masked_fill(values <= 0, -math.inf)
        pick = worse.argmax(1)
        return cand[torch.arange(b), pick]


def _by_node(values: dict[int, Tensor] | None) -> dict[int, Tensor] | None:
    """A mapping keyed by ReLU key, keyed by node index (key + 1)."""
    return None if values is None else {j + 1: v for j, v in values.items()}
