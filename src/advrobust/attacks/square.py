"""Square Attack: a score-based black-box attack (Andriushchenko et al., ECCV 2020).

"Square Attack: a query-efficient black-box adversarial attack via random search". A random
search that only reads the model's outputs (no gradients): each query changes one square window
of the current perturbation and keeps the change if the margin loss
``f_y - max_{t != y} f_t`` went down. The window side shrinks with the iteration following the
paper's ``p`` schedule. linf windows are set to ``x +- eps`` per channel; l2 windows receive a
"pseudo-Gaussian" bump and the perturbation's mass is moved between two windows so its l2 norm
stays at ``eps``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor

from advrobust.attacks._minnorm import check_query_outputs
from advrobust.attacks.base import Attack, AttackOutput, Oracle
from advrobust.core._validation import check_float, check_int
from advrobust.core.spec import margin
from advrobust.core.threat import LpBall, Norm
from advrobust.errors import InvalidInputError

__all__ = ["Square", "square_fraction"]

# (fraction of a 10,000-query run reached, divisor of p_init) from the paper's schedule.
_SCHEDULE = ((0.001, 1), (0.005, 2), (0.02, 4), (0.05, 8), (0.1, 16), (0.2, 32), (0.4, 64),
             (0.6, 128), (0.8, 256), (1.0, 512))


def square_fraction(p_init: float, it: int, budget: int) -> float:
    """Fraction ``p`` of the pixels a window covers at iteration ``it`` of ``budget``.

    ``p_init`` is halved at 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 iterations of a
    10,000-query run, rescaled to ``budget``.
    """
    progress = it / max(budget, 1)
    for limit, divisor in _SCHEDULE:
        if progress <= limit:
            return p_init / divisor
    return p_init / 512


def _rectangles(h: int, w: int) -> Tensor:
    """Concentric rectangles: cell value ``sum_{k >= d} 1/(k+1)^2`` with d its Chebyshev
    distance to the centre; the building block of the paper's l2 perturbation."""
    reach = max(h // 2 + 1, w // 2 + 1)
    weights = 1.0 / torch.arange(1, reach + 1, dtype=torch.float64) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[d] = sum_{k >= d} w_k
    rows = (torch.arange(h) - h // 2).abs().unsqueeze(1)
    cols = (torch.arange(w) - w // 2).abs().unsqueeze(0)
    return tail[torch.maximum(rows, cols)]


def _pseudo_gaussian(s: int, generator: torch.Generator | None) -> Tensor:
    """Unit-l2 ``s x s`` bump: positive rectangles on top, negative below, maybe transposed."""
    bump = torch.zeros(s, s, dtype=torch.float64)
    if s // 2:
        bump[: s // 2] = _rectangles(s // 2, s)
    bump[s // 2:] = -_rectangles(s - s // 2, s)
    bump = bump / bump.norm()
    if float(torch.rand(1, generator=generator)) < 0.5:
        bump = bump.t()
    return bump


class Square(Attack):
    """Square Attack (Andriushchenko et al. 2020), score-based black-box, linf and l2.

    Only forward passes are used (``info["black_box"] = True``). Samples stop querying once
    broken. Images are shaped (N, C, H, W); other inputs (N, ...) are searched as a 1 x D
    strip of their flattened features (windows of single features).

    Args:
        queries: query budget per sample and restart, the initial query included (5000 in
            AutoAttack).
        p_init: initial fraction of pixels a square covers (0.8 in AutoAttack's linf setting).
        restarts: runs from fresh random initialisations on the samples still unbroken.

    Returns (in ``AttackResult.info``): ``queries_per_sample`` (N,) int64 forwards spent on each
    sample (<= ``queries * restarts``), ``black_box``; ``exhausted`` flags samples whose budget
    ran out without success.
    """

    cli_name: ClassVar[str] = "square"
    norms: ClassVar[frozenset[Norm]] = frozenset({Norm.LINF, Norm.L2})
    targeted: ClassVar[bool] = True

    def __init__(self, *, queries: int = 5000, p_init: float = 0.8, restarts: int = 1) -> None:
        self.queries = check_int(queries, "queries", "Square", low=1)
        self.p_init = check_float(p_init, "p_init", "Square", low=0.0, high=1.0, low_open=True)
        self.restarts = check_int(restarts, "restarts", "Square", low=1)

    def _run(self, oracle: Oracle, x: Tensor, y: Tensor, threat: LpBall, target: Tensor | None,
             generator: torch.Generator | None, clean_logits: Tensor) -> AttackOutput:
        if x.dim() < 2:
            raise InvalidInputError(
                f"Square needs a batch shaped (N, ...). Got x of shape {tuple(x.shape)}.")
        check_query_outputs(clean_logits, "Square")
        if x.dim() != 4:  # not images: search on the flattened features as a 1 x D strip
            shape = x.shape
            strip = self._run_images(_Reshaped(oracle, shape), x.reshape(shape[0], 1, 1, -1), y,
                                     threat, target, generator, clean_logits)
            return AttackOutput(strip.x_adv.reshape(shape), exhausted=strip.exhausted,
                                info=strip.info)
        return self._run_images(oracle, x, y, threat, target, generator, clean_logits)

    def _run_images(self, oracle: Callable[[Tensor], Tensor], x: Tensor, y: Tensor,
                    threat: LpBall, target: Tensor | None, generator: torch.Generator | None,
                    clean_logits: Tensor) -> AttackOutput:
        """The attack on images (N, C, H, W)."""

        labels = y if target is None else target
        sign = 1.0 if target is None else -1.0

        def score(logits: Tensor, lab: Tensor) -> Tensor:
            # untargeted: f_y - max_{t != y} f_t; targeted: max_{t != target} f_t - f_target
            return sign * margin(logits, lab)

        best, best_score = x.clone(), score(clean_logits, labels)
        spent = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        for _ in range(self.restarts):
            idx = (best_score >= 0).nonzero().flatten()
            if idx.numel() == 0:
                break
            adv, s, used = self._search(oracle, x[idx], labels[idx], score, threat, generator)
            better = s < best_score[idx]
            best[idx[better]] = adv[better]
            best_score[idx] = torch.minimum(best_score[idx], s)
            spent[idx] += used
        return AttackOutput(best, exhausted=best_score >= 0,
                            info={"queries_per_sample": spent, "black_box": True})

    def _search(self, oracle: Callable[[Tensor], Tensor], x: Tensor, labels: Tensor,
                score: Callable[[Tensor, Tensor], Tensor], threat: LpBall,
                generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
        """One random search on the sub-batch ``x``; returns (points, scores, queries used).

        ``score(logits, labels)`` is the margin (negative = success). The still-unbroken
        samples are kept in compact tensors, re-gathered only when one of them breaks.
        """
        cur = self._init(x, threat, generator)
        cur_score = score(oracle(cur), labels)
        used = torch.ones(x.shape[0], dtype=torch.int64, device=x.device)
        rows = (cur_score >= 0).nonzero().flatten()
        xa, ca, sa, la = x[rows], cur[rows], cur_score[rows], labels[rows]
        for it in range(1, self.queries):
            if rows.numel() == 0:
                break
            cand = self._propose(xa, ca, square_fraction(self.p_init, it, self.queries), threat,
                                 generator)
            new = score(oracle(cand), la)
            take = new < sa
            ca = torch.where(take.view(-1, 1, 1, 1), cand, ca)
            sa = torch.where(take, new, sa)
            used[rows] += 1
            if bool((sa < 0).any()):
                cur[rows], cur_score[rows] = ca, sa
                keep = sa >= 0
                rows, xa, ca, sa, la = rows[keep], xa[keep], ca[keep], sa[keep], la[keep]
        cur[rows], cur_score[rows] = ca, sa
        return cur, cur_score, used

    def _init(self, x: Tensor, threat: LpBall, generator: torch.Generator | None) -> Tensor:
        """Vertical stripes of +-eps (linf) or a grid of signed pseudo-Gaussian bumps (l2)."""
        n, c, h, w = x.shape
        if threat.norm is Norm.LINF:
            signs = _signs((n, c, 1, w), x, generator)
            return threat.project(x, x + threat.eps * signs)
        side = max(h // 5, 1)
        delta = torch.zeros_like(x)
        for top in range(0, h - side + 1, side):
            for left in range(0, w - side + 1, side):
                signs = _signs((n, c, 1, 1), x, generator)
                bump = _pseudo_gaussian(side, generator).to(x)
                delta[:, :, top:top + side, left:left + side] = bump * signs
        return threat.project(x, x + _unit(delta) * threat.eps)

    def _propose(self, x: Tensor, cur: Tensor, p: float, threat: LpBall,
                 generator: torch.Generator | None) -> Tensor:
        """A candidate per sample that differs from ``cur`` in one square window."""
        n, c, h, w = x.shape
        if threat.norm is Norm.LINF:
            s = min(max(round(math.sqrt(p * h * w)), 1), max(min(h, w) - 1, 1))
            top = torch.randint(0, h - s + 1, (n, 1, 1, 1), generator=generator, device=x.device)
            left = torch.randint(0, w - s + 1, (n, 1, 1, 1), generator=generator, device=x.device)
            rows = torch.arange(h, device=x.device).view(1, 1, h, 1)
            cols = torch.arange(w, device=x.device).view(1, 1, 1, w)
            window = (rows >= top) & (rows < top + s) & (cols >= left) & (cols < left + s)
            signs = _signs((n, c, 1, 1), x, generator)
            return threat.project(x, torch.where(window, x + threat.eps * signs, cur))
        return self._propose_l2(x, cur, p, threat, generator)

    def _propose_l2(self, x: Tensor, cur: Tensor, p: float, threat: LpBall,
                    generator: torch.Generator | None) -> Tensor:
        """Move the perturbation's mass from window 2 into a fresh bump in window 1."""
        n, c, h, w = x.shape
        s = max(round(math.sqrt(p * h * w)), 3)
        s = min(s + (s % 2 == 0), min(h, w))
        r = torch.randint(0, h - s + 1, (2,), generator=generator).tolist()
        q = torch.randint(0, w - s + 1, (2,), generator=generator).tolist()
        w1 = (slice(None), slice(None), slice(r[0], r[0] + s), slice(q[0], q[0] + s))
        w2 = (slice(None), slice(None), slice(r[1], r[1] + s), slice(q[1], q[1] + s))
        delta = cur - x
        union = torch.zeros_like(delta)
        union[w1], union[w2] = 1.0, 1.0
        norm_img = delta.flatten(1).norm(dim=1).view(n, 1, 1, 1)
        norm_union = (delta * union).flatten(2).norm(dim=2).view(n, c, 1, 1)
        old = delta[w1]
        old = old / old.flatten(2).norm(dim=2).view(n, c, 1, 1).clamp_min(1e-12)
        signs = _signs((n, c, 1, 1), x, generator)
        new = _pseudo_gaussian(s, generator).to(x) * signs + old
        budget = ((threat.eps ** 2 - norm_img ** 2).clamp_min(0) / c + norm_union ** 2).sqrt()
        new = new / new.flatten(2).norm(dim=2).view(n, c, 1, 1).clamp_min(1e-12) * budget
        delta = delta.clone()
        delta[w2] = 0.0
        delta[w1] = new
        return threat.project(x, x + _unit(delta) * threat.eps)


class _Reshaped:
    """``oracle`` on inputs given in another shape of the same size (the strip view)."""

    def __init__(self, oracle: Oracle, shape: torch.Size) -> None:
        self.oracle, self.shape = oracle, shape

    def __call__(self, z: Tensor) -> Tensor:
        return self.oracle(z.reshape((-1,) + tuple(self.shape[1:])))


def _unit(delta: Tensor) -> Tensor:
    """Scale each sample of ``delta`` (N, ...) to unit l2 norm (zero rows stay zero)."""
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta / norms.view((-1,) + (1,) * (delta.dim() - 1))


def _signs(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Uniform random +-1 of ``shape`` with ``like``'s dtype and device."""
    bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
    return bits.to(like.dtype) * 2 - 1

