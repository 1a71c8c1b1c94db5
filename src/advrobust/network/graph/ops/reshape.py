"""Reshapes (Flatten, Unflatten, view, reshape, squeeze / unsqueeze) and Identity / Dropout.

A reshape that keeps the batch dimension first moves no value: forward, interval and the
backward pass are reshapes, exact in floating point. Identity (and Dropout, which is the
identity in eval mode) is elided by the graph builder.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from advrobust.network.graph.base import Bound, Call, GraphOp, NpBound, register
from advrobust.network.ops import FlattenOp

__all__ = ["IdentityOp", "ReshapeOp"]


class ReshapeOp(GraphOp):
    """``x.reshape(N, *out_shape)``: same values in row-major order."""

    def forward(self, *xs: Tensor) -> Tensor:
        return xs[0].reshape((xs[0].shape[0],) + self.out_shape)

    def interval(self, *bounds: Bound) -> Bound:
        lo, hi = bounds[0]
        return self.forward(lo), self.forward(hi)

    def backward(self, a: Tensor, *bounds: Bound, slopes: Tensor | None = None
                 ) -> tuple[list[Tensor | None], Tensor]:
        return [a.reshape(a.shape[:2] + self.in_shapes[0])], a.new_zeros(a.shape[:2])

    def encode(self, program: Any, cols: list[np.ndarray], ins: list[NpBound], out: NpBound,
               integer: bool) -> np.ndarray:
        return cols[0]

    def chain_op(self) -> FlattenOp | None:
        if len(self.out_shape) != 1:
            return None
        return FlattenOp(self.in_shapes[0], self.out_shape, self.name)


class IdentityOp(ReshapeOp):
    """The identity (nn.Identity, nn.Dropout in eval mode, ``Tensor.contiguous``)."""


@register(modules=(nn.Flatten, nn.Unflatten), functions=(torch.flatten, torch.reshape,
                                                          torch.squeeze, torch.unsqueeze),
          methods=("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze"))
def _reshape(call: Call) -> GraphOp:
    if len(call.data) != 1:
        raise call.fail("a reshape takes one data tensor")
    shape = call.data[0].shape
    if math.prod(shape) != math.prod(call.out_shape):
        raise call.fail(f"the reshape from {shape} to {call.out_shape} does not keep the batch "
                        "dimension first")
    if shape == call.out_shape:
        return IdentityOp([shape], shape, call.name)
    return ReshapeOp([shape], call.out_shape, call.name)


# ``Tensor.double()``: a cast to float64 is exact (and every bound pass runs in float64)
@register(modules=(nn.Identity, nn.Dropout), methods=("contiguous", "double"))
def _identity(call: Call) -> GraphOp:
    if len(call.data) != 1:
        raise call.fail("expected one data input")
    return IdentityOp([call.data[0].shape], call.data[0].shape, call.name)
