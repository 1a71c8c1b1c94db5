"""alpha-CROWN: optimised lower slopes for every unstable ReLU, intermediate bounds included.

Xu et al. 2021, "Fast and complete: enabling complete neural network verification with rapid
and massively parallel incomplete verifiers". CROWN's lower relaxation ``relu(z) >= alpha z`` is
valid for any ``alpha`` in [0, 1], so every choice gives a sound bound and the slopes can be
optimised by gradient ascent on the bound. The slopes are separate per output row and, when
the intermediate (pre-activation) bounds are optimised too, separate per intermediate neuron
bound (each of the ``2 u_k`` rows ``+-z_k`` of layer ``k`` has its own slopes of the layers
below): a tighter layer ``k`` tightens the relaxation of every layer above it.

Every step's bounds are sound (float64 with the rounding allowances of
:mod:`advrobust.relax._rounding`, as in :mod:`advrobust.relax.crown`); the result keeps the best
bound of every neuron and row over the steps (an intersection of sound bounds). The engine
works on chains of affine and ReLU ops (``network.ops``) and refuses anything else.

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
from advrobust.network.ir import Network
from advrobust.network.ops import AffineOp
from advrobust.network.relu import ReLUOp
from advrobust.relax._rounding import (
    abs_dot,
    input_gamma,
    magnitude,
    op_gamma,
    relu_gamma,
    relu_magnitude,
    sound_interval,
)
from advrobust.relax.crown import crown_layer_bounds
from advrobust.relax.ibp import LayerBounds

__all__ = ["Adam", "AlphaResult", "alpha_crown", "check_chain", "concretize", "linear_pass"]


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
    """The ReLU positions of a chain of affine and ReLU ops; a clear error for anything else."""
    ops = getattr(network, "ops", None)
    if not isinstance(ops, list):
        raise UnsupportedLayerError(
            f"alpha/beta-CROWN works on chain networks (a list of ops); got "
            f"{type(network).__name__} without one.")
    for op in ops:
        if not isinstance(op, (AffineOp, ReLUOp)):
            raise UnsupportedLayerError(
                f"alpha/beta-CROWN supports chains of affine and ReLU ops only; op {op!r} is "
                f"a {type(op).__name__}.")
    return [i for i, op in enumerate(ops) if isinstance(op, ReLUOp)]


def linear_pass(network: Network, a: Tensor, stop: int, bounds: LayerBounds,
                alphas: Mapping[int, Tensor] | None = None,
                betas: Mapping[int, Tensor] | None = None,
                record: dict[int, Tensor] | None = None,
                mags: Mapping[int, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Back-substitute ``a`` (N, K, *shape of op ``stop``'s input) to the network input.

    ``betas[j]`` (broadcastable to (N, K, *shape_j)) are signed Lagrange multipliers of split
    constraints on the input ``z_j`` of ReLU ``j``: ``beta * s`` with ``s = +1`` for a split
    ``z_j >= 0`` and ``-1`` for ``z_j <= 0``, ``beta >= 0``; the term ``-beta s z_j`` is
    non-positive on the split domain, so the result still lower-bounds ``<a, z_stop>`` there.
    ``record``, when given, receives the coefficients on every ReLU's output (for branching).
    ``mags`` may hold precomputed term magnitudes of affine ops (1 or N, *out_shape), from any
    bounds that contain ``bounds`` (e.g. the root's, for every sub-domain).

    Returns:
        ``(a_in, const, err)``: ``<a, z_stop> >= <a_in, x> + const - err`` over the box of
        ``bounds[0]`` (and the split domain), ``err`` (N, K) the rounding allowance.
    """
    const = a.new_zeros(a.shape[:2])
    err = a.new_zeros(a.shape[:2])
    for j in reversed(range(stop)):
        op = network.ops[j]
        lo, hi = bounds[j]
        if isinstance(op, ReLUOp):
            if record is not None:
                record[j] = a
            err = err + relu_gamma(a.dtype, lo[0].numel()) * abs_dot(a, relu_magnitude(lo, hi))
            a, c = op.backward(a, lo, hi, None if alphas is None else alphas.get(j))
            if betas is not None and j in betas:
                a = a - betas[j]
                err = err + relu_gamma(a.dtype, lo[0].numel()) * abs_dot(
                    a, torch.maximum(lo.abs(), hi.abs()))
        else:
            assert isinstance(op, AffineOp)
            if op_gamma(op, a.dtype) > 0:
                mag = mags[j] if mags is not None and j in mags else magnitude(op, lo, hi)
                if mag.shape[0] != a.shape[0]:
                    mag = mag.expand((a.shape[0],) + tuple(mag.shape[1:]))
                err = err + op_gamma(op, a.dtype) * abs_dot(a, mag)
            c = op.bias_term(a)
            a = op.backward(a)
        const = const + c
    return a, const, err


