"""Interval bound propagation (Gowal et al. 2018, "On the effectiveness of interval bound
propagation for training verifiably robust models").

Chains and graphs take the same pass (:mod:`advrobust.relax.dag`): every node asks its
registered op for its interval and its rounding allowance.

The passes are plain differentiable tensor code over the live parameters of the network, so
certified training (IBP, CROWN-IBP) back-propagates through them.
"""

from __future__ import annotations

from torch import Tensor, nn

from advrobust.core._validation import check_choice
from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall
from advrobust.network.graph import Graph
from advrobust.network.graph.graph import as_graph
from advrobust.network.ir import Network
from advrobust.relax._rounding import add_offset
from advrobust.relax.base import PRECISIONS, Bounder, Bounds, as_ir

__all__ = ["IBP", "LayerBounds", "interval_bounds", "interval_layer_bounds", "spec_interval"]

#: Bounds of the input of every op, then of the output: ``len(network.ops) + 1`` pairs of
#: (N, *shape) tensors.
LayerBounds = list[tuple[Tensor, Tensor]]


def interval_layer_bounds(network: Network | Graph, lower: Tensor, upper: Tensor, *,
                          rounding: bool = False) -> LayerBounds:
    """Interval bounds of every op's input and of the output.

    Args:
        network: the IR (a chain :class:`Network`, or a :class:`Graph`: then one pair per node).
        lower, upper: (N, *input_shape) elementwise input bounds.
        rounding: widen every interval by its rounding allowance (sound in floating point,
            see :mod:`advrobust.relax._rounding`); off for certified training.

    Returns:
        ``len(network.ops) + 1`` pairs ``(lo, hi)``; the last pair bounds the outputs.
    """
    from advrobust.relax.dag import graph_interval_bounds

    return graph_interval_bounds(as_graph(network), lower, upper, rounding=rounding)


def spec_interval(network: Network | Graph, bounds: LayerBounds, c: Tensor, *,
                  rounding: bool = False) -> tuple[Tensor, Tensor]:
    """Interval of ``C f`` with ``C`` folded into the last op when it is linear (tighter than
    ``C [l, u]``).

    Args:
        network: the IR.
        bounds: layer bounds (only those of the last op's inputs are used).
        c: (N, K, num_outputs) spec rows.
        rounding: widen the result by its rounding allowance.

    Returns:
        (N, K) lower and upper bounds of ``C f``.
    """
    from advrobust.relax.dag import graph_spec_interval

    return graph_spec_interval(as_graph(network), bounds, c, rounding=rounding)


def interval_bounds(network: Network | Graph | nn.Module, lower: Tensor, upper: Tensor,
                    c: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Differentiable interval bounds of the outputs, or of the spec rows ``C f``.

    Use it for IBP certified training: the result depends on the live weights through autograd.

    Args:
        network: a :class:`Network`, a :class:`Graph`, or a module (a supported
            ``nn.Sequential``, or any module torch.fx traces into registered ops: residual
            networks, concatenations, sigmoid / tanh ...), converted on the fly.
        lower, upper: (N, *input_shape) elementwise input bounds.
        c: optional (N, K, num_outputs) spec rows, folded into the last linear op.

    Returns:
        ``(lo, hi)``: (N, num_outputs) without ``c``, else (N, K).
    """
    graph = as_graph(as_ir(network, lower.shape[1:]))
    bounds = interval_layer_bounds(graph, lower, upper)
    if c is None:
        return bounds[graph.output]
    return spec_interval(graph, bounds, c)


class IBP(Bounder):
    """Interval bound propagation: elementwise bounds layer by layer.

    The loosest and fastest bounder; with the spec folded into the last layer as in Gowal et al.

    Args:
        precision: dtype of the pass, ``"float64"`` (default) or ``"float32"`` (its own rounding
            allowances keep it sound; about twice as fast where the pass is GEMM-bound, and
            looser; a model whose parameters float32 does not represent is refused).
    """

    def __init__(self, *, precision: str = "float64") -> None:
        self.precision = check_choice(precision, "precision", "IBP", tuple(PRECISIONS))

    def _bound(self, network: Network, x: Tensor, threat: LpBall, spec: Spec) -> Bounds:
        return self._bound_graph(network.graph, x, threat, spec)

    def _bound_graph(self, graph: Graph, x: Tensor, threat: LpBall, spec: Spec) -> Bounds:
        bounds = interval_layer_bounds(graph, *threat.input_bounds(x), rounding=True)
        lower, _ = spec_interval(graph, bounds, spec.C, rounding=True)
        return Bounds(add_offset(lower, spec.d))
