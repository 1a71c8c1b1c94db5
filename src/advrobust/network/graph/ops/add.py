"""Sum and difference of two data tensors (residual connections): ``x + s y``, ``s = +-1``."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from advrobust.network.graph.base import (
    Bound,
    Call,
    GraphOp,
    NpBound,
    add_equalities,
    register,
)
from advrobust.network.graph.ops.scale import constant_affine

__all__ = ["AddOp"]


class AddOp(GraphOp):
    """``x + sign * y`` for two data tensors of the same shape."""

    terms = 2

    def __init__(self, shape: tuple[int, ...], sign: float, name: str) -> None:
        super().__init__([shape, shape], shape, name)
        self.sign = sign

    def forward(self, *xs: Tensor) -> Tensor:
        return xs[0] + xs[1] if self.sign > 0 else xs[0] - xs[1]

    def interval(self, *bounds: Bound) -> Bound:
        (l1, h1), (l2, h2) = bounds
        if self.sign > 0:
            return l1 + l2, h1 + h2
        return l1 - h2, h1 - l2

    def magnitude(self, *bounds: Bound) -> Tensor | None:
        (l1, h1), (l2, h2) = bounds
        return torch.maximum(l1.abs(), h1.abs()) + torch.maximum(l2.abs(), h2.abs())

    def backward(self, a: Tensor, *bounds: Bound, slopes: Tensor | None = None
                 ) -> tuple[list[Tensor | None], Tensor]:
        return [a, a if self.sign > 0 else -a], a.new_zeros(a.shape[:2])

    def encode(self, program: Any, cols: list[np.ndarray], ins: list[NpBound], out: NpBound,
               integer: bool) -> np.ndarray:
        n = cols[0].size
        return add_equalities(program, out, [(np.ones(n), cols[0]),
                                             (np.full(n, self.sign), cols[1])], np.zeros(n))


def _binary(sign: float) -> object:
    def factory(call: Call) -> GraphOp:
        if len(call.data) == 1:
            return constant_affine(call, "add" if sign > 0 else "sub")
        if len(call.data) != 2 or call.data[0].shape != call.data[1].shape:
            raise call.fail("addition of data tensors needs two tensors of the same shape; got "
                            f"{[d.shape for d in call.data]}")
        alpha = call.kwargs.get("alpha", 1)
        if alpha != 1:
            raise call.fail("add / sub with alpha != 1 on two data tensors is not supported")
        return AddOp(call.data[0].shape, sign, call.name)
    return factory


register(functions=(operator.add, torch.add, operator.iadd), methods=("add", "add_"))(
    _binary(1.0))  # type: ignore[arg-type]
register(functions=(operator.sub, torch.sub, operator.isub), methods=("sub", "sub_"))(
    _binary(-1.0))  # type: ignore[arg-type]
