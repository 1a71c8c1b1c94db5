"""Networks as verifiable IR: affine and ReLU ops with forward, interval, relaxation and
LP / MILP views, built from ``nn.Sequential`` (:func:`from_module`) or ONNX files."""

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
    "LinearOp",
    "Network",
    "Op",
    "ReLUOp",
    "ReluRelaxation",
    "from_module",
]
