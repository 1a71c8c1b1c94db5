"""The graph IR: any ``nn.Module`` (through torch.fx) or ONNX file as a DAG of registered ops.

See :mod:`advrobust.network.graph.base` for the op interface and the registry,
:func:`build_graph` for the torch.fx builder and :func:`load_onnx_graph` for ONNX files.
"""

from advrobust.network.graph.base import Call, Data, GraphOp, register, supported
from advrobust.network.graph.fx import build_graph
from advrobust.network.graph.graph import Graph, Node

__all__ = ["Call", "Data", "Graph", "GraphOp", "Node", "build_graph", "register", "supported"]
