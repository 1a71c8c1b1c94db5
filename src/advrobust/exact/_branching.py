"""Branching scores for ReLU splits: BaBSR and filtered smart branching.

BaBSR (Bunel et al. 2020, "Branch and bound for piecewise linear neural network
verification") scores an unstable neuron by what its relaxation costs the current linear
bound: a negative coefficient ``lambda`` on ``relu(z)`` pays the upper relaxation's intercept
``-lambda u l / (u - l)``, a positive one the gap ``lambda max((1 - alpha) u, -alpha l)`` of the
lower relaxation. Splitting the neuron removes that cost from one child at least.

Filtered smart branching (De Palma et al. 2021, "Improved branch and bound for neural network
verification via Lagrangian decomposition"; the FSB of beta-CROWN's implementation) keeps the
``k`` best BaBSR candidates of each domain, bounds both children of each candidate with one
cheap pass (the parent's slopes and multipliers, no optimisation), and splits the candidate
whose worse child is best. On a chain those passes start below the split's layer from the
parent's own pass (:meth:`Branching.ranking`): above it a child's pass is its parent's.

:class:`Branching` is the split side of :class:`~advrobust.exact._beta.BetaBounder`: the
children of a batch of domains, their warm start, and the choice of the neuron to split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from advrobust.exact._beta_pass import BetaPasses
from advrobust.exact._domains import Domains, OptState, _Relu

__all__ = ["Branching", "babsr_scores"]

#: Candidates ranked per pass by filtered smart branching.
_CHUNK = 5

#: Most entries of the affine map into a chain's ReLU from the ReLU below it (or the input)
#: that the ranking keeps, to start its candidates' passes below their layer
#: (:meth:`Branching._below`).
_BELOW_MOST = 1 << 22


def babsr_scores(coef: Tensor, lo: Tensor, hi: Tensor, alpha: Tensor) -> Tensor:
    """Scores (B, n) of the neurons of one ReLU layer; 0 on stable (and split) neurons.

    Args:
        coef: (B, n) coefficients of the bound on the layer's outputs ``relu(z)``.
        lo, hi: (B, n) pre-activation bounds under the domain's splits.
        alpha: (B, n) lower slopes in use.
    """
    unstable = (lo < 0) & (hi > 0)
    lo_c, hi_c = lo.clamp(max=0), hi.clamp(min=0)
    width = (hi_c - lo_c).clamp_min(1e-30)
    intercept = -hi_c * lo_c / width
    neg = (-coef).clamp_min(0)
    pos = coef.clamp_min(0)
    gap = torch.maximum((1 - alpha) * hi_c, -alpha * lo_c)
    score = neg * intercept + pos * gap + 1e-9 * width
    return torch.where(unstable, score, torch.zeros_like(score))


@dataclass(frozen=True)
class _Base:
    """A batch of parents' one-pass bound in parts (:meth:`Branching._base`), float32: per
    ReLU the coefficients entering it (B, n) and the constant so far (B,); the input
    coefficients (B, 1, *input_shape) and the bound's constant (B,)."""

    entering: dict[int, Tensor]
    consts: dict[int, Tensor]
    a_in: Tensor
    const: Tensor


