"""Build the graph IR from any ``nn.Module`` with ``torch.fx``.

The module is traced symbolically (modules with a registered op are leaves), then run once on
a small example batch to learn every node's shape and the value of every constant. Each call
site that depends on the input becomes a node whose op comes from the registry
(:mod:`advrobust.network.graph.base`); calls on constants only are folded to their values;
Identity / Dropout vanish. Every converted op is checked against the module on the example
batch, so a conversion that does not reproduce the module is refused, never used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn

import advrobust.network.graph.ops  # noqa: F401  (registers every op)
from advrobust.errors import InvalidInputError, UnsupportedLayerError
from advrobust.network.graph.base import Call, Data, GraphOp, lookup, module_factory, supported
from advrobust.network.graph.graph import Graph, Node
from advrobust.network.graph.ops.reshape import IdentityOp

__all__ = ["build_graph"]

#: Batch size of the example run (2, so that a reshape mixing samples is noticed).
_BATCH = 2


class _Tracer(torch.fx.Tracer):
    """Keeps modules with a registered op (e.g. ``Normalize``) as leaves."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_factory(m) is not None or super().is_leaf_module(m, module_qualified_name)


class _Recorder(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[torch.fx.Node, Any] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n] = out
        return out


def _trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        graph = _Tracer().trace(model)
    except Exception as err:  # TraceError, or any error raised by a forward fed proxies
        raise UnsupportedLayerError(
            f"{type(model).__name__} cannot be traced by torch.fx ({type(err).__name__}: {err}). "
            "Data-dependent control flow cannot be traced; export the model to ONNX "
            "(torch.onnx.export(model, x, 'model.onnx', dynamo=False)) and verify the result of "
            "advrobust.network.load_onnx_graph('model.onnx') instead.") from None
    return torch.fx.GraphModule(model, graph)


def _example(model: nn.Module, shape: tuple[int, ...]) -> Tensor:
    ref: Tensor | None = next(iter(model.parameters()), None)
    if ref is None:
        ref = next(iter(model.buffers()), None)
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else \
        torch.get_default_dtype()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((_BATCH,) + shape, generator=gen, dtype=torch.float64)
    return x.to(dtype=dtype, device=None if ref is None else ref.device)


def _site(n: torch.fx.Node) -> str:
    if n.op == "call_module":
        return f"fx node '{n.name}' (module '{n.target}')"
    target = getattr(n.target, "__name__", str(n.target))
    stack = n.meta.get("nn_module_stack") or {}
    owner = next(reversed(stack.values()), None) if stack else None
    where = f", in module '{owner[0]}'" if isinstance(owner, tuple) and owner[0] else ""
    return f"fx node '{n.name}' ({n.op} {target}{where})"


