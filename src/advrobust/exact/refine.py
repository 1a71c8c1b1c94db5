"""Tighter intermediate bounds by branch and bound on the neurons themselves.

On deep ReLU chains alpha-CROWN's intermediate bounds are far from the exact ones, and the
error compounds layer after layer: on the VNN-COMP mnist_fc 256x6 network (``prop_1_0.03``)
the second layer's bounds are ~45 % wider than the values an attack reaches, the fifth's twice
as wide, and the property's rows sit at -316 to -396. alpha-beta-CROWN's configuration for
these networks tightens them with MILPs on many parallel solvers ("bab-refine"); HiGHS takes
5-18 s per neuron there. This module asks the branch and bound we already have instead
(:class:`~advrobust.exact.bab.BaB`): a neuron's bound is itself a verification problem on the
network cut at its layer. Layer by layer, from the input:

1. an attack (signed gradient from random points of the set, every unstable neuron pushed up
   and down at once) finds values ``a_lo <= z_i <= a_hi`` that points of the set reach;
2. thresholds between those and the current bounds, ``t_lo = a_lo - margin (a_lo - lo)``
   (and the mirror image above; margin 0.3), become spec rows ``z_i - t_lo >= 0`` and
   ``t_hi - z_i >= 0`` of the cut network, all searched together by BaB; passes repeat on
   the layer with thresholds from the new bounds while a pass proves at least half of its
   rows and the layer's share of the time lasts (on deep chains, more than three refinable
   layers, each layer's share is 1.5 times the next one's: the first layers' gains compound;
   and a sample's only refinement, under a short time limit, gives its whole time to the
   bounds: it leaves out the last ReLU layer, whose bounds enter only the property's
   relaxation, which the property's search splits anyway, and its searches take no descent
   steps towards counterexamples);
3. each row's result is a sound lower bound ``L`` of its value, proved or not (the lowest open
   domain), so ``z_i >= t_lo + L`` and ``z_i <= t_hi - L'``, rounded outwards; the root bounds
   of the cut network's alpha-CROWN tighten the layers below too;
4. the next layer's search starts from them (its root alpha-CROWN re-optimises every node below
   it under the refined ones); at the end, alpha-CROWN on the whole network under the refined
   bounds is the new root of the property's search.

The thresholds make the searches decidable (a counterexample would be a point below ``a_lo``
minus a margin, which the attack suggests does not exist) while every bound that comes out is
the result of a sound search, never of the attack. A refined bound that excludes a value the
attack reached is an internal inconsistency: the layer keeps its old bounds, with a warning.

Chains (:class:`~advrobust.network.ir.Network`) only: a graph is cut at a node only where no
branch crosses the cut, which this module does not yet find.
"""

from __future__ import annotations

import math
import time
import warnings
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall
from advrobust.exact._domains import _CLOSE
from advrobust.exact._fork import GRACE, can_fork, deal, fork_map, memory_share
from advrobust.exact._twin import float32_chain, float32_forward
from advrobust.network.ir import Network
from advrobust.relax.alpha_crown import AlphaResult, alpha_crown
from advrobust.relax.crown import crown_lower
from advrobust.relax.ibp import LayerBounds

if TYPE_CHECKING:
    from advrobust.exact.bab import BaB

__all__ = ["Refinement", "refine_bounds"]

#: Cut networks by network and node (see :func:`_cut`).
_CUTS: weakref.WeakKeyDictionary[Network, dict[int, Network]] = weakref.WeakKeyDictionary()

#: Where a pass puts the thresholds between the attack's value (0) and the current bound (1).
_MARGIN = 0.3

#: Largest layer (neurons) that is refined (see :func:`refinable`).
_MAX_NEURONS = 1024

#: Signed-gradient steps of the attack that places the thresholds.
_ATTACK_STEPS = 20

