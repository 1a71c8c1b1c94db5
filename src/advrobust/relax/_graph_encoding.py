"""One sample's graph network as an LP program: every node's op adds its own rows."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from advrobust.core.threat import LpBall, Norm
from advrobust.network.graph.graph import Graph
from advrobust.relax._encoding import Encoding, _np, add_l1_ball
from advrobust.relax.dag import GraphBounds
from advrobust.solvers.program import Program

__all__ = ["encode_graph_sample"]


def encode_graph_sample(graph: Graph, bounds: GraphBounds, index: int, integer: bool,
                        threat: LpBall | None = None, x0: Tensor | None = None) -> Encoding:
    """Encode ``graph`` on sample ``index`` of the node ``bounds`` (input box ``bounds[0]``).

    Raises:
        UnsupportedLayerError: an op without an encoding (named with its node).
    """
    program = Program()
    lo, hi = bounds[0]
    x = program.add_vars(_np(lo[index]), _np(hi[index]))
    if threat is not None and threat.norm is Norm.L1:
        assert x0 is not None
        add_l1_ball(program, x, _np(x0[index]), threat.eps)
    cols: list[np.ndarray] = [x]
    for i, node in enumerate(graph.nodes[1:], start=1):
        assert node.op is not None
        ins = [(_np(bounds[j][0][index]), _np(bounds[j][1][index])) for j in node.inputs]
        out = (_np(bounds[i][0][index]), _np(bounds[i][1][index]))
        cols.append(node.op.encode(program, [cols[j] for j in node.inputs], ins, out, integer))
    return Encoding(program, x, cols[graph.output])
