"""Read ONNX graphs (any DAG of supported nodes) as torch modules that the graph builder traces.

Each ONNX node becomes the torch call with the same semantics (Gemm -> ``nn.Linear``, Conv ->
``nn.Conv2d``, Add -> ``+`` ...), so an imported network reaches the verifiers through the same
torch.fx builder and the same op registry as any module: the ONNX route and the module route
cannot disagree. Nodes whose inputs are all constants are folded at import time.

Supported ONNX ops: Gemm, MatMul (constant weight), Conv (2-D, symmetric pads), Relu, LeakyRelu,
Sigmoid, Tanh, Add, Sub, Mul, Div, Neg, Concat, Flatten, Reshape (constant shape), Transpose,
MaxPool, AveragePool, BatchNormalization, Identity, Dropout, Constant; Shape, Gather, Unsqueeze
and Cast only on shapes and constants (folded at import). The ``onnx`` package is
optional: ``pip install 'advrobust[onnx]'``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advrobust.errors import UnsupportedLayerError

__all__ = ["OnnxGraphModule", "load_onnx_graph"]

SUPPORTED = ("Gemm", "MatMul", "Conv", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Add", "Sub",
             "Mul", "Div", "Neg", "Concat", "Flatten", "Reshape", "Transpose", "MaxPool",
             "AveragePool", "BatchNormalization", "Identity", "Dropout", "Constant",
             "Shape (static)", "Gather", "Unsqueeze", "Cast")

_UNARY = {"Relu": nn.ReLU, "Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh}


class OnnxGraphModule(nn.Module):
    """An ONNX graph as a module: layers in ``self.layers``, constants as buffers.

    Attributes:
        input_shape: per-sample input shape (batch dimension dropped).
        input_name, output_name: the graph's data input and output.
        opset: the file's default-domain opset version (0 when it names none).
    """

    def __init__(self, input_name: str, output_name: str, input_shape: tuple[int, ...],
                 opset: int = 0) -> None:
        super().__init__()
        self.input_name, self.output_name = input_name, output_name
        self.input_shape = input_shape
        self.opset = opset
        self.layers = nn.ModuleDict()
        self.steps: list[tuple[str, list[str], str, dict[str, Any]]] = []
        self._constants: dict[str, str] = {}

    def add_constant(self, name: str, value: Tensor) -> None:
        """Register an ONNX constant under ``name`` (as a buffer)."""
        key = f"const_{len(self._constants)}"
        self.register_buffer(key, value.clone())
        self._constants[name] = key

    def is_constant(self, name: str) -> bool:
        return name in self._constants

    def constant(self, name: str) -> Tensor:
        value = getattr(self, self._constants[name])
        assert isinstance(value, Tensor)
        return value

    def _get(self, env: dict[str, Tensor], name: str) -> Tensor:
        return env[name] if name in env else self.constant(name)

    def forward(self, x: Tensor) -> Tensor:
        env = {self.input_name: x}
        for kind, ins, out, attrs in self.steps:
            env[out] = self.run_step(kind, [self._get(env, i) for i in ins], attrs)
        return env[self.output_name]

    def run_step(self, kind: str, xs: list[Tensor], attrs: dict[str, Any]) -> Tensor:
        """One step: a registered layer (``kind`` = its key) or an elementwise / shape op."""
        if kind in self.layers:
            return self.layers[kind](xs[0])  # type: ignore[no-any-return]
        if kind == "Add":
            return xs[0] + xs[1]
        if kind == "Sub":
            return xs[0] - xs[1]
        if kind == "Mul":
            return xs[0] * xs[1]
        if kind == "Div":
            return xs[0] / xs[1]
        if kind == "Neg":
            return -xs[0]
        if kind == "Concat":
            return torch.cat(xs, dim=attrs["axis"])
        if kind == "Flatten":
            return torch.flatten(xs[0], 1)
        if kind == "Transpose":
            return xs[0].permute(*attrs["perm"])
        if kind == "Reshape":
            target = [int(v) for v in attrs["shape"]]
            dims = [xs[0].shape[i] if v == 0 else v for i, v in enumerate(target)]
            return xs[0].reshape([xs[0].shape[0]] + dims[1:])
        raise AssertionError(kind)


def _attrs(onnx: Any, node: Any) -> dict[str, Any]:
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, onnx.TensorProto):
            v = torch.from_numpy(onnx.numpy_helper.to_array(v).copy())
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _opset(proto: Any) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


class _Importer:
    def __init__(self, onnx: Any, proto: Any, source: str) -> None:
        from advrobust.network.onnx import _input_shape

        self.onnx, self.proto, self.source = onnx, proto, source
        name, shape = _input_shape(proto, Path(source))
        outputs = [o.name for o in proto.graph.output]
        if len(outputs) != 1:
            raise UnsupportedLayerError(f"{source}: the graph must have one output; it has "
                                        f"{outputs}.")
        self.module = OnnxGraphModule(name, outputs[0], shape, _opset(proto))
        self.where = ""  # the node being added, as errors name it
        self.alias: dict[str, str] = {}
        for t in proto.graph.initializer:
            arr = onnx.numpy_helper.to_array(t).copy()
            self.module.add_constant(t.name, torch.from_numpy(arr))
        inferred = onnx.shape_inference.infer_shapes(proto)
        self.dims = {v.name: [int(d.dim_value) if d.HasField("dim_value") else -1
                              for d in v.type.tensor_type.shape.dim]
                     for v in list(inferred.graph.value_info) + list(inferred.graph.input)}

    def fail(self, node: Any, why: str) -> UnsupportedLayerError:
        return UnsupportedLayerError(
            f"{self.source}: {self.where}: {why}. Supported ONNX ops: {', '.join(SUPPORTED)}.")

    def const(self, node: Any, name: str, what: str) -> Tensor:
        name = self.alias.get(name, name)
        if not self.module.is_constant(name):
            raise self.fail(node, f"its {what} must be a constant")
        return self.module.constant(name).double()

    def layer(self, node: Any, module: nn.Module, data: str) -> None:
        key = f"layer_{len(self.module.layers)}"
        self.module.layers[key] = module.eval()
        self.step(node, key, [data], {})

    def step(self, node: Any, kind: str, ins: list[str], attrs: dict[str, Any]) -> None:
        ins = [self.alias.get(i, i) for i in ins if i]
        out = node.output[0]
        if all(self.module.is_constant(i) for i in ins):  # fold constants now
            value = self.module.run_step(kind, [self.module.constant(i) for i in ins], attrs)
            self.module.add_constant(out, value.detach())
            return
        self.module.steps.append((kind, ins, out, attrs))

    def add(self, node: Any, index: int) -> None:
        """Import ``graph.node[index]``."""
        from advrobust.network.onnx import describe_node

        self.where = describe_node(node, index)
        op, attrs = node.op_type, _attrs(self.onnx, node)
        handler = getattr(self, f"_{op}", None)
        if op in ("Identity", "Dropout"):
            self.alias[node.output[0]] = self.alias.get(node.input[0], node.input[0])
        elif op == "Constant":
            value = next(iter(attrs.values()))
            self.module.add_constant(node.output[0], torch.as_tensor(value))
        elif op in _UNARY:
            self.layer(node, _UNARY[op](), node.input[0])
        elif op in ("Add", "Sub", "Mul", "Div", "Neg"):
            self.step(node, op, list(node.input), {})
        elif handler is not None:
            handler(node, attrs)
        else:
            raise self.fail(node, "this op is not supported")

    def _Shape(self, node: Any, attrs: dict[str, Any]) -> None:
        name = self.alias.get(node.input[0], node.input[0])
        if self.module.is_constant(name):
            shape = list(self.module.constant(name).shape)
        else:
            shape = [1] + self.dims.get(name, [-1])[1:]  # the batch size stands for any
            if any(d < 0 for d in shape):
                raise self.fail(node, "the shape of a data tensor must be static after the "
                                "batch dimension")
        self.module.add_constant(node.output[0], torch.tensor(shape, dtype=torch.int64))

    def _constant_only(self, node: Any, what: str) -> list[Tensor]:
        return [self.const(node, i, what).long() if i else torch.tensor([]) for i in node.input]

    def _Gather(self, node: Any, attrs: dict[str, Any]) -> None:
        data, idx = self._constant_only(node, "input (shape arithmetic only)")
        out = torch.index_select(data, int(attrs.get("axis", 0)) % max(data.dim(), 1),
                                 idx.reshape(-1) % data.shape[int(attrs.get("axis", 0))])
        self.module.add_constant(node.output[0], out.reshape(idx.shape + data.shape[1:]))

    def _Unsqueeze(self, node: Any, attrs: dict[str, Any]) -> None:
        ins = self._constant_only(node, "input (shape arithmetic only)")
        axes = attrs.get("axes", ins[1].tolist() if len(ins) > 1 else [])
        out = ins[0]
        for a in sorted(int(v) % (out.dim() + len(axes)) for v in axes):
            out = out.unsqueeze(a)
        self.module.add_constant(node.output[0], out)

    def _Cast(self, node: Any, attrs: dict[str, Any]) -> None:
        self.module.add_constant(node.output[0], self._constant_only(node, "input")[0])

    def _LeakyRelu(self, node: Any, attrs: dict[str, Any]) -> None:
        self.layer(node, nn.LeakyReLU(float(attrs.get("alpha", 0.01))), node.input[0])

    def _Concat(self, node: Any, attrs: dict[str, Any]) -> None:
        self.step(node, "Concat", list(node.input), {"axis": int(attrs["axis"])})

    def _Flatten(self, node: Any, attrs: dict[str, Any]) -> None:
        if attrs.get("axis", 1) != 1:
            raise self.fail(node, "only axis=1 is supported")
        self.step(node, "Flatten", [node.input[0]], {})

    def _Transpose(self, node: Any, attrs: dict[str, Any]) -> None:
        self.step(node, "Transpose", [node.input[0]], {"perm": list(attrs["perm"])})

    def _Reshape(self, node: Any, attrs: dict[str, Any]) -> None:
        shape = self.const(node, node.input[1], "shape").long().tolist()
        self._check_batch_kept(node, self.dims.get(self.alias.get(node.input[0], node.input[0])),
                               shape, bool(attrs.get("allowzero", 0)))
        self.step(node, "Reshape", [node.input[0]], {"shape": shape})

    def _check_batch_kept(self, node: Any, dims: list[int] | None, target: list[int],
                          allowzero: bool) -> None:
        """The module reshapes each sample (the batch axis stays first): refuse a Reshape whose
        target, resolved against a statically known input shape, moves the batch axis."""
        if not dims or any(d <= 0 for d in dims) or allowzero:
            return
        resolved = [dims[i] if v == 0 and i < len(dims) else v for i, v in enumerate(target)]
        total = math.prod(dims)
        if resolved.count(-1) == 1:
            known = math.prod(d for d in resolved if d != -1)
            resolved[resolved.index(-1)] = total // max(known, 1)
        if not resolved or resolved[0] != dims[0] or math.prod(resolved) != total:
            raise self.fail(node, f"a reshape of {tuple(dims)} to {tuple(target)} must keep the "
                            "batch dimension first")

    def _linear(self, node: Any, weight: Tensor, bias: Tensor | None, data: str) -> None:
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None).double()
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)  # type: ignore[union-attr]
        self.layer(node, layer, data)

    def _Gemm(self, node: Any, attrs: dict[str, Any]) -> None:
        if attrs.get("transA", 0):
            raise self.fail(node, "transA=1 is not supported")
        b = self.const(node, node.input[1], "weight B")
        weight = (b if attrs.get("transB", 0) else b.T) * float(attrs.get("alpha", 1.0))
        bias = None
        if len(node.input) > 2 and node.input[2]:
            c = self.const(node, node.input[2], "bias C") * float(attrs.get("beta", 1.0))
            if c.numel() not in (1, weight.shape[0]):
                raise self.fail(node, f"bias C of shape {tuple(c.shape)} must broadcast to "
                                f"({weight.shape[0]},)")
            bias = torch.broadcast_to(c.reshape(-1), (weight.shape[0],))
        self._linear(node, weight, bias, node.input[0])

    def _MatMul(self, node: Any, attrs: dict[str, Any]) -> None:
        w = self.const(node, node.input[1], "second operand")
        if w.dim() != 2:
            raise self.fail(node, "the weight must be a matrix")
        self._linear(node, w.T, None, node.input[0])

    def _pads(self, node: Any, attrs: dict[str, Any]) -> tuple[int, int]:
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise self.fail(node, f"auto_pad={attrs['auto_pad']} is not supported")
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if pads[0] != pads[2] or pads[1] != pads[3]:
            raise self.fail(node, f"only symmetric padding is supported; got pads={pads}")
        return int(pads[0]), int(pads[1])

    def _Conv(self, node: Any, attrs: dict[str, Any]) -> None:
        w = self.const(node, node.input[1], "weight")
        if w.dim() != 4:
            raise self.fail(node, "only 2-D convolutions are supported")
        groups = int(attrs.get("group", 1))
        has_bias = len(node.input) > 2 and bool(node.input[2])
        layer = nn.Conv2d(int(w.shape[1]) * groups, int(w.shape[0]),
                          (int(w.shape[2]), int(w.shape[3])),
                          stride=tuple(attrs.get("strides", [1, 1])),
                          padding=self._pads(node, attrs),
                          dilation=tuple(attrs.get("dilations", [1, 1])), groups=groups,
                          bias=has_bias).double()
        with torch.no_grad():
            layer.weight.copy_(w)
            if has_bias:
                layer.bias.copy_(self.const(node, node.input[2], "bias"))  # type: ignore[union-attr]
        self.layer(node, layer, node.input[0])

    def _MaxPool(self, node: Any, attrs: dict[str, Any]) -> None:
        if attrs.get("ceil_mode", 0) or len(node.output) > 1:
            raise self.fail(node, "ceil_mode and the Indices output are not supported")
        k = tuple(attrs["kernel_shape"])
        self.layer(node, nn.MaxPool2d(k, tuple(attrs.get("strides", k)), self._pads(node, attrs),
                                      tuple(attrs.get("dilations", [1, 1]))), node.input[0])

    def _AveragePool(self, node: Any, attrs: dict[str, Any]) -> None:
        if attrs.get("ceil_mode", 0):
            raise self.fail(node, "ceil_mode is not supported")
        k = tuple(attrs["kernel_shape"])
        self.layer(node, nn.AvgPool2d(k, tuple(attrs.get("strides", k)), self._pads(node, attrs),
                                      count_include_pad=bool(attrs.get("count_include_pad", 0))),
                   node.input[0])

    def _BatchNormalization(self, node: Any, attrs: dict[str, Any]) -> None:
        if attrs.get("training_mode", 0):
            raise self.fail(node, "training_mode=1 is not supported")
        gamma, beta, mean, var = (self.const(node, n, "statistics") for n in node.input[1:5])
        rank = len(self.dims.get(node.input[0], [0] * 4))
        cls = nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d
        bn = cls(gamma.numel(), eps=float(attrs.get("epsilon", 1e-5))).double()
        with torch.no_grad():
            bn.weight.copy_(gamma)
            bn.bias.copy_(beta)
            bn.running_mean.copy_(mean)  # type: ignore[union-attr]
            bn.running_var.copy_(var)  # type: ignore[union-attr]
        self.layer(node, bn, node.input[0])


def load_onnx_graph(path: str | Path) -> OnnxGraphModule:
    """Read an ONNX file as a module (float64, eval mode) that IBP and CROWN verify as a graph.

    Args:
        path: the ``.onnx`` file (self-contained).

    Returns:
        The module; ``module.input_shape`` is the per-sample input shape. Its outputs agree with
        onnxruntime on the same inputs to float rounding.

    Raises:
        SolverUnavailableError: the ``onnx`` package is not installed.
        MissingFileError / DataFormatError: no such file / not a valid ONNX model.
        UnsupportedLayerError: an op (named with its node) outside :data:`SUPPORTED`.
    """
    from advrobust.network.onnx import _import_onnx_package, _read_model

    proto = _read_model(Path(path))
    importer = _Importer(_import_onnx_package(), proto, str(path))
    for index, node in enumerate(proto.graph.node):
        importer.add(node, index)
    module = importer.module
    module.output_name = importer.alias.get(module.output_name, module.output_name)
    return module.double().eval()
