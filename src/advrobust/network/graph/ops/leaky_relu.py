"""LeakyReLU ``max(z, 0) + slope * min(z, 0)`` with ``0 <= slope <= 1``: the triangle relaxation
(upper chord; lower line through the origin with an optimisable slope in [slope, 1])."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.network.graph.base import Bound, Call, GraphOp, register
from advrobust.network.graph.ops._elementwise import LineRelaxedOp, Lines

__all__ = ["LeakyReLUOp"]


class LeakyReLUOp(LineRelaxedOp):
    """Elementwise LeakyReLU with ``negative_slope`` in [0, 1]."""

    def __init__(self, shape: tuple[int, ...], slope: float, name: str) -> None:
        super().__init__(shape, name)
        self.slope = float(slope)

    def forward(self, *xs: Tensor) -> Tensor:
        return F.leaky_relu(xs[0], self.slope)

    def interval(self, *bounds: Bound) -> Bound:
        lo, hi = bounds[0]
        return self.forward(lo), self.forward(hi)

    def magnitude(self, *bounds: Bound) -> Tensor | None:
        lo, hi = bounds[0]
        return torch.maximum(lo.abs(), hi.abs())  # slope * z is rounded

    def lines(self, lo: Tensor, hi: Tensor, slopes: Tensor | None = None) -> Lines:
        a = self.slope
        active, dead = lo >= 0, hi <= 0
        unstable = ~(active | dead)
        width = torch.where(unstable, hi - lo, torch.ones_like(hi))
        chord = torch.where(unstable, (hi - a * lo) / width, torch.ones_like(hi))
        ku = torch.where(dead, torch.full_like(hi, a), chord)
        bu = torch.where(unstable, hi - chord * hi, torch.zeros_like(hi))
        if slopes is None:
            low = torch.where(hi > -lo, torch.ones_like(hi), torch.full_like(hi, a))
        else:
            low = slopes.clamp(a, 1.0)
        kl = torch.where(active, torch.ones_like(hi), torch.where(dead, ku, low))
        return kl, torch.zeros_like(hi), ku, bu

    def refine_mask(self, lo: Tensor, hi: Tensor) -> Tensor | None:
        return (lo < 0) & (hi > 0)

    def init_slopes(self, lo: Tensor, hi: Tensor, rows: int) -> Tensor | None:
        init = torch.where(hi > -lo, torch.ones_like(hi), torch.full_like(hi, self.slope))
        return init.unsqueeze(1).expand((-1, rows) + tuple(lo.shape[1:])).clone()

    def clamp_slopes(self, slopes: Tensor, lo: Tensor, hi: Tensor) -> None:
        slopes.clamp_(self.slope, 1.0)


@register(modules=(nn.LeakyReLU,), functions=(F.leaky_relu,))
def _leaky_relu(call: Call) -> GraphOp:
    if len(call.data) != 1:
        raise call.fail("LeakyReLU takes one data tensor")
    if call.module is not None:
        slope = float(call.module.negative_slope)  # type: ignore[arg-type]
    else:
        slope = float(call.arg(1, "negative_slope", 0.01))
    if not 0.0 <= slope <= 1.0:
        raise call.fail(f"LeakyReLU needs 0 <= negative_slope <= 1; got {slope}")
    return LeakyReLUOp(call.data[0].shape, slope, call.name)
