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

The passes (chains and graphs, the split-clamped and re-bounded domain bounds) are
:class:`~advrobust.exact._beta_pass.BetaPasses`; the split side (children, their warm start, the
choice of the neuron) is :class:`~advrobust.exact._branching.Branching`. This module holds the
bounder itself: its set-up and the optimisation of a batch's slopes and multipliers.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from advrobust.core.threat import LpBall
from advrobust.exact._branching import Branching, babsr_scores
from advrobust.exact._domains import _STORE, Domains, OptState, _Relu
from advrobust.exact._twin import Float32Twin
from advrobust.network.graph import Graph
from advrobust.network.graph.graph import as_graph
from advrobust.network.ir import Network
from advrobust.relax._rounding import magnitude, op_gamma
from advrobust.relax.alpha_crown import Adam, check_branchable
from advrobust.relax.dag import Allowance
from advrobust.relax.ibp import LayerBounds

__all__ = ["BetaBounder", "Domains", "OptState"]


class BetaBounder(Branching):
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
        best_al, best_be, st = self._optimise(bounds, relus, split, alpha, beta, row, steps,
                                              deadline, state)
        return self._settle(bounds, relus, empty, split, best_al, best_be, row, floor, st)

    def _step_bounds(self, bounds: LayerBounds, relus: dict[int, _Relu], fast: bool
                     ) -> tuple[LayerBounds, dict[int, _Relu], torch.dtype]:
        """Bounds, ReLU relaxations and dtype of the steps' passes (``fast``: float32)."""
        if not fast:
            return bounds, relus, self.x0.dtype
        o_dtype = torch.float32
        o_bounds = [(lo.to(o_dtype), hi.to(o_dtype)) for lo, hi in bounds]
        return o_bounds, self._relus(o_bounds), o_dtype

    def _optimise(self, bounds: LayerBounds, relus: dict[int, _Relu], split: dict[int, Tensor],
                  alpha: dict[int, Tensor], beta: dict[int, Tensor], row: Tensor, steps: int,
                  deadline: float, state: OptState | None
                  ) -> tuple[dict[int, Tensor], dict[int, Tensor], OptState | None]:
        """:meth:`bound`'s Adam steps: the best slopes and multipliers of every domain by the
        steps' (unsound) values, and the domains' Adam state (``keep_state``; else None)."""
        # the steps' passes: float32 on a chain that has a float32 twin (they only choose)
        fast = self.fast is not None and steps > 0
        o_bounds, o_relus, o_dtype = self._step_bounds(bounds, relus, fast)
        al = {j: alpha[j].to(o_dtype).clone().requires_grad_(True) for j in self.relus}
        be = {j: beta[j].to(o_dtype).clone().requires_grad_(True) for j in self.relus}
        groups = [(list(al.values()), self.lr_alpha)]
        if any(bool(split[j].any()) for j in self.relus):
            groups.append((list(be.values()), self.lr_beta))
        opt = Adam(groups)
        st, live = None, {}
        if self.keep_state:
            st = (state if state is not None else OptState.zeros(alpha)).map(
                lambda v: v.to(o_dtype).clone())
            live = {j: (split[j] != 0).to(o_dtype) for j in self.relus}
        best = torch.full((row.shape[0],), -math.inf, dtype=self.x0.dtype)  # steps' values
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
        if steps:
            with torch.no_grad():
                lower, _ = self._pass(o_bounds, split, al, be, row, relus=o_relus,
                                      sound=False, fast=fast)
                self._keep(lower, best, al, be, best_al, best_be)
        return best_al, best_be, st

    def _settle(self, bounds: LayerBounds, relus: dict[int, _Relu], empty: Tensor,
                split: dict[int, Tensor], best_al: dict[int, Tensor], best_be: dict[int, Tensor],
                row: Tensor, floor: Tensor | None, st: OptState | None
                ) -> tuple[Domains, Tensor]:
        """:meth:`bound`'s result: one sound pass (float64) with the best parameters gives
        the bound, and its coefficients the branching scores and a corner."""
        dtype = self.x0.dtype
        b = row.shape[0]
        record: dict[int, Tensor] = {}
        with torch.no_grad():
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