#: On deep chains, more than ``_FRONT_ABOVE`` refinable layers, each refined layer's share of the
#: time is ``_FRONT`` times the next one's (see :func:`_layer_share`; equal shares on shallower
#: chains; there ``refine_bounds(only=True)`` also leaves the last ReLU layer out and the descents
#: off): a layer's refined bounds tighten every layer above it, and on deep chains the first ones'
#: gains compound. VNN-COMP 2022 mnist_fc at 30 s (session 13, 12 instances left open by equal
#: shares): 256x6 (five refined layers) ``prop_9_0.03`` -2.75 with equal shares, -1.76 / **-0.18**
#: / -0.46 with 1.25 / 1.5 / 2, ``prop_0_0.05`` -0.79 -> decided with 1.25 and 1.5, not with 2; at
#: 300 s both decided in the first round (21.6 / 23.7 s, were 85 s). On 256x4 (three refined
#: layers) 1.5 moved nothing at 30 s and lost ``prop_4_0.05`` at 300 s (decided at 269 s with equal
#: shares, twice; -0.12 / -0.13 at the limit with 1.5, twice). Shares that follow the layers'
#: unstable neurons instead (the later, wider layers get more): -16.4 where equal shares gave -1.6
#: (256x6 ``prop_0_0.05``).
_FRONT = 1.5
_FRONT_ABOVE = 3

#: Share of the last ReLU layer's unstable neurons that a pass searches where other layers are
#: refined too (see :func:`_last_layer_weights`): the property's rows read that layer through
#: the affine map after it, so a neuron's cost to their bound is known exactly there, most
#: neurons cost little, and the layer has a fraction of the time (VNN-COMP 2022 mnist_fc 256x4
#: at 30 s: every open row nearer). Where it is the only refined layer it has the whole time
#: and every neuron's bound pays: 2021 256x2 ``prop_1_0.03`` at 120 s is decided in 31 s
#: searching all, not at all with 30 % (bench/RESULTS.md, issue 11, session 16). A sample's only
#: refinement (a short limit) searches ``_ONLY_LAST_SHARE``: the property's search that follows
#: it is short, so the last layer's time buys most on the few neurons that cost most. VNN-COMP
#: 2022 mnist_fc 256x4 at 30 s, the four open instances nearest a proof (worst row at the end,
#: two or three runs each): ``prop_12_0.05`` -0.11..-0.38 with 30 % -> **unsat** in 24.2-24.4 s
#: with 10 %, ``prop_7_0.05`` -0.36..-0.53 -> -0.07..-0.23, ``prop_4_0.05`` -0.92..-1.08 ->
#: -0.72..-1.00, ``prop_9_0.05`` about the same; 50 % loses on all four, 20 % and 15 % gain
#: less, 5 % about the same; leaving the layer out (and the descents, as on deep chains) loses
#: ``prop_12_0.05`` (bench/RESULTS.md, issue 11, session 28).
_LAST_SHARE = 0.3
_ONLY_LAST_SHARE = 0.1

#: In a sample's only refinement (``refine_bounds(only=True)``: a short limit, e.g. 30 s), the
#: neurons' searches take at most ``_ONLY_BETA_STEPS`` Adam steps per batch of domains and rank
#: ``_ONLY_FSB_K`` split candidates per domain where the caller ranks filtered smart
#: branching's default 20: the domains start from their parents' slopes, multipliers and Adam
#: state, so two steps keep most of what five give at about 0.6x the passes (two steps, the
#: closing pass and the sound one instead of five and two), and the batches saved
#: pay for the wider ranking. VNN-COMP 2022 mnist_fc at 30 s, the five open instances nearest
#: a proof (worst row at the end; two or three runs each): 256x4 ``prop_12_0.05`` -0.34..-0.41
#: -> -0.10..-0.11, ``prop_7_0.05`` -0.61..-0.63 -> -0.35..-0.51, ``prop_4_0.05`` -1.21..-1.30 ->
#: -0.84..-0.87, 256x6 ``prop_10_0.05`` -1.84..-1.91 -> -1.05..-1.08; 2 steps alone or 32
#: candidates alone gain less, 8 candidates lose (256x6 ``prop_10_0.05`` -82.6), 48 gain less;
#: the 2021 edition at 30 s: 72 / 72 known answers instead of 70 (bench/RESULTS.md, issue 11,
#: session 27). Longer limits keep the caller's settings: their first round is not their last.
_ONLY_BETA_STEPS = 2
_ONLY_FSB_K = 32