def concretize(threat: LpBall, x0: Tensor, a: Tensor, const: Tensor, err: Tensor) -> Tensor:
    """Sound ``min <a, x> + const`` over the set, less ``err`` and this sum's own allowance."""
    value = threat.concretize_lower(a.flatten(2), x0) + const
    lo, hi = threat.input_bounds(x0)
    mag = torch.maximum(lo.abs(), hi.abs()) + threat.eps
    size = a[0, 0].numel()
    return value - err - input_gamma(size, value.dtype) * (abs_dot(a, mag) + const.detach().abs())


@dataclass
class AlphaResult:
    """What :func:`alpha_crown` found.

    Attributes:
        bounds: sound bounds of every op's input and of the output (N, *shape) each.
        lower: (N, R) sound lower bounds of the rows ``C f + d``.
        alphas: per ReLU index, the final rows' slopes (N, R, *shape) at each row's best step.
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


def _rows(lo: Tensor) -> tuple[Tensor, Tensor]:
    """Flat indices of neurons unstable in some sample, and the +-unit coefficient rows on them
    (1, 2u, *shape)."""
    lo_f = lo.flatten(1)
    idx = (lo_f < 0).any(0).nonzero().flatten()
    k = idx.numel()
    rows = lo.new_zeros(2 * k, lo_f.shape[1])
    ar = torch.arange(k, device=lo.device)
    rows[ar, idx] = 1.0
    rows[ar + k, idx] = -1.0
    return idx, rows.reshape((1, 2 * k) + tuple(lo.shape[1:]))


def _init_alpha(lo: Tensor, hi: Tensor, rows: int) -> Tensor:
    """CROWN's adaptive slopes (1 where ``hi > -lo``), one copy per row: (N, rows, *shape)."""
    init = (hi > -lo).to(lo.dtype).unsqueeze(1)
    return init.expand((-1, rows) + tuple(lo.shape[1:])).clone()


