"""The logistic sigmoid, relaxed by tangent / chord lines (see ``_sshape``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.network.graph.base import Call, GraphOp, register
from advrobust.network.graph.ops._sshape import SShapedOp

__all__ = ["SigmoidOp"]


class SigmoidOp(SShapedOp):
    """``1 / (1 + exp(-x))``."""

    def f(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x)

    def df(self, x: Tensor) -> Tensor:
        s = torch.sigmoid(x)
        return s * (1 - s)

    def mirror(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x) - 1  # -sigmoid(-x), without cancellation issues in the tails


@register(modules=(nn.Sigmoid,), functions=(torch.sigmoid, F.sigmoid), methods=("sigmoid",))
def _sigmoid(call: Call) -> GraphOp:
    if len(call.data) != 1:
        raise call.fail("Sigmoid takes one data tensor")
    return SigmoidOp(call.data[0].shape, call.name)
