"""Linear bounds of S-shaped functions (convex below 0, concave above): sigmoid, tanh.

Upper line on ``[l, u]`` (Zhang et al. 2018, CROWN, general activations):

- ``u <= 0`` (convex part): the chord;
- ``l >= 0`` (concave part): the tangent at the midpoint;
- ``l < 0 < u``: the tangent at the smallest ``d`` in ``[0, u]`` whose tangent passes above
  ``(l, f(l))`` (found by bisection; the tangent's value at ``l`` grows with ``d`` since
  ``f'' <= 0`` there), and the chord when even ``d = u`` does not (then ``f'(u)`` exceeds the
  chord's slope, so ``f - chord`` grows on ``[0, u]`` and is convex on ``[l, 0]``).

The lower line is the upper line of ``g(x) = -f(-x)`` (S-shaped too) on ``[-u, -l]``, mirrored.
Every line is sound in exact arithmetic; the op's rounding allowance covers its computation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from advrobust.network.graph.base import Bound
from advrobust.network.graph.ops._elementwise import LineRelaxedOp, Lines

__all__ = ["SShapedOp", "upper_line"]

Fn = Callable[[Tensor], Tensor]

#: Bisection steps for the tangent point (each halves the gap to the tightest feasible tangent).
_BISECT = 24


def _tangent(f: Fn, df: Fn, d: Tensor) -> tuple[Tensor, Tensor]:
    k = df(d)
    return k, f(d) - k * d


def upper_line(f: Fn, df: Fn, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Slope and intercept of a line above ``f`` on ``[lo, hi]`` (elementwise)."""
    flo, fhi = f(lo), f(hi)
    width = hi - lo
    wide = width > 0
    k_chord = torch.where(wide, (fhi - flo) / torch.where(wide, width, torch.ones_like(width)),
                          torch.zeros_like(width))
    b_chord = torch.where(wide, flo - k_chord * lo, torch.maximum(flo, fhi))
    k_mid, b_mid = _tangent(f, df, (lo + hi) / 2)
    mixed = (lo < 0) & (hi > 0)
    left, right = torch.zeros_like(hi), hi.clamp(min=0)
    for _ in range(_BISECT):
        mid = (left + right) / 2
        k, b = _tangent(f, df, mid)
        ok = k * lo + b >= flo
        right = torch.where(ok, mid, right)
        left = torch.where(ok, left, mid)
    k_d, b_d = _tangent(f, df, right)
    tangent_ok = k_d * lo + b_d >= flo
    k = torch.where(hi <= 0, k_chord, k_mid)
    b = torch.where(hi <= 0, b_chord, b_mid)
    k = torch.where(mixed, torch.where(tangent_ok, k_d, k_chord), k)
    b = torch.where(mixed, torch.where(tangent_ok, b_d, b_chord), b)
    return k, b


class SShapedOp(LineRelaxedOp):
    """An increasing S-shaped elementwise function; subclasses give ``f``, ``df``, ``mirror``."""

    #: Ulps of error of the function itself (libm-grade implementations are within a few).
    terms = 16

    def f(self, x: Tensor) -> Tensor:
        """The function itself (elementwise)."""
        raise NotImplementedError(f"{type(self).__name__} must define f()")

    def df(self, x: Tensor) -> Tensor:
        """Its derivative (elementwise)."""
        raise NotImplementedError(f"{type(self).__name__} must define df()")

    def mirror(self, x: Tensor) -> Tensor:
        """``g(x) = -f(-x)``."""
        return -self.f(-x)

    def forward(self, *xs: Tensor) -> Tensor:
        return self.f(xs[0])

    def interval(self, *bounds: Bound) -> Bound:
        lo, hi = bounds[0]
        return self.f(lo), self.f(hi)

    def magnitude(self, *bounds: Bound) -> Tensor | None:
        lo, hi = bounds[0]
        tiny = torch.finfo(lo.dtype).tiny / self.gamma(lo.dtype)
        return torch.maximum(self.f(lo).abs(), self.f(hi).abs()) + tiny

    def lines(self, lo: Tensor, hi: Tensor, slopes: Tensor | None = None) -> Lines:
        ku, bu = upper_line(self.f, self.df, lo, hi)
        kg, bg = upper_line(self.mirror, lambda x: self.df(-x), -hi, -lo)
        return kg, -bg, ku, bu