def alpha_crown(network: Network, x0: Tensor, threat: LpBall, c: Tensor, d: Tensor | None = None,
                *, steps: int = 20, lr: float = 0.1, intermediate: bool = True,
                bounds: LayerBounds | None = None, deadline: float = math.inf,
                stop_above: float = math.inf) -> AlphaResult:
    """alpha-CROWN lower bounds of ``C f + d`` (and optimised intermediate bounds).

    Args:
        network: a chain IR (float64 for the verifiers).
        x0: (N, *input_shape) centres.
        threat: the set.
        c: (N, R, num_outputs) rows; d: optional (N, R) offsets.
        steps: Adam steps on the slopes.
        lr: Adam's learning rate.
        intermediate: optimise the bounds of every ReLU input that has a ReLU below it too
            (each with its own slopes); otherwise only the final rows' slopes.
        bounds: starting layer bounds (default: CROWN's, with rounding allowances).
        deadline: ``time.perf_counter()`` value at which the optimisation stops early.
        stop_above: stop once every row's bound exceeds this (e.g. the verification
            tolerance: nothing left to prove).

    Returns:
        :class:`AlphaResult`; every bound in it is sound in floating point.
    """
    start = time.perf_counter()
    relus = check_chain(network)
    c = c.to(x0.dtype)
    d = x0.new_zeros(c.shape[:2]) if d is None else d.to(x0.dtype)
    with torch.no_grad():
        if bounds is None:
            bounds = crown_layer_bounds(network, x0, threat, rounding=True)
        best = [(lo.detach().clone(), hi.detach().clone()) for lo, hi in bounds]
    n_out = len(network.ops)
    final = {j: _init_alpha(*best[j], c.shape[1]).requires_grad_(True) for j in relus}
    # intermediate targets: every ReLU with another ReLU below it (the first is CROWN-exact
    # enough: its bound depends on no relaxation)
    inter: dict[int, tuple[Tensor, Tensor, dict[int, Tensor]]] = {}
    if intermediate:
        for k in relus[1:]:
            idx, rows = _rows(best[k][0].masked_fill(best[k][1] <= 0, 0.0))
            if idx.numel():
                inter[k] = (idx, rows, {j: _init_alpha(*best[j], rows.shape[1])
                                        .requires_grad_(True) for j in relus if j < k})
    params = list(final.values()) + [v for _, _, al in inter.values() for v in al.values()]
    opt = Adam([(params, lr)], decay=0.98)
    steps = steps if params else 0
    best_lower = torch.full(c.shape[:2], -math.inf, dtype=x0.dtype, device=x0.device)
    best_alpha = {j: v.detach().clone() for j, v in final.items()}
    done = 0
    for step in range(steps + 1):
        last = step == steps or time.perf_counter() >= deadline
        with torch.enable_grad() if not last else torch.no_grad():
            cur, inter_objective = _bounds_pass(network, x0, threat, best, inter)
            a, const, err = linear_pass(network, c, n_out, cur, final)
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
            for v in params:
                v.clamp_(0.0, 1.0)
        done += 1
    with torch.no_grad():  # the outputs of the ReLUs and affine ops from the tightened inputs
        for i, op in enumerate(network.ops):
            if i + 1 not in relus:
                lo, hi = sound_interval(op, *best[i])
                best[i + 1] = (torch.maximum(best[i + 1][0], lo),
                               torch.minimum(best[i + 1][1], hi))
    inter_alphas = {k: (idx, {j: v.detach() for j, v in al.items()})
                    for k, (idx, _, al) in inter.items()}
    return AlphaResult(best, best_lower, best_alpha, done, time.perf_counter() - start,
                       inter_alphas)


def _bounds_pass(network: Network, x0: Tensor, threat: LpBall, best: LayerBounds,
                 inter: Mapping[int, tuple[Tensor, Tensor, dict[int, Tensor]]]
                 ) -> tuple[LayerBounds, Tensor]:
    """One pass of layer bounds: the optimised rows of each target ReLU's input, intersected
    with the best bounds so far; other ops' inputs from sound intervals (intersected too).
    Also returns the sum of the optimised rows' bounds (what their slopes maximise)."""
    cur: LayerBounds = [best[0]]
    objective = x0.new_zeros(())
    for i, op in enumerate(network.ops):
        lo, hi = cur[i]
        if i in inter:
            idx, rows, al = inter[i]
            a, const, err = linear_pass(network, rows.to(x0.dtype), i, cur, al)
            val = concretize(threat, x0, a, const, err)
            objective = objective + val.sum()
            k = idx.numel()
            lo_f, hi_f = lo.flatten(1), hi.flatten(1)
            new_lo = torch.maximum(lo_f[:, idx], val[:, :k])
            new_hi = torch.minimum(hi_f[:, idx], -val[:, k:])
            lo_f = lo_f.index_copy(1, idx, new_lo)
            hi_f = hi_f.index_copy(1, idx, new_hi)
            lo, hi = lo_f.reshape(lo.shape), hi_f.reshape(hi.shape)
            cur[i] = (lo, hi)
        nxt_lo, nxt_hi = sound_interval(op, lo, hi)
        cur.append((torch.maximum(nxt_lo, best[i + 1][0]), torch.minimum(nxt_hi, best[i + 1][1])))
    return cur, objective
