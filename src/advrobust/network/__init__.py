"""Networks as verifiable IR: affine and ReLU ops with forward, interval, relaxation and
LP / MILP views, built from ``nn.Sequential`` (:func:`from_module`) or ONNX files; and the graph
IR (:mod:`advrobust.network.graph`: any module via torch.fx, any ONNX DAG via
:func:`load_onnx_graph`, over the op registry)."""

from advrobust.network.graph import Graph, build_graph
from advrobust.network.graph.onnx import load_onnx_graph
from advrobust.network.ir import Network, from_module
from advrobust.network.ops import (
    AffineOp,
    AvgPoolOp,
    ChannelAffineOp,
    ConvOp,
    FlattenOp,
    LinearOp,
    Op,
)
from advrobust.network.relu import ReLUOp, ReluRelaxation

__all__ = [
    "AffineOp",
    "AvgPoolOp",
    "ChannelAffineOp",
    "ConvOp",
    "FlattenOp",
    "Graph",
    "LinearOp",
    "Network",
    "Op",
    "ReLUOp",
    "ReluRelaxation",
    "build_graph",
    "from_module",
    "load_onnx_graph",
]