class _Builder:
    def __init__(self, gm: torch.fx.GraphModule, values: dict[torch.fx.Node, Any]) -> None:
        self.gm, self.values = gm, values
        self.index: dict[torch.fx.Node, int] = {}
        self.nodes: list[Node] = []
        self.meta: set[torch.fx.Node] = set()

    def _arg(self, v: Any) -> Any:
        if isinstance(v, torch.fx.Node):
            if v in self.index:
                return Data(self.index[v], self.nodes[self.index[v]].shape)
            return self.values[v]
        if isinstance(v, (list, tuple)):
            return type(v)(self._arg(u) for u in v)
        if isinstance(v, dict):
            return {k: self._arg(u) for k, u in v.items()}
        return v

    def _data_inputs(self, n: torch.fx.Node) -> tuple[bool, bool]:
        deps = n.all_input_nodes
        return any(d in self.index for d in deps), any(d in self.meta for d in deps)

    def add(self, n: torch.fx.Node) -> None:
        if n.op == "placeholder":
            if self.nodes:
                raise UnsupportedLayerError(
                    f"{_site(n)}: the model takes several inputs; only one data input is "
                    "supported")
            x = self.values[n]
            self.index[n] = 0
            self.nodes.append(Node(None, (), tuple(x.shape[1:]), "input"))
            return
        if n.op in ("get_attr", "output"):
            return
        data, meta = self._data_inputs(n)
        value = self.values[n]
        if not data:
            if meta:
                if isinstance(value, Tensor):
                    raise UnsupportedLayerError(
                        f"{_site(n)}: a tensor computed from the input's shape is not supported")
                self.meta.add(n)
            return
        if not isinstance(value, Tensor):
            self.meta.add(n)  # x.size(), x.shape: only reshapes may use them
            return
        self._convert(n, value)

    def _convert(self, n: torch.fx.Node, value: Tensor) -> None:
        module = self.gm.get_submodule(str(n.target)) if n.op == "call_module" else None
        factory = lookup(n.op, n.target, module)
        if factory is None:
            what = type(module).__name__ if module is not None else getattr(
                n.target, "__name__", str(n.target))
            raise UnsupportedLayerError(
                f"{_site(n)}: {what} has no registered op (no relaxation). Supported: "
                f"{', '.join(supported())}.")
        if value.dim() == 0 or value.shape[0] != _BATCH:
            raise UnsupportedLayerError(f"{_site(n)}: its output does not keep the batch "
                                        f"dimension first (shape {tuple(value.shape)})")
        args = tuple(self._arg(a) for a in n.args)
        kwargs = {k: self._arg(v) for k, v in n.kwargs.items()}
        call = Call(n.target if module is None else type(module), module, args, kwargs,
                    tuple(value.shape[1:]), _site(n))
        op = factory(call)
        inputs = tuple(d.node for d in call.data)
        self._check(n, op, inputs, value)
        if type(op) is IdentityOp:
            self.index[n] = inputs[0]
            return
        self.index[n] = len(self.nodes)
        self.nodes.append(Node(op, inputs, op.out_shape, call.name))

    def _check(self, n: torch.fx.Node, op: GraphOp, inputs: Sequence[int], value: Tensor
               ) -> None:
        """The op must reproduce the module's value on the example batch."""
        xs = [self._value_of(i) for i in inputs]
        with torch.no_grad():
            out = op.forward(*xs)
        tol = 1e-5 * (1 + float(value.abs().max())) if value.numel() else 0.0
        if out.shape != value.shape or bool(((out - value).abs() > tol).any()):
            raise UnsupportedLayerError(
                f"{_site(n)}: the converted op {type(op).__name__} does not reproduce the "
                "module's output on an example input (an op used outside its supported form?).")

    def _value_of(self, index: int) -> Tensor:
        for fx_node, i in self.index.items():
            if i == index:
                return self.values[fx_node]  # type: ignore[no-any-return]
        raise AssertionError(index)

    def output(self) -> int:
        out = [n for n in self.gm.graph.nodes if n.op == "output"][0]
        res = out.args[0]
        if not isinstance(res, torch.fx.Node) or res not in self.index:
            raise UnsupportedLayerError(
                f"{type(self.gm).__name__}: the model must return one tensor that depends on "
                f"its input; it returns {res!r}.")
        return self.index[res]


def _prune(nodes: list[Node], output: int) -> tuple[list[Node], int]:
    """Drop nodes the output does not depend on (keeping the input)."""
    keep = {0, output}
    for i in range(output, 0, -1):
        if i in keep:
            keep.update(nodes[i].inputs)
    order = sorted(keep)
    new = {old: k for k, old in enumerate(order)}
    pruned = [Node(nodes[i].op, tuple(new[j] for j in nodes[i].inputs), nodes[i].shape,
                   nodes[i].name) for i in order]
    return pruned, new[output]


def build_graph(model: nn.Module, input_shape: Sequence[int]) -> Graph:
    """The graph IR of ``model`` for inputs of shape ``(N, *input_shape)``.

    Args:
        model: any module whose forward torch.fx can trace; its parameters are referenced,
            not copied; it is run once (no gradients) on an example batch.
        input_shape: shape of one input without the batch dimension, e.g. ``(3, 32, 32)``.

    Returns:
        The graph; ``graph.forward(x)`` equals ``model(x)`` (in the model's current mode).

    Raises:
        UnsupportedLayerError: a call site without a registered op (named with its fx node and
            module path, with the list of what is supported), an op used outside its supported
            form, several data inputs, or a forward torch.fx cannot trace (data-dependent
            control flow: export to ONNX instead).
        InvalidInputError: the model cannot take inputs of ``input_shape``.
    """
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s <= 0 for s in shape):
        raise InvalidInputError(f"'input_shape' must be positive sizes; got {tuple(input_shape)}")
    # a bare registered layer as the root would be traced into; wrap it to keep it a leaf
    gm = _trace(nn.Sequential(model) if module_factory(model) is not None else model)
    recorder = _Recorder(gm)
    try:
        with torch.no_grad():
            recorder.run(_example(model, shape))
    except (RuntimeError, ValueError, IndexError) as err:
        raise InvalidInputError(
            f"{type(model).__name__} cannot take inputs of shape {shape}: {err}") from None
    builder = _Builder(gm, recorder.values)
    for n in gm.graph.nodes:
        builder.add(n)
    nodes, output = _prune(builder.nodes, builder.output())
    assert math.prod(nodes[0].shape) == math.prod(shape)
    return Graph(nodes, output, module=model)