class Branching(BetaPasses):
    """Splitting domains: the branching half of :class:`~advrobust.exact._beta.BetaBounder`
    (a mixin over its passes)."""

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
        # in chunks of candidates: at most 2 x _CHUNK children per domain at a time (the
        # batch was sized by memory for 2; a ranking pass keeps no autograd graph)
        parents = self._parent_relus(dom) if self.fast is not None and self.chain else None
        base = self._base(dom, parents)
        worse = torch.cat([self.ranking(dom, cand[:, i:i + _CHUNK], parents, base).amin(0)
                           for i in range(0, k, _CHUNK)]).T  # (B, k)
        worse = worse.masked_fill(values <= 0, -math.inf)
        pick = worse.argmax(1)
        return cand[torch.arange(b), pick]

    def ranking(self, dom: Domains, cand: Tensor, parents: dict[int, _Relu] | None = None,
                base: _Base | None = None) -> Tensor:
        """(2, k, B) one-pass bounds of the inactive / active child of each domain's ``k``
        candidates ``cand`` (B, k): :meth:`quick` on :meth:`children`, with (float32 twin of a
        chain) the children's ReLU relaxations taken from their parent's (``parents``, from
        :meth:`_parent_relus`, built here if not given), the split neuron's fixed, instead of
        recomputed from each child's bounds. A split changes only its neuron's term of the
        parent's pass: with the parents' pass in parts (``base``, from :meth:`_base`) a
        child's pass starts below the split's layer (:meth:`_rank_below`)."""
        b, k = cand.shape
        idx = torch.arange(b).repeat(k)
        neuron = cand.T.reshape(-1)
        if self.fast is None or not self.chain:
            split, alpha, beta, row = self.children(dom.take(idx, state=False), neuron,
                                                    warm=False)
            return self.quick(split, alpha, beta, row).reshape(2, k, b)
        with torch.no_grad():
            parents = self._parent_relus(dom) if parents is None else parents
            out = torch.empty((2, b * k), dtype=self.x0.dtype)
            rest = torch.ones_like(neuron, dtype=torch.bool)
            for pos, (_, at, cols) in enumerate(self.locate(neuron)):
                if base is None or at.numel() == 0 or self._below(pos) is None:
                    continue
                out[:, at] = self._rank_below(dom, base, parents, pos, idx[at], cols)
                rest[at] = False
            if bool(rest.any()):
                split, alpha, beta, row = self.children(dom.take(idx[rest], state=False),
                                                        neuron[rest], warm=False)
                relus = self._child_relus(parents, idx[rest].repeat(2), neuron[rest])
                f32 = torch.float32
                al = {j: v.to(f32) for j, v in alpha.items()}
                be = {j: v.to(f32) for j, v in beta.items()}
                value = self._pass([], split, al, be, row, relus=relus, sound=False,
                                   fast=True)[0]
                out[:, rest] = value.reshape(2, -1)
        return out.nan_to_num(nan=-math.inf).reshape(2, k, b)

    def _base(self, dom: Domains, parents: dict[int, _Relu] | None) -> _Base | None:
        """The parents' own one-pass bound in parts (float32 twin of a chain, else None),
        for :meth:`ranking`."""
        if parents is None or len(dom) == 0:
            return None
        with torch.no_grad():
            f32 = torch.float32
            record: dict[int, Tensor] = {}
            consts: dict[int, Tensor] = {}
            al = {j: v.to(f32) for j, v in dom.alpha.items()}
            be = {j: v.to(f32) for j, v in dom.beta.items()}
            a_in, const, _ = self._chain_back([], dom.split, al, be, dom.row, record,
                                              parents, sound=False, fast=True, consts=consts)
        return _Base({j: v.flatten(1) for j, v in record.items()},
                     {j: v[:, 0] for j, v in consts.items()}, a_in, const[:, 0])

    def _below(self, pos: int) -> tuple[Tensor, Tensor] | None:
        """The affine map into the input of the chain's ReLU ``pos`` (of :attr:`relus`) from
        the output of the ReLU below it (from the input for the first), on the float32 twin:
        ``z = W y + v``, ``W`` (n, m) and ``v`` (n,); None where it (or the identity it is
        built from) has more than ``_BELOW_MOST`` entries. Once per bounder and layer."""
        maps = self.__dict__.setdefault("_below_maps", {})
        if pos not in maps:
            maps[pos] = None
            j, n = self.relus[pos], self.sizes[pos]
            low = self.relus[pos - 1] if pos else -1
            width = self.x0[0].numel() if pos == 0 else self.sizes[pos - 1]
            # built from the layer's identity (n x n): both stay within the cap
            if self.fast is not None and n * max(n, width) <= _BELOW_MOST:
                with torch.no_grad():
                    a = torch.eye(n).reshape((1, n) + tuple(self.root[j][0].shape[1:]))
                    const = a.new_zeros(1, n)
                    for i in reversed(range(low + 1, j)):
                        (back,), c = self.fast.graph_ops[i].backward(a)
                        assert back is not None
                        a, const = back, const + c
                maps[pos] = (a[0].reshape(n, width), const[0])
        return maps[pos]

    def _rank_below(self, dom: Domains, base: _Base, parents: dict[int, _Relu], pos: int,
                    parent: Tensor, neuron: Tensor) -> Tensor:
        """(2, m) one-pass bounds of the inactive / active child of domain ``parent[i]``
        split on ``neuron[i]`` of the chain's ReLU ``pos``: the parent's pass (``base``) with
        that neuron's term replaced, from the ReLU below down. The neuron's relaxation under
        the coefficient ``a`` entering it contributes ``p z + q`` (its slope or upper line);
        the inactive child's term is 0, the active child's ``a z``, ``z = W_i y + v_i``
        (:meth:`_below`): the children's coefficients entering the ReLU below (on the input
        for the first) are the parent's plus ``(0 - p) W_i`` or ``(a - p) W_i``."""
        j = self.relus[pos]
        rel = parents[j]
        a = base.entering[j][parent, neuron]
        at = (parent, neuron)
        unstable, active = rel.unstable.flatten(1)[at], rel.active.flatten(1)[at]
        up, up_b = rel.up.flatten(1)[at], rel.up_b[parent, neuron, 0]
        low = torch.where(unstable, dom.alpha[j][at].to(a.dtype).clamp(0, 1), active)
        neg = a.clamp(max=0)
        p = a * low + neg * (up - low)
        delta = torch.stack([-p, a - p])  # (2, m)
        into = self._below(pos)
        assert into is not None  # ranking() sends only the layers that have it
        w, v = into[0][neuron], into[1][neuron]
        two = parent.repeat(2)
        m = parent.shape[0]
        if pos == 0:
            a_low, c_low = base.a_in.flatten(1)[parent], base.const[parent]
        else:
            below = self.relus[pos - 1]
            a_low, c_low = base.entering[below][parent], base.consts[below][parent]
        a_new = (a_low.unsqueeze(0) + delta.unsqueeze(-1) * w).reshape(2 * m, 1, -1)
        c_new = (c_low - neg * up_b + delta * v).reshape(2 * m, 1)
        if pos == 0:
            a_in, const = a_new, c_new
        else:
            f32 = torch.float32
            keys = self.relus[:pos]
            relus = {i: _Relu(r.unstable[two], r.active[two], r.up[two], r.up_b[two],
                              up_b[:0], up_b[:0], 0.0)
                     for i, r in ((i, parents[i]) for i in keys)}
            shape = (2 * m, 1) + tuple(self.root[below][0].shape[1:])
            a_in, const, _ = self._chain_back(
                [], {i: dom.split[i][two] for i in keys},
                {i: dom.alpha[i][two].to(f32) for i in keys},
                {i: dom.beta[i][two].to(f32) for i in keys}, dom.row[two], relus=relus,
                sound=False, fast=True, start=(below, a_new.reshape(shape), c_new))
        # float32 throughout, no allowances: the values only rank
        x0 = self.x0.to(a_in.dtype).expand((2 * m,) + tuple(self.x0.shape[1:]))
        value = self.threat.concretize_lower(a_in.reshape(2 * m, 1, -1), x0) + const
        return (value[:, 0].to(self.d.dtype) + self.d[dom.row[two]]).reshape(2, m)

    def _parent_relus(self, dom: Domains) -> dict[int, _Relu]:
        """The float32 ReLU relaxations of the domains' split-clamped bounds (chains only)."""
        f32 = torch.float32
        low = [(lo.to(f32), hi.to(f32)) for lo, hi in self.clamped(dom.split)]
        return {j: _Relu.of(*low[j]) for j in self.relus}

    def _child_relus(self, parents: dict[int, _Relu], parent: Tensor, neuron: Tensor
                     ) -> dict[int, _Relu]:
        """The float32 ReLU relaxations of the children (inactive copies, then active copies,
        child ``i`` of parent ``parent[i]``, split on ``neuron``), as the optimisation-free
        pass uses them (masks, upper lines; no rounding magnitudes)."""
        half, n2 = neuron.shape[0], parent.shape[0]
        where = {j: (rows, cols) for j, rows, cols in self.locate(neuron)}
        out = {}
        for j, rel in parents.items():
            unstable, active = rel.unstable[parent], rel.active[parent]
            up, up_b = rel.up[parent], rel.up_b[parent]
            out[j] = _Relu(unstable, active, up, up_b, up_b[:0], up_b[:0], 0.0)
            rows, cols = where[j]
            flat = [t.view(n2, -1) for t in (unstable, active, up, up_b)]
            for side in (0, 1):  # the split neuron: 0 (inactive) or the identity (active)
                r = rows + side * half
                flat[0][r, cols] = False
                flat[1][r, cols] = float(side)
                flat[2][r, cols] = float(side)
                flat[3][r, cols] = 0.0
        return out
