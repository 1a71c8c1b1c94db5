"""Elementwise affine maps with constants: ``x * c``, ``x / c``, ``x + c``, ``x - c``, ``c - x``,
``-x`` (input normalisation written out in a forward, scalings, bias additions)."""

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

__all__ = ["ScaleShiftOp", "constant_affine"]


class ScaleShiftOp(GraphOp):
    """``x * scale + shift`` (or ``x / scale + shift`` when ``divide``), elementwise.

    ``scale`` and ``shift`` are constants broadcastable to one sample's shape; division is kept
    as a division so the op computes what the model computes.
    """

    def __init__(self, shape: tuple[int, ...], scale: Tensor, shift: Tensor, divide: bool,
                 name: str) -> None:
        super().__init__([shape], shape, name)
        self.scale, self.shift, self.divide = scale, shift, divide

    def _mul(self, x: Tensor, scale: Tensor) -> Tensor:
        return x / scale.to(x) if self.divide else x * scale.to(x)

    def forward(self, *xs: Tensor) -> Tensor:
        return self._mul(xs[0], self.scale) + self.shift.to(xs[0])

    def interval(self, *bounds: Bound) -> Bound:
        lo, hi = bounds[0]
        mid = self.forward((hi + lo) / 2)
        rad = self._mul((hi - lo) / 2, self.scale.abs())
        return mid - rad, mid + rad

    def magnitude(self, *bounds: Bound) -> Tensor | None:
        lo, hi = bounds[0]
        return self._mul(torch.maximum(lo.abs(), hi.abs()), self.scale.abs()) + \
            self.shift.abs().to(lo)

    def backward(self, a: Tensor, *bounds: Bound, slopes: Tensor | None = None
                 ) -> tuple[list[Tensor | None], Tensor]:
        const = (a * self.shift.to(a)).flatten(2).sum(-1)
        return [self._mul(a, self.scale)], const

    def encode(self, program: Any, cols: list[np.ndarray], ins: list[NpBound], out: NpBound,
               integer: bool) -> np.ndarray:
        shape = self.in_shapes[0]
        scale = self.scale.double().expand(shape).reshape(-1).numpy()
        coef = 1.0 / scale if self.divide else scale  # the LP's row is the real map
        shift = self.shift.double().expand(shape).reshape(-1).numpy()
        return add_equalities(program, out, [(coef, cols[0])], shift)


def _per_sample(call: Call, c: object, shape: tuple[int, ...]) -> Tensor:
    t = torch.as_tensor(c)
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    full = (1,) + shape
    # a manual broadcast check: torch.broadcast_shapes imports sympy (seconds)
    tail = tuple(t.shape)[::-1]
    ok = len(tail) <= len(full) and all(
        v in (1, f) for v, f in zip(tail, full[::-1], strict=False))
    if not ok:
        raise call.fail(f"a constant of shape {tuple(t.shape)} does not broadcast to one "
                        f"sample's shape {shape} (batch kept first)")
    if not bool(torch.isfinite(t).all()):
        raise call.fail("the constant holds NaN or inf")
    return torch.broadcast_to(t, full)[0].clone()


def constant_affine(call: Call, kind: str) -> GraphOp:
    """The :class:`ScaleShiftOp` of ``call`` (one data argument, one constant)."""
    if len(call.data) != 1:
        raise call.fail(f"'{kind}' of two data tensors is not supported (not linear)")
    shape = call.data[0].shape
    data_first = hasattr(call.arg(0, "input"), "node")
    other = call.arg(1, "other") if data_first else call.arg(0, "input")
    c = _per_sample(call, other, shape)
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    alpha = call.kwargs.get("alpha", 1)
    if kind == "add":
        if data_first:
            return ScaleShiftOp(shape, one, c * alpha, False, call.name)
        return ScaleShiftOp(shape, one * alpha, c, False, call.name)
    if kind == "sub":
        if data_first:
            return ScaleShiftOp(shape, one, -c * alpha, False, call.name)
        return ScaleShiftOp(shape, -one * alpha, c, False, call.name)
    if kind == "mul":
        return ScaleShiftOp(shape, c, zero, False, call.name)
    if not data_first or bool((c == 0).any()) or call.kwargs.get("rounding_mode") is not None:
        raise call.fail("division is supported only as x / c with a non-zero constant c")
    return ScaleShiftOp(shape, c, zero, True, call.name)


@register(functions=(operator.mul, torch.mul, operator.imul), methods=("mul", "mul_"))
def _mul(call: Call) -> GraphOp:
    return constant_affine(call, "mul")


@register(functions=(operator.truediv, torch.div, torch.true_divide, operator.itruediv),
          methods=("div", "div_", "true_divide"))
def _div(call: Call) -> GraphOp:
    return constant_affine(call, "div")


@register(functions=(operator.neg, torch.neg), methods=("neg",))
def _neg(call: Call) -> GraphOp:
    if len(call.data) != 1:
        raise call.fail("negation takes one data tensor")
    shape = call.data[0].shape
    return ScaleShiftOp(shape, -torch.ones(shape, dtype=torch.float64),
                        torch.zeros(shape, dtype=torch.float64), False, call.name)