@dataclass
class Refinement:
    """What :func:`refine_bounds` did.

    Attributes:
        alpha: alpha-CROWN on the whole network under the refined bounds (its ``bounds`` are
            the refined node bounds, sound on the whole set).
        layers: per pass over a node: its index, unstable neurons before, searched, and
            after, mean width of the searched neurons' bounds before and after, rows proved,
            rows, seconds.
        seconds: the whole refinement, the closing alpha-CROWN included.
    """

    alpha: AlphaResult
    layers: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def refinable(network: Any) -> list[int]:
    """Indices of the ReLU input nodes worth refining: every ReLU of a chain but the first
    (whose input is an affine image of the box: its interval bounds are already exact), of at
    most ``_MAX_NEURONS`` neurons, on flat (dense) layers: a convolution's feature map would
    make thousands of rows, attack points and back-substituted coefficients, and the neurons'
    searches run on the chain cut after the layer, whose rows are flat."""
    if not isinstance(network, Network):
        return []
    return [k for k in network.relu_indices[1:]
            if len(network.ops[k].in_shape) == 1
            and math.prod(network.ops[k].in_shape) <= _MAX_NEURONS]


def refine_bounds(network: Network, x0: Tensor, threat: LpBall, c: Tensor, d: Tensor,
                  root: AlphaResult, bab: BaB, *, deadline: float,
                  alpha_steps: int = 20, only: bool = False) -> Refinement:
    """Tighten the intermediate bounds of one sample by branch and bound on its neurons.

    Args:
        network: a chain (float64).
        x0: (1, *input_shape) the centre of the set.
        threat: the set.
        c: (1, R, num_outputs) the property's rows; d: (1, R) their offsets.
        root: the rows' alpha-CROWN (its bounds are the starting point).
        bab: the verifier whose settings the neurons' searches take (without refinement,
            without early stop).
        deadline: ``time.perf_counter()`` value at which the refinement returns.
        alpha_steps: Adam steps of each alpha-CROWN on the whole network.
        only: the sample's only refinement (BaB's first round, when no round after it could
            be as long: a short time limit, e.g. 30 s). On a deep chain (more than
            ``_FRONT_ABOVE`` refinable layers) it leaves out the last ReLU layer, whose bounds
            enter only the property's relaxation (which the property's search splits and
            re-optimises per row anyway), and the neurons' searches take no signed-gradient
            steps from their domains' corners (their thresholds lie beyond what the layer's
            attack reached): in one short refinement the layers whose gains compound need
            every second (VNN-COMP 2022 mnist_fc 256x6 at 30 s: every open row nearer). Not
            in rounds that others follow: over long passes a descent that breaks a row's
            threshold ends that row's search and frees its share of the batches, and later
            rounds gain from the last layer (at 300 s, leaving both out of the first of three
            rounds lost 256x6 ``prop_11_0.05`` and delayed two others; without descents in
            every round 256x4 lost ``prop_4_0.05``; bench/RESULTS.md, issue 11, session 14).
            On every chain its neurons' searches take fewer Adam steps per batch and rank
            more split candidates (``_ONLY_BETA_STEPS``, ``_ONLY_FSB_K``), and where it
            refines the last ReLU layer it searches fewer of its neurons
            (``_ONLY_LAST_SHARE``).

    Returns:
        :class:`Refinement`; its ``alpha`` is ``root`` when nothing was refined.
    """
    began_all = time.perf_counter()
    result = Refinement(root)
    nodes = refinable(network)
    deep = len(nodes) > _FRONT_ABOVE
    quick = deep and only
    if quick:
        nodes = nodes[:-1]
    bounds = [(lo.clone(), hi.clone()) for lo, hi in root.bounds]
    # the closing alpha-CROWN costs about what the root's did
    stop = deadline - root.seconds
    # the costliest neurons only where other layers share the time (see _LAST_SHARE); the
    # weights' identity is no larger than a refinable layer's square
    last = _last_layer_weights(network, c[0]) \
        if len(nodes) > 1 and nodes[-1] == network.relu_indices[-1] else None
    for n, k in enumerate(nodes):
        left = stop - time.perf_counter()
        if left <= 0:
            break
        _refine_layer(network, x0, threat, bounds, k, bab,
                      time.perf_counter() + left * _layer_share(len(nodes) - n, deep),
                      result, descend=not quick,
                      weights=last if k == network.relu_indices[-1] else None, short=only)
    if result.layers:
        alpha = alpha_crown(network, x0, threat, c, d, steps=alpha_steps, bounds=bounds,
                            deadline=deadline, stop_above=_CLOSE,
                            memory_limit=bab.memory_limit)
        alpha.lower = torch.maximum(alpha.lower, root.lower)
        result.alpha = alpha
    result.seconds = time.perf_counter() - began_all
    return result


