"""Import ONNX networks (VNN-COMP style): chains as plain ``torch.nn.Sequential`` models.

Every file is parsed once, by the graph importer (:func:`advrobust.network.load_onnx_graph`, its
supported ops and errors). When the graph is a chain -- one data input, each node consuming the
previous node's output -- of Flatten (axis 1), Reshape (constant shape), Gemm, MatMul with a
constant weight, Conv (2-D, symmetric padding), Relu, BatchNormalization, Identity, Dropout,
Constant and Add / Sub / Mul / Div / Neg with a constant, the result is a float32 Sequential of
standard layers (``Flatten``, ``Linear``, ``Conv2d``, ``ReLU``, ``Unflatten``), the elementwise
constants folded into the neighbouring affine layer where possible (bias additions, batch-norms,
input normalisation), so every attack and verifier of advrobust runs on it unchanged. Any other
graph (branches, Sigmoid, Tanh, MaxPool, ...) is the graph importer's module, in float32.

The ``onnx`` package is optional: ``pip install 'advrobust[onnx]'``.
"""

from __future__ import annotations

from collections.abc import Callable
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

__all__ = ["OnnxNetwork", "import_onnx", "load_onnx", "onnx_runtime"]


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
        path: the file it was read from.
    """

    model: nn.Module
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    input_name: str
    opset: int
    path: str = ""

    @property
    def input_size(self) -> int:
        """Number of input values per sample (D)."""
        return int(np.prod(self.input_shape))

    def runtime(self) -> Callable[[Tensor], Tensor] | None:
        """The file's own outputs under onnxruntime, the format's reference runtime (what
        VNN-COMP checks counterexamples with): a function from inputs ``(N, *input_shape)`` to
        float64 outputs ``(N, num_outputs)``, the session made on its first call; None when
        the optional ``onnxruntime`` package is not installed
        (``pip install 'advrobust[onnxruntime]'``). :func:`~advrobust.evaluation.verify.
        verify_property` takes it as ``reference`` and reports a counterexample only if the
        outputs there are unsafe too."""
        return onnx_runtime(self.path, self.input_name) if self.path else None


def onnx_runtime(path: str | Path, input_name: str | None = None
                 ) -> Callable[[Tensor], Tensor] | None:
    """onnxruntime on the ONNX file ``path`` as a function from inputs ``(N, *input_shape)`` to
    float64 outputs ``(N, num_outputs)`` (see :meth:`OnnxNetwork.runtime`); None when the
    optional ``onnxruntime`` package is not installed.

    Args:
        path: the ``.onnx`` file.
        input_name: the graph's data input (default: its only input without an initializer).
    """
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return None
    return _Runtime(str(path), input_name)  # imported on the first call (a sat answer)


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
               "tensor(float16)": np.float16}


class _Runtime:
    """onnxruntime on one file, one thread (a checker's evaluation, not a fast path)."""

    def __init__(self, path: str, input_name: str | None) -> None:
        self.path, self.input_name = path, input_name
        self._session: Any = None

    def __call__(self, x: Tensor) -> Tensor:
        import onnxruntime as ort

        if self._session is None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            options.log_severity_level = 3
            self._session = ort.InferenceSession(self.path, options,
                                                 providers=["CPUExecutionProvider"])
        inputs = self._session.get_inputs()
        if self.input_name is not None:
            inputs = [i for i in inputs if i.name == self.input_name]
        if len(inputs) != 1:
            raise UnsupportedLayerError(f"{self.path}: onnxruntime sees the inputs "
                                        f"{[i.name for i in self._session.get_inputs()]}; the "
                                        "runtime check feeds one data input.")
        inp = inputs[0]
        dtype = _ORT_DTYPES.get(inp.type)
        if dtype is None:
            raise UnsupportedLayerError(f"{self.path}: input {inp.name!r} has type {inp.type}; "
                                        "the runtime check feeds float inputs only.")
        rows = []
        for sample in x.detach().cpu():  # one at a time: the file may fix the batch size at 1
            out = self._session.run(None, {inp.name: sample.numpy().astype(dtype)[None]})[0]
            rows.append(torch.from_numpy(np.asarray(out, dtype=np.float64)).reshape(-1))
        return torch.stack(rows)


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
    from advrobust.network._onnx_chain import as_chain
    from advrobust.network.graph.onnx import load_onnx_graph

    path = Path(path)
    graph = load_onnx_graph(path)  # the one ONNX parser; its errors name the node
    chain = as_chain(graph, str(path))
    model: nn.Module = chain if chain is not None else graph.float()
    shape, name = graph.input_shape, graph.input_name
    out_shape = _output_shape(model, shape)
    return OnnxNetwork(model=model, input_shape=shape, output_shape=out_shape, input_name=name,
                       opset=graph.opset, path=str(path))


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
