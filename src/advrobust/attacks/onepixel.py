"""The one-pixel attack: differential evolution on model queries, batched over samples.

Su, J., Vargas, D. V. and Sakurai, K. "One Pixel Attack for Fooling Deep Neural Networks",
IEEE Transactions on Evolutionary Computation 23(5), 2019.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from advrobust.attacks._minnorm import (
    already_adversarial,
    check_query_outputs,
    decision,
    to_probabilities,
)
from advrobust.attacks.base import Attack, AttackOutput, Oracle
from advrobust.core._validation import check_int
from advrobust.core.checks import looks_like_probabilities
from advrobust.core.threat import LpBall, Norm
from advrobust.errors import InvalidParameterError

__all__ = ["OnePixel"]

#: Largest number of input elements evaluated in one forward (population x samples x D).
_EVAL_ELEMENTS = 1 << 24


class OnePixel(Attack):
    """One-pixel attack (Su et al., IEEE TEVC 2019): black-box, l0, by differential evolution.

    A candidate sets ``pixels`` pixels to new values: ``(position, value per channel)`` each.
    Differential evolution (DE/rand/1, F = 0.5, no crossover, as in the paper) evolves a
    population of ``popsize`` candidates per sample for ``iterations`` generations; a child
    replaces its parent when its fitness is better. Fitness: the probability of the true class
    (untargeted, minimised) or of the target (targeted, maximised); softmax of the outputs, or the
    outputs themselves when they already are probabilities. Only forward queries are used.
    Initial positions are uniform, initial values Gaussian around the middle of their range
    (the paper's N(128, 127) on 0..255). Evolution is batched: all samples' populations are
    evaluated together; a sample stops at its first adversarial candidate.

    Pixels: inputs (N, C, H, W) have H*W pixels of C channels; any other shape has one-channel
    pixels, one per element of ``x[i]``.

    Threat: new values lie in the threat's elementwise bounds (the input box intersected with
    ``[x - eps, x + eps]``), so for linf ``eps`` caps the change of each channel and candidates
    are always in the set; for l2 / l1 every candidate is projected onto the set before it is
    queried (which keeps the changed pixels' count). ``info["queries_per_sample"]`` counts the
    forward queries per sample; ``exhausted`` flags samples not broken after ``iterations``;
    ``info["black_box"]`` is True (for the sanity checks).

    Args:
        pixels: number of pixels changed, >= 1.
        popsize: candidates per sample, >= 4.
        iterations: generations of differential evolution.

    Raises:
        InvalidParameterError: at the call, when ``pixels`` exceeds the pixels of an input.
        InvalidInputError: the model's outputs hold NaN or inf.

    Shapes: ``x`` (N, ...), ``y`` / ``target`` (N,).
    """

    cli_name: ClassVar[str] = "onepixel"
    norms: ClassVar[frozenset[Norm]] = frozenset(Norm)
    targeted: ClassVar[bool] = True

    def __init__(self, *, pixels: int = 1, popsize: int = 400, iterations: int = 100) -> None:
        name = type(self).__name__
        self.pixels = check_int(pixels, "pixels", name, low=1)
        self.popsize = check_int(popsize, "popsize", name, low=4)
        self.iterations = check_int(iterations, "iterations", name, low=0)

    def _run(self, oracle: Oracle, x: Tensor, y: Tensor, threat: LpBall, target: Tensor | None,
             generator: torch.Generator | None, clean_logits: Tensor) -> AttackOutput:
        name = type(self).__name__
        check_query_outputs(clean_logits, name)
        channels = x.shape[1] if x.dim() == 4 else 1
        npix = x[0].numel() // channels
        if self.pixels > npix:
            raise InvalidParameterError(
                f"{name}(pixels={self.pixels}) cannot change more pixels than an input has "
                f"({npix}). Lower 'pixels'.")
        done = already_adversarial(clean_logits, y, target, name)
        run = _Evolution(self, oracle, x, y, threat, target, generator,
                         looks_like_probabilities(clean_logits), channels)
        x_adv, found, queries = run.evolve(~done)
        return AttackOutput(x_adv=x_adv, exhausted=~(found | done),
                            info={"black_box": True, "already_adversarial": done,
                                  "queries_per_sample": queries})


class _Evolution:
    """State of one batched differential evolution (samples x population)."""

    def __init__(self, attack: OnePixel, oracle: Oracle, x: Tensor, y: Tensor, threat: LpBall,
                 target: Tensor | None, generator: torch.Generator | None, probs: bool,
                 channels: int) -> None:
        self.a, self.oracle, self.x, self.y = attack, oracle, x, y
        self.threat, self.target, self.gen, self.probs = threat, target, generator, probs
        n = x.shape[0]
        self.c = channels
        lower, upper = threat.input_bounds(x)
        self.lower, self.upper = lower.reshape(n, channels, -1), upper.reshape(n, channels, -1)
        self.npix = self.lower.shape[2]

    def _rand(self, *shape: int) -> Tensor:
        return torch.rand(shape, generator=self.gen, device=self.x.device, dtype=self.x.dtype)

    def _images(self, idx: Tensor, cand: Tensor) -> Tensor:
        """Candidate images (m, pop, ...) for samples ``idx`` and candidates (m, pop, k, 1+C)."""
        m, pop = cand.shape[:2]
        lo = self.lower[idx].unsqueeze(1).expand(m, pop, self.c, self.npix)
        hi = self.upper[idx].unsqueeze(1).expand(m, pop, self.c, self.npix)
        img = self.x[idx].reshape(m, 1, self.c, -1).expand(m, pop, self.c, self.npix).clone()
        for j in range(cand.shape[2]):
            pos = cand[:, :, j, 0].long().clamp(0, self.npix - 1)
            where = pos.reshape(m, pop, 1, 1).expand(m, pop, self.c, 1)
            l, h = lo.gather(3, where), hi.gather(3, where)
            value = l + cand[:, :, j, 1:].unsqueeze(3) * (h - l)
            img.scatter_(3, where, value)
        img = img.reshape(m * pop, *self.x.shape[1:])
        if self.threat.norm is not Norm.LINF:
            img = self.threat.project(self.x[idx].repeat_interleave(pop, dim=0), img)
        return img.reshape(m, pop, *self.x.shape[1:])

    def _fitness(self, idx: Tensor, cand: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Fitness to minimise (m, pop), adversarial mask (m, pop), images (m, pop, ...)."""
        m, pop = cand.shape[:2]
        img = self._images(idx, cand)
        flat = img.reshape(m * pop, *self.x.shape[1:])
        chunk = max(1, _EVAL_ELEMENTS // max(1, self.x[0].numel()))
        out = torch.cat([self.oracle(flat[s:s + chunk]) for s in range(0, m * pop, chunk)])
        prob = to_probabilities(out, self.probs)
        tgt = self.target[idx].repeat_interleave(pop) if self.target is not None else None
        labels = self.y[idx].repeat_interleave(pop)
        cls = tgt if tgt is not None else labels
        p = prob.gather(1, cls.unsqueeze(1)).squeeze(1)
        fit = -p if tgt is not None else p
        adv = decision(out, labels, tgt)
        return fit.reshape(m, pop), adv.reshape(m, pop), img

    def _initial(self, m: int) -> Tensor:
        pop, k = self.a.popsize, self.a.pixels
        pos = self._rand(m, pop, k, 1) * self.npix
        gauss = torch.randn((m, pop, k, self.c), generator=self.gen, device=self.x.device,
                            dtype=self.x.dtype)
        return torch.cat([pos, (0.5 + 0.5 * gauss).clamp(0, 1)], dim=3)

    def _mutants(self, popn: Tensor) -> Tensor:
        """DE/rand/1 with F = 0.5: three distinct random members per child."""
        m, pop = popn.shape[:2]
        r1 = (self._rand(m, pop) * pop).long().clamp_max(pop - 1)
        o2 = 1 + (self._rand(m, pop) * (pop - 1)).long().clamp_max(pop - 2)
        o3 = 1 + (self._rand(m, pop) * (pop - 2)).long().clamp_max(pop - 3)
        o3 = o3 + (o3 >= o2).long()
        def pick(r: Tensor) -> Tensor:
            return popn.gather(1, r.reshape(m, pop, 1, 1).expand_as(popn))

        child = pick(r1) + 0.5 * (pick((r1 + o2) % pop) - pick((r1 + o3) % pop))
        child[..., 0] = child[..., 0].clamp(0, self.npix - 1e-3)
        child[..., 1:] = child[..., 1:].clamp(0, 1)
        return child

    def evolve(self, active: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Run DE on the ``active`` samples: (x_adv, found (N,), queries per sample (N,))."""
        x_adv, n = self.x.clone(), self.x.shape[0]
        found = torch.zeros(n, dtype=torch.bool, device=self.x.device)
        queries = torch.zeros(n, dtype=torch.int64, device=self.x.device)
        idx = active.nonzero().flatten()
        if idx.numel() == 0:
            return x_adv, found, queries
        popn = self._initial(idx.numel())
        fit, adv, img = self._fitness(idx, popn)
        for gen in range(self.a.iterations + 1):
            queries[idx] += self.a.popsize
            hit = adv.any(dim=1)
            first = adv.float().argmax(dim=1)
            rows = hit.nonzero().flatten()
            x_adv[idx[rows]] = img[rows, first[rows]]
            found[idx[rows]] = True
            keep = ~hit
            idx, popn, fit = idx[keep], popn[keep], fit[keep]
            if idx.numel() == 0 or gen == self.a.iterations:
                break
            child = self._mutants(popn)
            cfit, adv, img = self._fitness(idx, child)
            better = cfit < fit
            popn = torch.where(better.reshape(*better.shape, 1, 1), child, popn)
            fit = torch.where(better, cfit, fit)
        return x_adv, found, queries
