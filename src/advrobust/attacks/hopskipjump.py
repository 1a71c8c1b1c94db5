"""HopSkipJump: decision-based attack with Monte-Carlo gradient-direction estimates (l2).

Chen, J., Jordan, M. I. and Wainwright, M. J. "HopSkipJumpAttack: A Query-Efficient
Decision-Based Attack", IEEE S&P 2020.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from advrobust.attacks._minnorm import already_adversarial, check_finite_box, check_query_outputs
from advrobust.attacks.base import Attack, AttackOutput, Oracle
from advrobust.attacks.boundary import bisect_to_boundary, is_misclassified, uniform_start
from advrobust.core._validation import check_float, check_int
from advrobust.core.threat import LpBall, Norm

__all__ = ["HopSkipJump"]

_EVAL_ELEMENTS = 1 << 24  # largest number of input elements queried in one forward
_MAX_HALVINGS = 25  # geometric step-size search


def _bview(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


class HopSkipJump(Attack):
    """HopSkipJump (Chen et al., IEEE S&P 2020): decision-based, untargeted, minimum l2.

    Uses only the top-1 decision. From a misclassified start (uniform noise, else the nearest
    input of the batch in another class, as :class:`Boundary`), each
    iteration ``t``: (1) bisects toward ``x`` to the boundary (blend tolerance
    ``theta = gamma / d^{3/2}``); (2) estimates the boundary's normal at that point from
    ``min(max_num_evals, init_num_evals * sqrt(t))`` decisions at Gaussian probes of radius
    ``delta = sqrt(d) * theta * dist`` (``0.1 * (hi - lo)`` at ``t = 1``), with the baseline
    subtracted from the +-1 decisions; (3) steps along that direction by
    ``dist / sqrt(t)``, halved until the point is misclassified (the geometric search). All
    samples move together; probes are evaluated in chunks of at most ``2**24`` input elements.

    The answer is the closest misclassified point found when its l2 distance is within the
    threat's ``eps``, else the clean point (``exhausted``). ``info["queries_per_sample"]``
    counts decisions asked per sample; ``info["black_box"]`` is True (for the sanity checks).

    Args:
        steps: iterations of (bisection, gradient estimate, step).
        init_num_evals: probes at the first iteration.
        max_num_evals: probe cap per iteration.
        gamma: sets the bisection tolerance ``theta = gamma / d^{3/2}``.

    Shapes: ``x`` (N, ...), ``y`` (N,). The threat must be l2 with a bounded box.
    """

    cli_name: ClassVar[str] = "hopskipjump"
    norms: ClassVar[frozenset[Norm]] = frozenset({Norm.L2})
    targeted: ClassVar[bool] = False

    def __init__(self, *, steps: int = 40, init_num_evals: int = 100,
                 max_num_evals: int = 10000, gamma: float = 1.0) -> None:
        name = type(self).__name__
        self.steps = check_int(steps, "steps", name, low=0)
        self.init_num_evals = check_int(init_num_evals, "init_num_evals", name, low=2)
        self.max_num_evals = check_int(max_num_evals, "max_num_evals", name, low=2)
        self.gamma = check_float(gamma, "gamma", name, low=0.0, low_open=True)

    def _run(self, oracle: Oracle, x: Tensor, y: Tensor, threat: LpBall, target: Tensor | None,
             generator: torch.Generator | None, clean_logits: Tensor) -> AttackOutput:
        name = type(self).__name__
        check_query_outputs(clean_logits, name)
        check_finite_box(threat, name)
        done = already_adversarial(clean_logits, y, target, name)
        queries = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        xa, started = uniform_start(oracle, x, y, threat, generator, ~done, queries,
                                    clean_logits.argmax(1))
        d = x[0].numel()
        theta = self.gamma / (d * math.sqrt(d))
        bisections = max(1, math.ceil(math.log2(1.0 / theta)))
        for t in range(1, self.steps + 1):
            xa = bisect_to_boundary(oracle, x, y, xa, started, queries, bisections)
            idx = started.nonzero().flatten()
            if idx.numel() == 0:
                break
            dist = (xa[idx] - x[idx]).flatten(1).norm(dim=1)
            delta = (math.sqrt(d) * theta * dist if t > 1 else
                     torch.full_like(dist, 0.1 * (threat.hi - threat.lo)))
            evals = min(self.max_num_evals, int(self.init_num_evals * math.sqrt(t)))
            direction = self._estimate(oracle, xa[idx], y[idx], delta, evals, threat, generator)
            queries[idx] += evals
            xa[idx] = self._geometric_step(oracle, xa[idx], y[idx], direction,
                                           dist / math.sqrt(t), threat, queries, idx)
        xa = bisect_to_boundary(oracle, x, y, xa, started, queries, bisections)
        ok = started & (threat.norm_of(xa - x) <= threat.eps)
        x_adv = torch.where(_bview(ok, x), xa, x)
        return AttackOutput(x_adv=x_adv, exhausted=~(ok | done),
                            info={"black_box": True, "already_adversarial": done,
                                  "queries_per_sample": queries,
                                  "no_start": ~(started | done)})

    @staticmethod
    def _estimate(oracle: Oracle, xb: Tensor, y: Tensor, delta: Tensor, evals: int,
                  threat: LpBall, generator: torch.Generator | None) -> Tensor:
        """Unit-l2 estimate (m, ...) of the direction into the misclassified side at ``xb``."""
        m, d = xb.shape[0], xb[0].numel()
        u = torch.randn((m, evals, d), generator=generator, device=xb.device, dtype=xb.dtype)
        u = u / u.norm(dim=2, keepdim=True).clamp_min(1e-12)
        probes = threat.clip_box(xb.reshape(m, 1, d) + delta.reshape(m, 1, 1) * u)
        u = (probes - xb.reshape(m, 1, d)) / delta.reshape(m, 1, 1).clamp_min(1e-12)
        flat = probes.reshape(m * evals, *xb.shape[1:])
        chunk = max(1, _EVAL_ELEMENTS // max(1, d))
        labels = y.repeat_interleave(evals)
        phi = torch.cat([is_misclassified(oracle, flat[s:s + chunk], labels[s:s + chunk])
                         for s in range(0, m * evals, chunk)]).reshape(m, evals)
        sign = phi.to(xb.dtype) * 2 - 1
        mean = sign.mean(dim=1, keepdim=True)
        mixed = (mean.abs() < 1).reshape(m, 1)  # all-equal decisions: no baseline
        weights = torch.where(mixed, sign - mean, sign)
        grad = (weights.unsqueeze(2) * u).mean(dim=1)
        grad = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return grad.reshape(xb.shape)

    @staticmethod
    def _geometric_step(oracle: Oracle, xb: Tensor, y: Tensor, direction: Tensor,
                        size: Tensor, threat: LpBall, queries: Tensor, idx: Tensor) -> Tensor:
        """``xb + size * direction``, halving ``size`` per sample until misclassified."""
        out = xb.clone()
        pending = torch.ones(xb.shape[0], dtype=torch.bool, device=xb.device)
        for _ in range(_MAX_HALVINGS):
            rows = pending.nonzero().flatten()
            if rows.numel() == 0:
                break
            cand = threat.clip_box(xb[rows] + _bview(size[rows], xb) * direction[rows])
            adv = is_misclassified(oracle, cand, y[rows])
            queries[idx[rows]] += 1
            out[rows[adv]] = cand[adv]
            pending[rows[adv]] = False
            size = torch.where(pending, size / 2, size)
        return out
