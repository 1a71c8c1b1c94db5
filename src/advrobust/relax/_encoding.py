"""One sample's network as an LP / MILP program (shared by the LP relaxation and exact MILP)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

from advrobust.core.threat import LpBall, Norm
from advrobust.errors import InvalidThreatModelError
from advrobust.network.graph.graph import Graph, as_graph
from advrobust.network.ir import Network
from advrobust.relax.ibp import LayerBounds
from advrobust.solvers.program import Program

__all__ = ["Encoding", "check_linear_norm", "encode_sample", "row_cost"]


@dataclass(frozen=True)
class Encoding:
    """A program with the columns of the network's input and output."""

    program: Program
    inputs: np.ndarray
    outputs: np.ndarray


def check_linear_norm(threat: LpBall, owner: str) -> None:
    """LP / MILP encodings represent linf and l1 balls exactly; l2 is quadratic."""
    if threat.norm is Norm.L2:
        raise InvalidThreatModelError(
            f"{owner} supports the norms {{'l1', 'linf'}} (an l2 ball is not linear). Got 'l2' "
            "instead; use CROWN for l2.")


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy().ravel()


def add_l1_ball(program: Program, x: np.ndarray, x0: np.ndarray, eps: float) -> np.ndarray:
    """Add ``t >= |x - x0|``, ``sum t <= eps``; return the columns of ``t``.

    ``t <= eps`` is implied; stating it keeps every column bounded, which the safe dual bound
    of an LP needs."""
    n = x.size
    t = program.add_vars(np.zeros(n), np.full(n, eps))
    import scipy.sparse as sp

    eye = sp.identity(n, format="csr")
    cols = np.concatenate([x, t])
    program.add_rows(sp.hstack([eye, -eye]), cols, -np.inf, x0)  # x - t <= x0
    program.add_rows(sp.hstack([eye, eye]), cols, x0, np.inf)  # x + t >= x0
    program.add_rows(np.ones((1, n)), t, -np.inf, eps)
    return t


def encode_sample(network: Network | Graph, bounds: LayerBounds, index: int, integer: bool,
                  threat: LpBall | None = None, x0: Tensor | None = None, *,
                  upto: int | None = None) -> Encoding:
    """Encode ``network`` on sample ``index`` of ``bounds``: every node's registered op adds
    its own rows (``encode``), chains and graphs alike.

    Args:
        network: the IR (a chain :class:`Network` or a :class:`Graph`).
        bounds: node bounds (N, ...) from CROWN / IBP (``bounds[i]``: the output of node ``i``,
            the input of ``network.ops[i]`` on a chain); the input box is ``bounds[0]``.
        index: the sample.
        integer: exact MILP encodings where the op has one (ReLU: binary phases) or the LP
            relaxation (ReLU: the triangle).
        threat, x0: for an l1 threat, the ball constraint is added around ``x0[index]``.
        upto: encode the nodes up to this one only and return its columns as the outputs
            (default: the graph's output node).

    Returns:
        The program and the columns of the input and output units.

    Raises:
        UnsupportedLayerError: an op without an encoding (named with its node).
    """
    graph = as_graph(network)
    last = graph.output if upto is None else upto
    program = Program()
    lo, hi = bounds[0]
    x = program.add_vars(_np(lo[index]), _np(hi[index]))
    if threat is not None and threat.norm is Norm.L1:
        assert x0 is not None
        add_l1_ball(program, x, _np(x0[index]), threat.eps)
    cols: list[np.ndarray] = [x]
    for i, node in enumerate(graph.nodes[1:last + 1], start=1):
        assert node.op is not None
        ins = [(_np(bounds[j][0][index]), _np(bounds[j][1][index])) for j in node.inputs]
        out = (_np(bounds[i][0][index]), _np(bounds[i][1][index]))
        cols.append(node.op.encode(program, [cols[j] for j in node.inputs], ins, out, integer))
    return Encoding(program, x, cols[last])


def row_cost(encoding: Encoding, c: Tensor) -> np.ndarray:
    """Objective vector (num_vars,) of the spec row ``c`` (num_outputs,) on the outputs."""
    cost = np.zeros(encoding.program.num_vars)
    np.add.at(cost, encoding.outputs, _np(c))
    return cost
