"""Transpose / permute of the per-sample dimensions (the batch dimension stays first): exact."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from advrobust.network.graph.base import Bound, Call, GraphOp, NpBound, register

__all__ = ["TransposeOp"]


class TransposeOp(GraphOp):
    """``out`` dim ``i`` is input dim ``perm[i]`` (per-sample dimensions)."""

    def __init__(self, in_shape: tuple[int, ...], perm: Sequence[int], name: str) -> None:
        super().__init__([in_shape], tuple(in_shape[p] for p in perm), name)
        self.perm = tuple(int(p) for p in perm)
        self.inverse = tuple(self.perm.index(i) for i in range(len(self.perm)))

    def forward(self, *xs: Tensor) -> Tensor:
        return xs[0].permute(0, *(p + 1 for p in self.perm))

    def interval(self, *bounds: Bound) -> Bound:
        lo, hi = bounds[0]
        return self.forward(lo), self.forward(hi)

    def backward(self, a: Tensor, *bounds: Bound, slopes: Tensor | None = None
                 ) -> tuple[list[Tensor | None], Tensor]:
        return [a.permute(0, 1, *(p + 2 for p in self.inverse))], a.new_zeros(a.shape[:2])

    def encode(self, program: Any, cols: list[np.ndarray], ins: list[NpBound], out: NpBound,
               integer: bool) -> np.ndarray:
        return cols[0].reshape(self.in_shapes[0]).transpose(self.perm).reshape(-1)


def _full_dims(call: Call, dims: Sequence[int], rank: int) -> list[int]:
    out = [int(d) + rank if int(d) < 0 else int(d) for d in dims]
    if any(not 0 <= d < rank for d in out):
        raise call.fail(f"dimensions {list(dims)} out of range for rank {rank}")
    return out


@register(functions=(torch.permute, torch.transpose), methods=("permute", "transpose"))
def _transpose(call: Call) -> GraphOp:
    if len(call.data) != 1:
        raise call.fail("a transpose takes one data tensor")
    shape = call.data[0].shape
    rank = len(shape) + 1
    rest = [v for v in call.args[1:]]
    if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
        rest = list(rest[0])
    if not rest:
        rest = list(call.kwargs.get("dims", [call.kwargs.get("dim0"), call.kwargs.get("dim1")]))
    if str(call.target).endswith("transpose") or call.target is torch.transpose:
        d0, d1 = _full_dims(call, rest[:2], rank)
        order = list(range(rank))
        order[d0], order[d1] = order[d1], order[d0]
    else:
        order = _full_dims(call, rest, rank)
    if order[0] != 0:
        raise call.fail("a transpose must keep the batch dimension first")
    return TransposeOp(shape, [d - 1 for d in order[1:]], call.name)