def _layer_share(count: int, deep: bool) -> float:
    """Share of the time left that the first of ``count`` layers still to refine takes: shares
    ``1, 1/_FRONT, 1/_FRONT**2, ...`` of the layers in order on a ``deep`` chain (more than
    ``_FRONT_ABOVE`` refinable layers), equal shares otherwise, normalised (a layer that ends
    early leaves its time to the ones after it)."""
    front = _FRONT if deep else 1.0
    return 1.0 / sum(front ** -i for i in range(count))


def _last_layer_weights(network: Network, c: Tensor) -> Tensor:
    """(R, n) the coefficients of the property's rows ``c`` (R, outputs) on the outputs of the
    chain's last nonlinear op, a ReLU (exact: every op after it is affine)."""
    k = network.relu_indices[-1]
    shape = tuple(network.ops[k].in_shape)
    n = math.prod(shape)
    with torch.no_grad():
        a = torch.eye(n, dtype=c.dtype).reshape((n,) + shape)
        zero = a.new_zeros((1,) + shape)
        for op in network.ops[k + 1:]:
            a, zero = op.forward(a), op.forward(zero)
    return c @ (a - zero).reshape(n, -1).T


def _refine_layer(network: Network, x0: Tensor, threat: LpBall, bounds: LayerBounds, k: int,
                  bab: BaB, until: float, result: Refinement, descend: bool = True,
                  weights: Tensor | None = None, short: bool = False) -> None:
    """Passes over node ``k`` until ``until``: each moves the thresholds ``_MARGIN`` of the way
    from the bound to the attack's value; a pass that proves fewer than half of its rows
    (the bound is near what the search can show) ends the layer. ``descend``: the searches
    take ``bab``'s signed-gradient steps from their domains' corners (else the corners only).
    ``weights`` (R, n): the property's rows read node ``k`` through ReLU and these
    coefficients only (the last ReLU layer): each pass searches the ``_LAST_SHARE`` of the
    unstable neurons whose relaxation costs a row most (:func:`_costliest`). ``short``: the
    sample's only refinement (``_ONLY_BETA_STEPS``, ``_ONLY_FSB_K``, ``_ONLY_LAST_SHARE``)."""
    from advrobust.exact.bab import BaB

    beta_steps, branching, share = bab.beta_steps, bab.branching, _LAST_SHARE
    if short:
        beta_steps = min(beta_steps, _ONLY_BETA_STEPS)
        branching = _ONLY_FSB_K if branching == "fsb" else branching
        share = _ONLY_LAST_SHARE

    # the worker processes' searches share the memory: each may take its part of the budget
    memory = memory_share(bab.memory_limit, bab.workers)
    while (left := until - time.perf_counter()) > 0:
        # the neurons' searches: the caller's settings (fewer steps and more candidates in an
        # only refinement), no early stop, no refinement of their own
        inner = BaB(time_limit=left, batch_size=bab.batch_size, max_leaves=bab.max_leaves,
                    early_stop=False, alpha_steps=bab.alpha_steps,
                    intermediate=bab.intermediate, beta_steps=beta_steps,
                    branching=branching, attack_steps=bab.attack_steps if descend else 0,
                    domain_bounds=bab.domain_bounds, keep_state=bab.keep_state, refine=0.0,
                    memory_limit=memory)
        began = time.perf_counter()
        log = _refine_node(network, x0, threat, bounds, k, inner, weights, bab.workers, share)
        if log is None:
            return
        log["seconds"] = time.perf_counter() - began
        result.layers.append(log)
        if log["proved"] < log["rows"] / 2:
            return


