"""Concatenation of data tensors along a per-sample dimension: exact in every view."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from advrobust.network.graph.base import Bound, Call, GraphOp, NpBound, register

__all__ = ["ConcatOp"]


class ConcatOp(GraphOp):
    """``torch.cat(xs, dim)`` with ``dim`` counted without the batch dimension."""

    def __init__(self, in_shapes: list[tuple[int, ...]], dim: int, name: str) -> None:
        out = list(in_shapes[0])
        out[dim] = sum(s[dim] for s in in_shapes)
        super().__init__(in_shapes, tuple(out), name)
        self.dim = dim

    def forward(self, *xs: Tensor) -> Tensor:
        return torch.cat(xs, dim=self.dim + 1)

    def interval(self, *bounds: Bound) -> Bound:
        return self.forward(*(b[0] for b in bounds)), self.forward(*(b[1] for b in bounds))

    def backward(self, a: Tensor, *bounds: Bound, slopes: Tensor | None = None
                 ) -> tuple[list[Tensor | None], Tensor]:
        sizes = [s[self.dim] for s in self.in_shapes]
        return list(a.split(sizes, dim=self.dim + 2)), a.new_zeros(a.shape[:2])

    def encode(self, program: Any, cols: list[np.ndarray], ins: list[NpBound], out: NpBound,
               integer: bool) -> np.ndarray:
        parts = [c.reshape(s) for c, s in zip(cols, self.in_shapes, strict=True)]
        return np.concatenate(parts, axis=self.dim).reshape(-1)


@register(functions=(torch.cat, torch.concat, torch.concatenate))
def _concat(call: Call) -> GraphOp:
    tensors = call.arg(0, "tensors", None)
    if tensors is None:
        tensors = call.kwargs.get("tensors", ())
    if not all(hasattr(t, "node") for t in tensors):
        raise call.fail("concatenation with constant tensors is not supported")
    shapes = [t.shape for t in tensors]
    dim = int(call.arg(1, "dim", 0))
    rank = len(shapes[0]) + 1
    dim = dim + rank if dim < 0 else dim
    if dim == 0:
        raise call.fail("concatenation along the batch dimension is not supported")
    return ConcatOp(shapes, dim - 1, call.name)
