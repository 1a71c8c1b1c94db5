"""The hyperbolic tangent, relaxed by tangent / chord lines (see ``_sshape``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.network.graph.base import Call, GraphOp, register
from advrobust.network.graph.ops._sshape import SShapedOp

__all__ = ["TanhOp"]


class TanhOp(SShapedOp):
    """``tanh(x)``."""

    def f(self, x: Tensor) -> Tensor:
        return torch.tanh(x)

    def df(self, x: Tensor) -> Tensor:
        return 1 - torch.tanh(x) ** 2

    def mirror(self, x: Tensor) -> Tensor:
        return torch.tanh(x)


@register(modules=(nn.Tanh,), functions=(torch.tanh, F.tanh), methods=("tanh",))
def _tanh(call: Call) -> GraphOp:
    if len(call.data) != 1:
        raise call.fail("Tanh takes one data tensor")
    return TanhOp(call.data[0].shape, call.name)
