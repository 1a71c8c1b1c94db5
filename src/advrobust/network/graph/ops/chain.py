"""The chain IR's ops (:mod:`advrobust.network.ops`, :mod:`advrobust.network.relu`) as graph ops.

Linear, Conv2d, AvgPool2d, BatchNorm (eval, per channel), the ``Normalize`` layer and ReLU keep
their implementation where it is; these adapters give them the graph interface and register them
(the chain op stays reachable through :meth:`GraphOp.chain_op`, so a chain graph converts back
to a :class:`~advrobust.network.ir.Network` for the exact methods).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.network.graph.base import (
    SAFETY,
    Bound,
    Call,
    GraphOp,
    NpBound,
    register,
)
from advrobust.network.ops import (
    AffineOp,
    AvgPoolOp,
    ChannelAffineOp,
    ConvOp,
    LinearOp,
    bn_scale_shift,
)
from advrobust.network.relu import ReLUOp

__all__ = ["AffineAdapter", "ReLUAdapter"]


class AffineAdapter(GraphOp):
    """An :class:`~advrobust.network.ops.AffineOp` (``W z + b``) as a graph op."""

    def __init__(self, op: AffineOp, terms: int) -> None:
        super().__init__([op.in_shape], op.out_shape, op.name)
        self.op = op
        self.fan_in = terms
        # back-substitution also sums the fan-out and the bias term <a, b> (out_size products)
        self.terms = max(terms, self.out_size)

    @property
    def mixes(self) -> bool:
        return self.fan_in > 1

    def forward(self, *xs: Tensor) -> Tensor:
        return self.op.forward(xs[0])

    def interval(self, *bounds: Bound) -> Bound:
        return self.op.interval(*bounds[0])

    def magnitude(self, *bounds: Bound) -> Tensor | None:
        return self.op.magnitude(*bounds[0])

    def backward(self, a: Tensor, *bounds: Bound, slopes: Tensor | None = None
                 ) -> tuple[list[Tensor | None], Tensor]:
        return [self.op.backward(a)], self.op.bias_term(a)

    def output_rows(self, part: Tensor, like: Tensor) -> tuple[Tensor, Tensor] | None:
        rows = self.op.rows(part)
        if rows is None:
            return None
        w, b = rows
        w = w.to(like).reshape((part.numel(),) + self.in_shapes[0])
        return w, like.new_zeros(part.numel()) if b is None else b.to(like)

    def encode(self, program: Any, cols: list[np.ndarray], ins: list[NpBound], out: NpBound,
               integer: bool) -> np.ndarray:
        return self.op.encode(program, cols[0], out[0], out[1])

    def chain_op(self) -> AffineOp:
        return self.op


class ReLUAdapter(GraphOp):
    """:class:`~advrobust.network.relu.ReLUOp` (the triangle relaxation) as a graph op; its
    MILP encoding (big-M with one binary per unstable neuron) is exact."""

    nonlinear = True
    branchable = True

    def __init__(self, op: ReLUOp) -> None:
        super().__init__([op.in_shape], op.out_shape, op.name)
        self.op = op

    def forward(self, *xs: Tensor) -> Tensor:
        return self.op.forward(xs[0])

    def interval(self, *bounds: Bound) -> Bound:
        return self.op.interval(*bounds[0])

    def backward(self, a: Tensor, *bounds: Bound, slopes: Tensor | None = None
                 ) -> tuple[list[Tensor | None], Tensor]:
        out, const = self.op.backward(a, *bounds[0], slopes)
        return [out], const

    def rounding_terms(self, dtype: torch.dtype, *bounds: Bound) -> tuple[float, Tensor] | None:
        lo, hi = bounds[0]
        unstable = (lo < 0) & (hi > 0)
        # stable neurons: slopes exactly 0 or 1, intercepts 0 (no rounding)
        mag = torch.where(unstable, torch.maximum(lo.abs(), hi.abs()), torch.zeros_like(lo))
        return self.rounding_gamma(dtype), mag

    def rounding_gamma(self, dtype: torch.dtype) -> float:
        # slopes, products and the intercepts' dot product (a sum over the layer's neurons)
        return SAFETY * (torch.finfo(dtype).eps / 2) * (self.out_size + 8)

    def refine_mask(self, lo: Tensor, hi: Tensor) -> Tensor | None:
        return (lo < 0) & (hi > 0)

    def init_slopes(self, lo: Tensor, hi: Tensor, rows: int) -> Tensor | None:
        init = (hi > -lo).to(lo.dtype).unsqueeze(1)
        return init.expand((-1, rows) + tuple(lo.shape[1:])).clone()

    def clamp_slopes(self, slopes: Tensor, lo: Tensor, hi: Tensor) -> None:
        slopes.clamp_(0, 1)

    def encode(self, program: Any, cols: list[np.ndarray], ins: list[NpBound], out: NpBound,
               integer: bool) -> np.ndarray:
        return self.op.encode(program, cols[0], ins[0][0], ins[0][1], integer)

    def chain_op(self) -> ReLUOp:
        return self.op


def _one_input(call: Call) -> tuple[int, ...]:
    if len(call.data) != 1:
        raise call.fail(f"expected one data input, got {len(call.data)}")
    return call.data[0].shape


@register(modules=(nn.ReLU,), functions=(torch.relu, F.relu), methods=("relu",))
def _relu(call: Call) -> GraphOp:
    return ReLUAdapter(ReLUOp(_one_input(call), call.name))


@register(modules=(nn.Linear,))
def _linear(call: Call) -> GraphOp:
    shape = _one_input(call)
    layer = call.module
    assert isinstance(layer, nn.Linear)
    if len(shape) != 1:
        raise call.fail(f"Linear on inputs of shape {shape}; flatten first")
    op = LinearOp(layer, shape, call.name)
    return AffineAdapter(op, terms=op.in_size)


@register(modules=(nn.Conv2d,))
def _conv(call: Call) -> GraphOp:
    shape = _one_input(call)
    layer = call.module
    assert isinstance(layer, nn.Conv2d)
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        raise call.fail("Conv2d supports only integer zero padding")
    op = ConvOp(layer, shape, call.out_shape, call.name)
    return AffineAdapter(op, terms=int(math.prod(layer.weight.shape[1:])))


@register(modules=(nn.AvgPool2d,))
def _avgpool(call: Call) -> GraphOp:
    shape = _one_input(call)
    layer = call.module
    assert isinstance(layer, nn.AvgPool2d)
    pad = nn.modules.utils._pair(layer.padding)
    if layer.ceil_mode or layer.divisor_override is not None or (
            not layer.count_include_pad and any(pad)):
        raise call.fail("AvgPool2d with ceil_mode, divisor_override or count_include_pad=False "
                        "and padding is not supported")
    op = AvgPoolOp(layer, shape, call.out_shape, call.name)
    return AffineAdapter(op, terms=int(math.prod(op.kernel_size)))


def _channels_ok(call: Call, shape: tuple[int, ...], count: int) -> None:
    if count not in (1, shape[0] if shape else 1):
        raise call.fail(f"{count} channel constants for inputs of shape {shape}")


@register(modules=(nn.BatchNorm1d, nn.BatchNorm2d))
def _batchnorm(call: Call) -> GraphOp:
    shape = _one_input(call)
    layer = call.module
    assert isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d))
    if layer.running_mean is None or layer.running_var is None:
        raise call.fail("batch-norm without running statistics")
    _channels_ok(call, shape, layer.num_features)
    return AffineAdapter(ChannelAffineOp(lambda: bn_scale_shift(layer), shape, call.name),
                         terms=1)


@register(module_names=("Normalize",))
def _normalize(call: Call) -> GraphOp:
    shape = _one_input(call)
    layer = call.module
    mean, std = getattr(layer, "mean", None), getattr(layer, "std", None)
    if not (isinstance(mean, Tensor) and isinstance(std, Tensor)):
        raise call.fail("a Normalize layer needs tensor buffers 'mean' and 'std'")
    _channels_ok(call, shape, mean.numel())

    def params() -> tuple[Tensor, Tensor]:
        m, s = layer.mean, layer.std  # type: ignore[union-attr]
        assert isinstance(m, Tensor) and isinstance(s, Tensor)
        return 1.0 / s, -m / s

    return AffineAdapter(ChannelAffineOp(params, shape, call.name), terms=1)
