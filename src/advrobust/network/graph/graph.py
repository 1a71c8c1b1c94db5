"""The graph IR: nodes in topological order, each an op applied to earlier nodes' outputs.

Node 0 is the network input; every other node holds a :class:`GraphOp` and the indices of its
data inputs (a DAG: residual additions and concatenations read several earlier nodes; a chain
is the special case where every node reads the one before it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from advrobust.errors import UnsupportedLayerError
from advrobust.network.graph.base import GraphOp

__all__ = ["Graph", "Node", "as_graph"]


@dataclass(frozen=True)
class Node:
    """One node: its op (None for the input), its data inputs and its output shape."""

    op: GraphOp | None
    inputs: tuple[int, ...]
    shape: tuple[int, ...]
    name: str


class Graph:
    """A network as a DAG of registered ops.

    Args:
        nodes: topologically ordered; ``nodes[0]`` is the input (op None).
        output: index of the output node.
        module: the module it was built from (its parameters are referenced, not copied).
    """

    def __init__(self, nodes: Sequence[Node], output: int, module: nn.Module | None = None
                 ) -> None:
        self.nodes = list(nodes)
        self.output = output
        self.module = module
        assert self.nodes and self.nodes[0].op is None
        for i, node in enumerate(self.nodes[1:], start=1):
            assert node.op is not None and all(j < i for j in node.inputs), node
        self.input_shape = self.nodes[0].shape
        self.output_shape = self.nodes[output].shape
        self.consumers: list[list[int]] = [[] for _ in self.nodes]
        for i, node in enumerate(self.nodes):
            for j in node.inputs:
                self.consumers[j].append(i)

    @property
    def num_outputs(self) -> int:
        """Number of output units (classes)."""
        return math.prod(self.output_shape)

    @property
    def is_chain(self) -> bool:
        """True if every node reads exactly the node before it and the last node is the output."""
        return self.output == len(self.nodes) - 1 and all(
            node.inputs == (i - 1,) for i, node in enumerate(self.nodes) if i > 0)

    def ops(self) -> list[GraphOp]:
        """The ops of nodes 1.. in order."""
        return [n.op for n in self.nodes[1:] if n.op is not None]

    def forward(self, x: Tensor) -> Tensor:
        """Run the graph on a batch (N, *input_shape) -> (N, *output_shape)."""
        values: list[Tensor] = [x]
        for node in self.nodes[1:]:
            assert node.op is not None
            values.append(node.op.forward(*(values[j] for j in node.inputs)))
        return values[self.output]

    __call__ = forward

    def needs_bounds(self, index: int) -> bool:
        """True if a consumer of node ``index`` is nonlinear (its relaxation needs the bounds)."""
        return any(self.nodes[c].op.nonlinear for c in self.consumers[index]  # type: ignore[union-attr]
                   if self.nodes[c].op is not None)

    def to_chain(self) -> object | None:
        """The chain :class:`~advrobust.network.ir.Network` with the same ops, or None when the
        graph is not a chain of ops the chain IR has (then the exact methods cannot run)."""
        from advrobust.network.ir import Network

        if not self.is_chain:
            return None
        chain = [n.op.chain_op() for n in self.nodes[1:] if n.op is not None]
        if any(op is None for op in chain):
            return None
        return Network(chain, self.input_shape, module=self.module)

    def first_unchainable(self) -> Node | None:
        """The first node that keeps the graph from being a chain IR (for error messages)."""
        for i, node in enumerate(self.nodes[1:], start=1):
            if node.inputs != (i - 1,) or node.op is None or node.op.chain_op() is None:
                return node
        return None

    def require_chain(self, who: str) -> object:
        """:meth:`to_chain` or an UnsupportedLayerError naming the node ``who`` cannot handle."""
        chain = self.to_chain()
        if chain is not None:
            return chain
        node = self.first_unchainable()
        what = "the graph's output is not its last node" if node is None else (
            f"node {node.name} ({type(node.op).__name__}, inputs {list(node.inputs)})")
        raise UnsupportedLayerError(
            f"{who} handles only chains of Linear / Conv2d / BatchNorm / AvgPool / Flatten / "
            f"Normalize / ReLU layers; it cannot handle {what}. Use IBP, CROWN, the LP or the MILP "
            "for this graph.")

    def __len__(self) -> int:
        return len(self.nodes)

    def __repr__(self) -> str:
        inner = ",\n  ".join(f"{i}: {n.name} {type(n.op).__name__ if n.op else 'Input'}"
                             f"{list(n.inputs)} -> {n.shape}" for i, n in enumerate(self.nodes))
        return f"Graph(output={self.output}, nodes=[\n  {inner}\n])"


def as_graph(ir: Graph | Any) -> Graph:
    """``ir`` itself if it is a :class:`Graph`, else its ``graph`` view (a chain
    :class:`~advrobust.network.ir.Network` carries one)."""
    return ir if isinstance(ir, Graph) else ir.graph