def _refine_node(network: Network, x0: Tensor, threat: LpBall, bounds: LayerBounds, k: int,
                 inner: BaB, weights: Tensor | None = None, workers: int = 1,
                 share: float = _LAST_SHARE) -> dict[str, Any] | None:
    """Tighten node ``k``'s bounds (and those below it) in place; None if nothing to do.
    ``weights``, ``share``: see :func:`_refine_layer` and :func:`_costliest`; ``workers``:
    processes that share the neurons' rows (:func:`_search_rows`)."""
    cut = _cut(network, k)
    _rebound(cut, x0, threat, bounds, k)
    lo, hi = (b.reshape(-1) for b in bounds[k])
    unstable = ((lo < 0) & (hi > 0)).nonzero().flatten()
    total = unstable.numel()
    if weights is not None and total:
        unstable = _costliest(weights, lo, hi, unstable, share)
    m = unstable.numel()
    if m == 0:
        return None
    reach_lo, reach_hi, _ = _attack(cut, x0, threat, unstable)
    t_lo = reach_lo - _MARGIN * (reach_lo - lo[unstable])
    t_hi = reach_hi + _MARGIN * (hi[unstable] - reach_hi)
    # a neuron the attack never moved across 0: try to prove it stable (no relaxation at all)
    t_lo = torch.where(reach_lo > 0, t_lo.clamp(min=0.0), t_lo)
    t_hi = torch.where(reach_hi < 0, t_hi.clamp(max=0.0), t_hi)
    rows = torch.zeros(1, 2 * m, lo.numel(), dtype=x0.dtype)
    rows[0, torch.arange(m), unstable] = 1.0
    rows[0, m + torch.arange(m), unstable] = -1.0
    offsets = torch.cat([-t_lo, t_hi]).unsqueeze(0)
    low, roots = _search_rows(inner, cut, x0, threat, Spec(rows, offsets), bounds[:k + 1],
                              workers)
    new_lo = torch.maximum(lo[unstable], _down(t_lo + low[:m]))
    new_hi = torch.minimum(hi[unstable], _up(t_hi - low[m:]))
    if not _consistent(new_lo, new_hi, reach_lo, reach_hi, k):
        return None
    before = float((hi[unstable] - lo[unstable]).mean())
    for root_bounds in roots:
        _tighten_below(bounds, root_bounds, k)
    lo, hi = lo.clone(), hi.clone()
    lo[unstable], hi[unstable] = new_lo, new_hi
    bounds[k] = (torch.maximum(bounds[k][0], lo.reshape(bounds[k][0].shape)),
                 torch.minimum(bounds[k][1], hi.reshape(bounds[k][1].shape)))
    return {"node": k, "unstable": total, "searched": m,
            "unstable_after": total - m + int(((new_lo < 0) & (new_hi > 0)).sum()),
            "width": before, "width_after": float((new_hi - new_lo).mean()),
            "proved": int((low > _CLOSE).sum()), "rows": 2 * m}


