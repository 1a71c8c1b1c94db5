"""The registered ops: importing this package registers every one of them.

Adding an op: write one file here (a :class:`~advrobust.network.graph.base.GraphOp` subclass and
a factory decorated with :func:`~advrobust.network.graph.base.register`) and import it below.
"""

from advrobust.network.graph.ops import (  # noqa: F401  (each import is a registry line)
    add,
    chain,
    concat,
    leaky_relu,
    maxpool,
    reshape,
    scale,
    sigmoid,
    tanh,
    transpose,
)
from advrobust.network.graph.ops.add import AddOp
from advrobust.network.graph.ops.chain import AffineAdapter, ReLUAdapter
from advrobust.network.graph.ops.concat import ConcatOp
from advrobust.network.graph.ops.leaky_relu import LeakyReLUOp
from advrobust.network.graph.ops.maxpool import MaxPoolOp
from advrobust.network.graph.ops.reshape import IdentityOp, ReshapeOp
from advrobust.network.graph.ops.scale import ScaleShiftOp
from advrobust.network.graph.ops.sigmoid import SigmoidOp
from advrobust.network.graph.ops.tanh import TanhOp
from advrobust.network.graph.ops.transpose import TransposeOp

__all__ = ["AddOp", "AffineAdapter", "ConcatOp", "IdentityOp", "LeakyReLUOp", "MaxPoolOp",
           "ReLUAdapter", "ReshapeOp", "ScaleShiftOp", "SigmoidOp", "TanhOp", "TransposeOp"]
