"""The boundary attack: a decision-based random walk along the decision boundary (l2).

Brendel, W., Rauber, J. and Bethge, M. "Decision-Based Adversarial Attacks: Reliable Attacks
Against Black-Box Machine Learning Models", ICLR 2018.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from advrobust.attacks._minnorm import (
    already_adversarial,
    check_finite_box,
    check_query_outputs,
    decision,
    flat_view,
)
from advrobust.attacks.base import Attack, AttackOutput, Oracle
from advrobust.core._validation import check_choice, check_float, check_int
from advrobust.core.threat import LpBall, Norm

__all__ = ["Boundary", "bisect_to_boundary", "is_misclassified", "uniform_start"]

_INIT_TRIALS = 100  # uniform-noise draws per sample to find a starting adversarial
_INIT_BISECTIONS = 20  # line search from the starting point toward the clean input
_ADAPT_EVERY = 10  # steps between step-size adaptations (the paper's success statistics)
_ADAPT_FACTOR = 1.5
_MIN_SOURCE_STEP = 1e-7  # a sample whose source step shrinks below this has converged


def _bview(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def is_misclassified(oracle: Oracle, pts: Tensor, y: Tensor) -> Tensor:
    """One batched query: (n,) bool, top-1 decision differs from ``y``."""
    return decision(oracle(pts), y, None)


def uniform_start(oracle: Oracle, x: Tensor, y: Tensor, threat: LpBall,
                  generator: torch.Generator | None, todo: Tensor, queries: Tensor,
                  clean_pred: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """A misclassified starting point per sample (N, ...), and which samples have one (N,).

    Uniform noise in the box, up to ``_INIT_TRIALS`` draws per sample; samples still without one
    take the nearest (l2) other input of the batch whose clean prediction ``clean_pred`` differs
    from their label (a point the model already puts in another class).
    """
    xa, started = x.clone(), torch.zeros_like(todo)
    for _ in range(_INIT_TRIALS):
        idx = (todo & ~started).nonzero().flatten()
        if idx.numel() == 0:
            break
        u = torch.rand(x[idx].shape, generator=generator, device=x.device, dtype=x.dtype)
        noise = threat.lo + u * (threat.hi - threat.lo)
        adv = is_misclassified(oracle, noise, y[idx])
        queries[idx] += 1
        xa[idx[adv]] = noise[adv]
        started[idx[adv]] = True
    idx = (todo & ~started).nonzero().flatten()
    if clean_pred is not None and idx.numel():
        dist = torch.cdist(flat_view(x[idx]), flat_view(x))
        other = clean_pred.unsqueeze(0) != y[idx].unsqueeze(1)
        dist = dist.masked_fill(~other, float("inf"))
        best, j = dist.min(dim=1)
        found = torch.isfinite(best)
        xa[idx[found]] = x[j[found]]
        started[idx[found]] = True
    return xa, started


def bisect_to_boundary(oracle: Oracle, x: Tensor, y: Tensor, xa: Tensor, which: Tensor,
                       queries: Tensor, iterations: int = _INIT_BISECTIONS) -> Tensor:
    """Move ``xa`` toward ``x`` along their segment, staying misclassified (samples ``which``)."""
    idx = which.nonzero().flatten()
    if idx.numel() == 0:
        return xa
    x0, far = x[idx], xa[idx]
    low = torch.zeros(idx.numel(), dtype=x.dtype, device=x.device)  # fraction toward far
    high = torch.ones_like(low)
    for _ in range(iterations):
        mid = (low + high) / 2
        adv = is_misclassified(oracle, x0 + _bview(mid, x0) * (far - x0), y[idx])
        high, low = torch.where(adv, mid, high), torch.where(adv, low, mid)
    queries[idx] += iterations
    out = xa.clone()
    out[idx] = x0 + _bview(high, x0) * (far - x0)
    return out


class Boundary(Attack):
    """Boundary attack (Brendel et al., ICLR 2018): decision-based, untargeted, minimum l2.

    Uses only the model's top-1 decision. It starts from uniform noise in the threat's input box
    that is misclassified (up to 100 draws per sample; failing that, the nearest other input of
    the batch that the model puts in another class), moves it toward the clean input by
    bisection along the line between them, then walks along the boundary: each step draws a
    Gaussian direction orthogonal to ``x - x_adv`` of relative size ``spherical_step`` (staying
    on the sphere around ``x``), then moves toward ``x`` by ``source_step`` times the current
    distance; the candidate is kept when it is still adversarial. Every 10 steps both step sizes
    adapt per sample from the success rates (times 1.5 above 50%, divided below 20%), as in the
    paper. Both candidates of a step are queried in one batched forward over all samples.

    The threat's ``eps`` is the ceiling: the answer is the closest adversarial found when its
    l2 distance is within ``eps``; otherwise the clean point (unsuccessful, ``exhausted``).
    ``info["queries_per_sample"]`` counts the model queries per sample,
    ``info["no_start"]`` the samples for which no misclassified start was found. Samples already
    misclassified are returned unchanged with a warning. ``info["black_box"]`` is True (only
    decisions are used), for :func:`advrobust.evaluation.sanity_checks`.

    Args:
        steps: maximum walk steps per sample.
        spherical_step: initial relative size of the orthogonal step.
        source_step: initial relative step toward the clean input.
        init: how to find a starting adversarial; only ``"uniform"`` (noise in the box).

    Shapes: ``x`` (N, ...), ``y`` (N,). The threat must be l2 with a bounded box.
    """

    cli_name: ClassVar[str] = "boundary"
    norms: ClassVar[frozenset[Norm]] = frozenset({Norm.L2})
    targeted: ClassVar[bool] = False

    def __init__(self, *, steps: int = 5000, spherical_step: float = 0.01,
                 source_step: float = 0.01, init: str = "uniform") -> None:
        name = type(self).__name__
        self.steps = check_int(steps, "steps", name, low=0)
        self.spherical_step = check_float(spherical_step, "spherical_step", name, low=0.0,
                                          low_open=True)
        self.source_step = check_float(source_step, "source_step", name, low=0.0, low_open=True)
        self.init = check_choice(init, "init", name, ["uniform"])

    def _run(self, oracle: Oracle, x: Tensor, y: Tensor, threat: LpBall, target: Tensor | None,
             generator: torch.Generator | None, clean_logits: Tensor) -> AttackOutput:
        name = type(self).__name__
        check_query_outputs(clean_logits, name)
        check_finite_box(threat, name)
        done = already_adversarial(clean_logits, y, target, name)
        queries = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        xa, started = uniform_start(oracle, x, y, threat, generator, ~done, queries,
                                    clean_logits.argmax(1))
        xa = bisect_to_boundary(oracle, x, y, xa, started, queries)
        xa = self._walk(oracle, x, y, xa, started, threat, generator, queries)
        ok = started & (threat.norm_of(xa - x) <= threat.eps)
        x_adv = torch.where(_bview(ok, x), xa, x)
        return AttackOutput(x_adv=x_adv, exhausted=~(ok | done),
                            info={"black_box": True, "already_adversarial": done,
                                  "queries_per_sample": queries,
                                  "no_start": ~(started | done)})

    def _candidates(self, x: Tensor, xa: Tensor, sph: Tensor, src: Tensor, threat: LpBall,
                    generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """The spherical candidate and the full step (orthogonal, then toward ``x``)."""
        diff = flat_view(x - xa)
        dist = diff.norm(dim=1, keepdim=True).clamp_min(1e-12)
        unit = diff / dist
        eta = torch.randn(diff.shape, generator=generator, device=x.device, dtype=x.dtype)
        eta = eta - (eta * unit).sum(1, keepdim=True) * unit
        eta = eta / eta.norm(dim=1, keepdim=True).clamp_min(1e-12) * sph.unsqueeze(1) * dist
        on_sphere = flat_view(x) + (eta - diff) / (1 + sph.unsqueeze(1) ** 2).sqrt()
        on_sphere = threat.clip_box(on_sphere)
        toward = flat_view(x) - on_sphere
        new_dist = toward.norm(dim=1, keepdim=True).clamp_min(1e-12)
        length = (src.unsqueeze(1) * dist + new_dist - dist).clamp_min(0) / new_dist
        cand = threat.clip_box(on_sphere + length * toward)
        return on_sphere.reshape(x.shape), cand.reshape(x.shape)

    def _walk(self, oracle: Oracle, x: Tensor, y: Tensor, xa: Tensor, started: Tensor,
              threat: LpBall, generator: torch.Generator | None, queries: Tensor) -> Tensor:
        n = x.shape[0]
        sph = torch.full((n,), self.spherical_step, dtype=x.dtype, device=x.device)
        src = torch.full_like(sph, self.source_step)
        sph_hits, step_hits = torch.zeros_like(sph), torch.zeros_like(sph)
        xa = xa.clone()
        for step in range(1, self.steps + 1):
            idx = (started & (src > _MIN_SOURCE_STEP)).nonzero().flatten()
            if idx.numel() == 0:
                break
            on_sphere, cand = self._candidates(x[idx], xa[idx], sph[idx], src[idx], threat,
                                               generator)
            adv = is_misclassified(oracle, torch.cat([on_sphere, cand]), y[idx].repeat(2))
            queries[idx] += 2
            m = idx.numel()
            sph_ok, cand_ok = adv[:m], adv[m:]
            closer = flat_view(cand - x[idx]).norm(dim=1) < flat_view(xa[idx] - x[idx]).norm(dim=1)
            accept = cand_ok & closer
            xa[idx[accept]] = cand[accept]
            sph_hits[idx] += sph_ok.to(x.dtype)
            step_hits[idx] += cand_ok.to(x.dtype)
            if step % _ADAPT_EVERY == 0:
                sph, src = self._adapt(sph, src, sph_hits / _ADAPT_EVERY,
                                       step_hits / _ADAPT_EVERY)
                sph_hits.zero_()
                step_hits.zero_()
        return xa

    @staticmethod
    def _adapt(sph: Tensor, src: Tensor, p_sph: Tensor, p_step: Tensor) -> tuple[Tensor, Tensor]:
        """The paper's step-size control from the recent success rates (per sample)."""
        f = _ADAPT_FACTOR
        sph_scale = torch.where(p_sph > 0.5, f, torch.where(p_sph < 0.2, 1 / f, 1.0))
        src = src * sph_scale
        sph = sph * sph_scale
        src = src * torch.where(p_step > 0.5, f, torch.where(p_step < 0.2, 1 / f, 1.0))
        return sph, src