def _search_rows(inner: BaB, cut: Network, x0: Tensor, threat: LpBall, spec: Spec,
                 layer_bounds: LayerBounds, workers: int) -> tuple[Tensor, list[Any]]:
    """(R,) sound lower bounds of the spec's rows on the cut network and the searches' root
    bounds. With ``workers`` > 1 the rows are dealt round-robin to that many processes
    (:func:`~advrobust.exact._fork.fork_map`: this one and forked copies), each searching its
    rows for the whole time: the rows share no state, so ``workers`` cores bound ~``workers``
    times the domains. A copy that fails or answers late proves nothing (its rows keep
    ``-inf``: the caller keeps their old bounds)."""
    rows = spec.num_rows
    if workers <= 1 or rows < 2 or not can_fork():
        out = inner._bound(cut, x0, threat, spec, layer_bounds=layer_bounds)
        return out.lower[0], [out.stats.get("root_bounds", {}).get(0)]
    parts = deal(rows, workers)

    def search(part: Tensor) -> tuple[Tensor, Any]:
        out = inner._bound(cut, x0, threat, Spec(spec.C[:, part], spec.d[:, part]),
                           layer_bounds=layer_bounds)
        return out.lower[0], out.stats.get("root_bounds", {}).get(0)

    low = torch.full((rows,), -math.inf, dtype=x0.dtype)
    roots = []
    until = time.perf_counter() + inner.time_limit + GRACE
    for part, got in zip(parts, fork_map(search, parts, until=until), strict=True):
        if got is not None:
            low[part] = got[0].to(low)
            roots.append(got[1])
    return low, roots


def _costliest(weights: Tensor, lo: Tensor, hi: Tensor, unstable: Tensor,
               share: float = _LAST_SHARE) -> Tensor:
    """The ``share`` (at least one) of the ``unstable`` neurons (ascending) whose relaxation
    costs some row most: the upper line's intercept ``-u l / (u - l)`` times the row's
    coefficient magnitude (BaBSR's score, exact on the last ReLU layer)."""
    keep = max(1, math.ceil(share * unstable.numel()))
    if keep >= unstable.numel():
        return unstable
    l, u = lo[unstable], hi[unstable]
    cost = (weights[:, unstable].abs() * (-u * l / (u - l))).amax(0)
    return unstable[cost.topk(keep).indices].sort().values


def _cut(network: Network, k: int) -> Network:
    """The chain of ``network``'s first ``k`` ops, one object per (network, k), so that what
    is cached per network (the search's float32 copy) serves every sample."""
    cuts = _CUTS.setdefault(network, {})
    if k not in cuts:
        cuts[k] = Network(network.ops[:k], network.input_shape, network.module)
    return cuts[k]


def _rebound(cut: Network, x0: Tensor, threat: LpBall, bounds: LayerBounds, k: int) -> None:
    """Intersect node ``k``'s bounds with CROWN's under the (refined) bounds below it, in place:
    the neurons that refinement below made stable are not searched."""
    lo, hi = (b.reshape(-1).clone() for b in bounds[k])
    idx = ((lo < 0) & (hi > 0)).nonzero().flatten()  # the stable ones stay stable
    m = idx.numel()
    if m == 0:
        return
    rows = torch.zeros(1, 2 * m, lo.numel(), dtype=x0.dtype)
    rows[0, torch.arange(m), idx] = 1.0
    rows[0, m + torch.arange(m), idx] = -1.0
    with torch.no_grad():
        low = crown_lower(cut, x0, threat, rows, bounds=bounds[:k + 1], rounding=True)[0]
    lo[idx], hi[idx] = torch.maximum(lo[idx], low[:m]), torch.minimum(hi[idx], -low[m:])
    bounds[k] = (lo.reshape(bounds[k][0].shape), hi.reshape(bounds[k][1].shape))


def _tighten_below(bounds: LayerBounds, cut_bounds: LayerBounds | None, k: int) -> None:
    """Intersect nodes ``0..k`` with the cut network's root alpha-CROWN bounds, in place."""
    if cut_bounds is None:
        return
    for j in range(min(k + 1, len(cut_bounds))):
        lo, hi = cut_bounds[j]
        bounds[j] = (torch.maximum(bounds[j][0], lo.reshape(bounds[j][0].shape)),
                     torch.minimum(bounds[j][1], hi.reshape(bounds[j][1].shape)))


