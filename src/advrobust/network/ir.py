"""The verifiable IR: a network as a sequence of affine and ReLU ops, built from ``nn.Sequential``.

:func:`from_module` walks a (nested) ``nn.Sequential`` and turns every layer into an op from
:mod:`advrobust.network.ops` / :mod:`advrobust.network.relu` through the op registry
(:mod:`advrobust.network.graph.ops`: the one table of conversions and their checks, which the
torch.fx and ONNX graph builders use too; a registered op without a chain form, e.g. Tanh,
is refused here and verified through the graph IR). Batch-norm layers right after a
linear or convolutional layer are folded into it (at call time, from the live buffers); other
batch-norm and normalisation layers become per-channel affine ops. Identity and Dropout (eval)
vanish. Anything else raises :class:`~advrobust.errors.UnsupportedLayerError` with its position.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

import advrobust.network.graph.ops  # noqa: F401  (registers every op)
from advrobust.errors import InvalidInputError, UnsupportedLayerError
from advrobust.network.graph.base import Call, Data, module_factory
from advrobust.network.graph.ops.reshape import IdentityOp
from advrobust.network.ops import Op

if TYPE_CHECKING:
    from advrobust.network.graph.base import GraphOp
    from advrobust.network.graph.graph import Graph

__all__ = ["Network", "from_module"]

SUPPORTED = ("Flatten", "Linear", "Conv2d", "ReLU", "BatchNorm1d", "BatchNorm2d", "AvgPool2d",
             "Normalize", "Identity", "Dropout")


class Network:
    """A feed-forward network as a list of ops: affine maps and ReLUs.

    Args:
        ops: the ops in order; each op's ``in_shape`` is the previous op's ``out_shape``.
        input_shape: the shape of one input, without the batch dimension.
        module: the module the ops were built from (its parameters are referenced, not copied).
    """

    def __init__(self, ops: Sequence[Op], input_shape: tuple[int, ...],
                 module: nn.Module | None = None) -> None:
        self.ops = list(ops)
        self.input_shape = tuple(input_shape)
        self.module = module
        shape = self.input_shape
        for op in self.ops:
            assert op.in_shape == shape, f"{op}: expected input shape {shape}"
            shape = op.out_shape
        self.output_shape = shape
        self._graph: Graph | None = None

    @property
    def graph(self) -> Graph:
        """The same network as a chain :class:`~advrobust.network.graph.Graph` of registered
        ops (node ``i + 1`` carries ``ops[i]``, so ``bounds[i]`` is the input of ``ops[i]`` in
        both views): every bound pass and encoding asks these graph ops, never the op types."""
        if self._graph is None:
            from advrobust.network.graph.graph import Graph, Node

            nodes = [Node(None, (), self.input_shape, "input")]
            for i, op in enumerate(self.ops):
                nodes.append(Node(op.to_graph_op(), (i,), op.out_shape, op.name))
            self._graph = Graph(nodes, len(self.ops), module=self.module)
        return self._graph

    @property
    def graph_ops(self) -> list[GraphOp]:
        """The graph op of every op, in order (``graph_ops[i]`` carries ``ops[i]``)."""
        return self.graph.ops()

    @property
    def num_outputs(self) -> int:
        """Number of output units (classes)."""
        return math.prod(self.output_shape)

    @property
    def relu_indices(self) -> list[int]:
        """Positions of the ReLU ops."""
        return [i for i, op in enumerate(self.graph_ops) if op.nonlinear]

    def forward(self, x: Tensor) -> Tensor:
        """Run the ops on a batch (N, *input_shape) -> (N, *output_shape)."""
        for op in self.ops:
            x = op.forward(x)
        return x

    __call__ = forward

    def __len__(self) -> int:
        return len(self.ops)

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(op) for op in self.ops)
        return f"Network(input_shape={self.input_shape}, ops=[\n  {inner}\n])"


def _leaves(module: nn.Module, path: str) -> Iterator[tuple[str, nn.Module]]:
    """Depth-first (position, layer) pairs of a nested ``nn.Sequential``."""
    if isinstance(module, nn.Sequential):
        for name, child in module.named_children():
            yield from _leaves(child, f"{path}.{name}" if path else name)
    else:
        yield path or "<root>", module


def _unsupported(path: str, layer: nn.Module, why: str = "") -> UnsupportedLayerError:
    reason = f" ({why})" if why else ""
    return UnsupportedLayerError(
        f"Layer {type(layer).__name__} at position '{path}' is not supported by the verifier"
        f"{reason}. Supported layers: {', '.join(SUPPORTED)}, in a (nested) nn.Sequential.")


def _out_shape(layer: nn.Module, shape: tuple[int, ...], path: str) -> tuple[int, ...]:
    """The layer's output shape, from one zero input run in eval mode (a training-mode
    batch-norm would update its statistics; the layer's mode is restored)."""
    training = layer.training
    try:
        layer.eval()
        with torch.no_grad():
            p = next(iter(layer.parameters()), None)
            probe = torch.zeros((1,) + shape) if p is None else \
                torch.zeros((1,) + shape, dtype=p.dtype, device=p.device)
            out = layer(probe)
    except (RuntimeError, ValueError) as err:
        raise InvalidInputError(
            f"Layer {type(layer).__name__} at position '{path}' cannot take inputs of shape "
            f"{shape}: {err}") from None
    finally:
        layer.train(training)
    return tuple(out.shape[1:])


def _convert(path: str, layer: nn.Module, shape: tuple[int, ...], prev: Op | None) -> Op | None:
    """The op for one layer (None when it vanishes or folds into ``prev``): the op registry's
    conversion (:mod:`advrobust.network.graph.ops`, the table the torch.fx and ONNX routes use
    too), taken as a chain op where it has one."""
    factory = module_factory(layer)
    if factory is None:
        raise _unsupported(path, layer)
    call = Call(type(layer), layer, (Data(0, shape),), {}, _out_shape(layer, shape, path),
                f"Layer {type(layer).__name__} at position '{path}'", supported=SUPPORTED)
    graph_op = factory(call)
    if isinstance(graph_op, IdentityOp):  # Identity, Dropout (eval), a shape-keeping reshape
        return None
    op = graph_op.chain_op()
    if not isinstance(op, Op):
        raise _unsupported(path, layer, "no chain form; the graph IR, "
                                        "advrobust.network.build_graph, takes it")
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)) and prev is not None \
            and prev.fold_batchnorm(layer, path):
        return None
    return op


def from_module(model: nn.Module, input_shape: Sequence[int]) -> Network:
    """Turn a (nested) ``nn.Sequential`` into a :class:`Network` of affine and ReLU ops.

    Args:
        model: the classifier; its parameters are referenced by the ops, not copied.
        input_shape: shape of one input without the batch dimension, e.g. ``(1, 28, 28)``.

    Returns:
        The network; ``network.forward(x)`` equals ``model(x)`` in eval mode.

    Raises:
        UnsupportedLayerError: a layer the verifier cannot represent (its type and position in
            the nested Sequential are named), or a model that is not an ``nn.Sequential``.
        InvalidInputError: a layer that cannot take the shape flowing into it.
    """
    shape = tuple(int(s) for s in input_shape)
    ops: list[Op] = []
    for path, layer in _leaves(model, ""):
        op = _convert(path, layer, shape, ops[-1] if ops else None)
        if op is not None:
            ops.append(op)
            shape = op.out_shape
    if len(shape) != 1:
        raise InvalidInputError(
            f"The network must end in flat outputs (classes,); its output shape is {shape}.")
    return Network(ops, tuple(int(s) for s in input_shape), module=model)

