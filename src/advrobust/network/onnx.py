"""Import feed-forward ONNX networks (VNN-COMP style) as plain ``torch.nn.Sequential`` models.

The result uses only standard layers (``Flatten``, ``Linear``, ``Conv2d``, ``ReLU``,
``Unflatten``), so every attack and verifier of advrobust runs on it unchanged. Supported ONNX
ops: Flatten (axis 1), Reshape (constant shape), Gemm (any ``alpha``/``beta``/``transB``,
``transA=0``), MatMul with a constant weight, Conv (2-D, symmetric padding), Relu,
BatchNormalization, Identity, Dropout, Constant, and Add / Sub / Mul / Div with a constant (bias
additions and input normalisation; folded into the neighbouring affine layer where possible).
A chain (one data input, each node consuming the previous node's output) becomes that
Sequential; any other graph, or a chain with ops outside that list (Sigmoid, Tanh, MaxPool, ...),
is read by :func:`advrobust.network.load_onnx_graph` (the graph IR's importer) instead.

The ``onnx`` package is optional: ``pip install 'advrobust[onnx]'``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from advrobust.errors import (
    DataFormatError,
    MissingFileError,
    SolverUnavailableError,
    UnsupportedLayerError,
)
from advrobust.network import _onnx_ops as ops

__all__ = ["OnnxNetwork", "import_onnx", "load_onnx"]


@dataclass(frozen=True)
class OnnxNetwork:
    """An imported ONNX network.

    Attributes:
        model: the network in eval mode (float32, CPU): an ``nn.Sequential`` of standard
            layers for a chain, else an
            :class:`~advrobust.network.graph.onnx.OnnxGraphModule` (a DAG, or ops such as
            Sigmoid / Tanh / MaxPool that IBP and CROWN read through the graph IR).
        input_shape: per-sample input shape of the ONNX graph (batch dimension dropped), e.g.
            ``(784, 1)`` for the VNN-COMP mnist_fc networks. The model accepts any input of
            ``(N, *input_shape)``; if it starts with a Flatten, any shape of the same size.
        output_shape: per-sample output shape, e.g. ``(10,)``.
        input_name: name of the graph's data input.
        opset: the default-domain opset version of the file.
    """

    model: nn.Module
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    input_name: str
    opset: int

    @property
    def input_size(self) -> int:
        """Number of input values per sample (D)."""
        return int(np.prod(self.input_shape))


def describe_node(node: Any, index: int) -> str:
    """How errors name ``graph.node[index]``: by its name when it has one (the name is optional
    in ONNX: exporters often leave it empty), always with its op type, its position and its
    outputs, so that an unnamed node is found too."""
    outputs = list(node.output)
    out = f"output {outputs[0]!r}" if len(outputs) == 1 else f"outputs {outputs}"
    if node.name:
        return f"ONNX node {node.name!r} ({node.op_type}, graph.node[{index}], {out})"
    return f"ONNX node graph.node[{index}] ({node.op_type}, unnamed, {out})"


def _import_onnx_package() -> Any:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - onnx is installed for the tests
        raise SolverUnavailableError(
            "Reading ONNX networks needs the optional 'onnx' package. Install it with "
            "pip install 'advrobust[onnx]' (or pip install onnx).") from exc
    return onnx


def _read_model(path: Path) -> Any:
    """Load and check the file without following external-data references."""
    onnx = _import_onnx_package()
    if not path.is_file():
        raise MissingFileError(f"ONNX file not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(proto)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, ...
        raise DataFormatError(f"{path} is not a valid ONNX model: {exc}") from exc
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise DataFormatError(
                f"{path}: tensor {tensor.name!r} is stored in an external file; only "
                "self-contained ONNX files are supported.")
    return proto


def _input_shape(proto: Any, path: Path) -> tuple[str, tuple[int, ...]]:
    """Name and per-sample shape of the single non-initializer graph input."""
    inits = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise UnsupportedLayerError(
            f"{path}: the graph must have exactly one data input; it has "
            f"{[i.name for i in inputs]}.")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = [int(d.dim_value) if d.HasField("dim_value") else -1 for d in dims]
    if len(shape) < 2 or any(s <= 0 for s in shape[1:]):
        raise UnsupportedLayerError(
            f"{path}: input {inputs[0].name!r} must have a batch dimension and fixed sizes "
            f"after it; got shape {shape}.")
    return inputs[0].name, tuple(shape[1:])


def _to_tensor(onnx: Any, proto: Any) -> Tensor:
    return torch.from_numpy(np.array(onnx.numpy_helper.to_array(proto)))


def _opset(proto: Any) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def import_onnx(path: str | Path) -> OnnxNetwork:
    """Read an ONNX file into an :class:`OnnxNetwork` (the model plus its input shape).

    Args:
        path: the ``.onnx`` file (self-contained; external data is refused).

    Returns:
        The network; its outputs agree with ONNX semantics to float32 rounding.

    Raises:
        SolverUnavailableError: the ``onnx`` package is not installed.
        MissingFileError: no such file (a FileNotFoundError).
        DataFormatError: the file is not a valid ONNX model.
        UnsupportedLayerError: an op (named with its node) or a graph structure (several
            inputs, branches) that has no equivalent among the supported layers.
    """
    path = Path(path)
    proto = _read_model(path)
    onnx = _import_onnx_package()
    name, shape = _input_shape(proto, path)
    constants = {t.name: _to_tensor(onnx, t) for t in proto.graph.initializer}
    builder = ops.ChainBuilder(name, shape, constants, str(path))
    model: nn.Module
    try:
        for index, node in enumerate(proto.graph.node):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            attrs = {k: _to_tensor(onnx, v) if isinstance(v, onnx.TensorProto) else v
                     for k, v in attrs.items()}
            builder.add(node.op_type, describe_node(node, index), list(node.input),
                        list(node.output), attrs)
        model = builder.finish([o.name for o in proto.graph.output])
    except UnsupportedLayerError:
        # not a chain of standard layers: the graph importer (branches, sigmoid, tanh, ...),
        # whose error names the node when it cannot read the file either
        from advrobust.network.graph.onnx import load_onnx_graph

        model = load_onnx_graph(path).float()
    out_shape = _output_shape(model, shape)
    return OnnxNetwork(model=model, input_shape=shape, output_shape=out_shape, input_name=name,
                       opset=_opset(proto))


def _output_shape(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    with torch.no_grad():
        out: Tensor = model(torch.zeros((1, *shape)))
    return tuple(out.shape[1:])


def load_onnx(path: str | Path) -> nn.Module:
    """Read an ONNX network as a torch module (eval mode): an ``nn.Sequential`` of standard
    layers for a chain, else the graph importer's module.

    See :func:`import_onnx` for the supported ops and errors; use it when you also need the
    network's input shape.
    """
    return import_onnx(path).model