def _consistent(new_lo: Tensor, new_hi: Tensor, reach_lo: Tensor, reach_hi: Tensor,
                k: int) -> bool:
    """The refined bounds contain every value a point of the set reached (float64 evaluations,
    so a slack of 1e-9 relative) and are numbers, else the refinement is wrong somewhere:
    warn, keep nothing."""
    slack = 1e-9 * (1.0 + torch.maximum(reach_lo.abs(), reach_hi.abs()))
    bad = (new_lo > reach_lo + slack) | (new_hi < reach_hi - slack) | (new_lo > new_hi) \
        | new_lo.isnan() | new_hi.isnan()
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        warnings.warn(
            f"BaB refinement: node {k}: refined bounds [{float(new_lo[i])}, "
            f"{float(new_hi[i])}] exclude the value reached at a point of the set "
            f"([{float(reach_lo[i])}, {float(reach_hi[i])}]): internal check failed, the "
            "layer keeps its alpha-CROWN bounds.", RuntimeWarning, stacklevel=3)
        return False
    return True


def _attack(cut: Network, x0: Tensor, threat: LpBall, idx: Tensor
            ) -> tuple[Tensor, Tensor, Tensor]:
    """Lowest and highest values of the neurons ``idx`` of ``cut``'s output reached at points of
    the set, and those points (2m, *input_shape: the lowest, then the highest): signed gradient
    from seeded random points, all neurons and both directions at once, step sizes shrinking
    from a fifth of the box to a hundredth. The steps run on the float32 copy of the network
    when it has one (256 neurons of 256x6: 0.96 s in float64 with 40 steps, 0.27 s now); each
    row's best point is then evaluated in float64, so what comes back are values points of the
    set reach, exactly as the network computes them."""
    lo_in, hi_in = threat.input_bounds(x0)
    m = idx.numel()
    fast = float32_chain(cut)
    dtype = x0.dtype if fast is None else torch.float32
    lo_s, hi_s = lo_in.to(dtype), hi_in.to(dtype)
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand((2 * m,) + tuple(x0.shape[1:]), generator=gen, dtype=x0.dtype)
    x = (lo_in + (hi_in - lo_in) * noise).to(dtype).requires_grad_(True)
    sign = torch.cat([x0.new_full((m,), -1.0), x0.new_ones(m)]).to(dtype)  # minimise, maximise
    rows = torch.arange(2 * m)
    cols = idx.repeat(2)
    best = torch.full((2 * m,), math.inf, dtype=dtype)  # of sign * z
    best_x = x.detach().clone()
    for step in range(_ATTACK_STEPS + 1):
        z = cut.forward(x) if fast is None else float32_forward(fast, x)
        z = z.reshape(2 * m, -1)[rows, cols] * -sign
        with torch.no_grad():
            better = z < best
            best = torch.where(better, z, best)
            best_x[better] = x[better]
        if step == _ATTACK_STEPS:
            break
        (grad,) = torch.autograd.grad(z.sum(), x)
        size = 0.2 * (0.05 ** (step / (_ATTACK_STEPS - 1)))
        with torch.no_grad():
            x -= size * (hi_s - lo_s) * grad.sign()
            x.copy_(torch.minimum(torch.maximum(x, lo_s), hi_s))
    with torch.no_grad():  # the best points, in float64 inside the box
        points = torch.minimum(torch.maximum(best_x.to(x0.dtype), lo_in), hi_in)
        z = cut.forward(points).reshape(2 * m, -1)[rows, cols]
    return z[:m], z[m:], points


def _down(t: Tensor) -> Tensor:
    """One float64 step towards -inf: a sum rounded to nearest stays a lower bound."""
    return torch.nextafter(t, t.new_tensor(-math.inf))


def _up(t: Tensor) -> Tensor:
    return torch.nextafter(t, t.new_tensor(math.inf))
