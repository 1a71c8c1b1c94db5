"""Interval bound propagation (Gowal et al. 2018, "On the effectiveness of interval bound
propagation for training verifiably robust models").

The passes are plain differentiable tensor code over the live parameters of the network, so
certified training (IBP, CROWN-IBP) back-propagates through them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall
from advrobust.network.graph import Graph
from advrobust.network.ir import Network
from advrobust.network.ops import AffineOp
from advrobust.relax._rounding import (
    abs_dot,
    add_offset,
    input_gamma,
    magnitude,
    op_gamma,
    sound_interval,
)
from advrobust.relax.base import Bounder, Bounds, as_network

__all__ = ["IBP", "LayerBounds", "interval_bounds", "interval_layer_bounds", "spec_interval"]

#: Bounds of the input of every op, then of the output: ``len(network.ops) + 1`` pairs of
#: (N, *shape) tensors.
LayerBounds = list[tuple[Tensor, Tensor]]


def interval_layer_bounds(network: Network, lower: Tensor, upper: Tensor, *,
                          rounding: bool = False) -> LayerBounds:
    """Interval bounds of every op's input and of the output.

    Args:
        network: the IR.
        lower, upper: (N, *input_shape) elementwise input bounds.
        rounding: widen every interval by its rounding allowance (sound in floating point,
            see :mod:`advrobust.relax._rounding`); off for certified training.

    Returns:
        ``len(network.ops) + 1`` pairs ``(lo, hi)``; the last pair bounds the outputs.
    """
    bounds = [(lower, upper)]
    for op in network.ops:
        bounds.append(sound_interval(op, *bounds[-1]) if rounding else op.interval(*bounds[-1]))
    return bounds


def spec_interval(network: Network, bounds: LayerBounds, c: Tensor, *,
                  rounding: bool = False) -> tuple[Tensor, Tensor]:
    """Interval of ``C f`` with ``C`` folded into the last affine op (tighter than ``C [l, u]``).

    Args:
        network: the IR.
        bounds: layer bounds (only the input bounds of the last op are used).
        c: (N, K, num_outputs) spec rows.
        rounding: widen the result by its rounding allowance.

    Returns:
        (N, K) lower and upper bounds of ``C f``.
    """
    last = network.ops[-1] if network.ops else None
    lo, hi = bounds[-2] if isinstance(last, AffineOp) else bounds[-1]
    c = c.to(lo.dtype)
    const = lo.new_zeros(c.shape[:2])
    err = lo.new_zeros(c.shape[:2])
    if isinstance(last, AffineOp):
        if rounding:
            err = op_gamma(last, lo.dtype) * abs_dot(c, magnitude(last, *bounds[-2]))
        const = last.bias_term(c)
        c = last.backward(c)
    a = c.flatten(2)
    mid = ((hi + lo) / 2).flatten(1).unsqueeze(2)
    rad = ((hi - lo) / 2).flatten(1).unsqueeze(2)
    centre = torch.bmm(a, mid).squeeze(2) + const
    spread = torch.bmm(a.abs(), rad).squeeze(2)
    if rounding:
        size = a.shape[2]
        err = err + input_gamma(size, lo.dtype) * abs_dot(
            c, torch.maximum(lo.abs(), hi.abs())) + input_gamma(size, lo.dtype) * const.abs()
        spread = spread + err
    return centre - spread, centre + spread


def interval_bounds(network: Network | nn.Module, lower: Tensor, upper: Tensor,
                    c: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Differentiable interval bounds of the outputs, or of the spec rows ``C f``.

    Use it for IBP certified training: the result depends on the live weights through autograd.

    Args:
        network: a :class:`Network` or a supported ``nn.Sequential`` (converted on the fly).
        lower, upper: (N, *input_shape) elementwise input bounds.
        c: optional (N, K, num_outputs) spec rows, folded into the last affine layer.

    Returns:
        ``(lo, hi)``: (N, num_outputs) without ``c``, else (N, K).
    """
    net = as_network(network, lower.shape[1:])
    bounds = interval_layer_bounds(net, lower, upper)
    if c is None:
        return bounds[-1]
    return spec_interval(net, bounds, c)


class IBP(Bounder):
    """Interval bound propagation: elementwise bounds layer by layer.

    The loosest and fastest bounder; with the spec folded into the last layer as in Gowal et al.
    """

    def __init__(self) -> None:
        pass

    def _bound(self, network: Network, x: Tensor, threat: LpBall, spec: Spec) -> Bounds:
        bounds = interval_layer_bounds(network, *threat.input_bounds(x), rounding=True)
        lower, _ = spec_interval(network, bounds, spec.C, rounding=True)
        return Bounds(add_offset(lower, spec.d))

    def _bound_graph(self, graph: Graph, x: Tensor, threat: LpBall, spec: Spec) -> Bounds:
        from advrobust.relax.dag import graph_interval_bounds, graph_spec_interval

        bounds = graph_interval_bounds(graph, *threat.input_bounds(x), rounding=True)
        lower, _ = graph_spec_interval(graph, bounds, spec.C, rounding=True)
        return Bounds(add_offset(lower, spec.d))
