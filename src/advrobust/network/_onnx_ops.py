"""ONNX node -> torch layer conversion for a chain-shaped graph (used by ``network.onnx``).

Elementwise affine nodes with a constant (Add / Sub / Mul / Div, BatchNormalization) become
:class:`~advrobust.network._onnx_fold.Scale` records first; :meth:`ChainBuilder.finish` folds
them into standard layers (``network._onnx_fold``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NoReturn

import torch
from torch import Tensor, nn

from advrobust.errors import UnsupportedLayerError
from advrobust.network._onnx_fold import Item, Scale, resolve

__all__ = ["ChainBuilder"]

_PASS_THROUGH = ("Identity", "Dropout")




class ChainBuilder:
    """Accumulates layers while walking the nodes of an ONNX graph in order.

    Args:
        input_name: name of the graph's data input.
        shape: its per-sample shape (batch dimension dropped).
        constants: initializers by name, as tensors.
        source: the file name, for error messages.
    """

    def __init__(self, input_name: str, shape: tuple[int, ...], constants: dict[str, Tensor],
                 source: str) -> None:
        self.current = input_name
        self.shape = shape
        self.constants = dict(constants)
        self.source = source
        self.items: list[Item] = []
        self._node = ""
        self._op = ""
        self._handlers: dict[str, Callable[[list[str], dict[str, Any]], None]] = {
            "Flatten": self._flatten, "Reshape": self._reshape, "Gemm": self._gemm,
            "MatMul": self._matmul, "Conv": self._conv, "Relu": self._relu,
            "Add": self._arith, "Sub": self._arith, "Mul": self._arith, "Div": self._arith,
            "BatchNormalization": self._batchnorm,
        }

    # ------------------------------------------------------------------ walking
    def add(self, op: str, node: str, inputs: list[str], outputs: list[str],
            attrs: dict[str, Any]) -> None:
        """Convert one node (``node``: how errors name it, see ``network.onnx.describe_node``);
        raise UnsupportedLayerError naming it if it cannot be."""
        self._node, self._op = node, op
        if op == "Constant":
            self.constants[outputs[0]] = self._constant_value(attrs)
            return
        data = [i for i in inputs if i and i not in self.constants]
        if op in _PASS_THROUGH and not data:
            self.constants[outputs[0]] = self.constants[inputs[0]]
            return
        if data != [self.current]:
            self._fail("the graph must be a chain: every node takes the previous node's output "
                       f"as its only non-constant input (inputs {inputs}, current "
                       f"{self.current!r})")
        if op not in _PASS_THROUGH:
            handler = self._handlers.get(op)
            if handler is None:
                self._fail("this op is not supported (supported: Flatten, Reshape, Gemm, MatMul, "
                           "Conv, Relu, Add, Sub, Mul, Div, BatchNormalization, Identity, "
                           "Dropout, Constant)")
            handler(inputs, attrs)
        self.current = outputs[0]

    def finish(self, outputs: list[str]) -> nn.Sequential:
        """The converted network; raises unless the graph's only output is the chain's end."""
        if outputs != [self.current]:
            raise UnsupportedLayerError(
                f"{self.source}: the graph must have one output, the last node's; it has "
                f"{outputs} (chain ends at {self.current!r}).")
        return nn.Sequential(*resolve(self.items, self.source)).eval()

    # ------------------------------------------------------------------ helpers
    def _fail(self, why: str) -> NoReturn:
        raise UnsupportedLayerError(f"{self.source}: {self._node}: {why}.")

    def _const(self, name: str, what: str) -> Tensor:
        if name not in self.constants:
            self._fail(f"its {what} must be a constant (initializer)")
        return self.constants[name]

    def _constant_value(self, attrs: dict[str, Any]) -> Tensor:
        for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
            if key in attrs:
                v = attrs[key]
                return v if torch.is_tensor(v) else torch.tensor(v)
        self._fail(f"unsupported Constant attributes {sorted(attrs)}")

    def _push(self, module: Item, shape: tuple[int, ...]) -> None:
        self.items.append(module)
        self.shape = shape

    # ------------------------------------------------------------------ ops
    def _flatten(self, inputs: list[str], attrs: dict[str, Any]) -> None:
        if attrs.get("axis", 1) != 1:
            self._fail(f"only axis=1 is supported (keeps the batch dimension); got "
                       f"axis={attrs.get('axis')}")
        self._push(nn.Flatten(), (math.prod(self.shape),))

    def _reshape(self, inputs: list[str], attrs: dict[str, Any]) -> None:
        target = [int(v) for v in self._const(inputs[1], "shape").reshape(-1).tolist()]
        full = [1, *self.shape]
        dims = [full[i] if v == 0 and not attrs.get("allowzero") else v
                for i, v in enumerate(target)]
        if dims.count(-1) == 1:
            known = math.prod(d for d in dims if d != -1)
            dims[dims.index(-1)] = math.prod(full) // max(known, 1)
        if math.prod(dims) != math.prod(full) or dims[0] != 1:
            self._fail(f"reshape of {tuple(full)} to {tuple(target)} must keep the batch "
                       "dimension first")
        new = tuple(dims[1:])
        if new == self.shape:
            return
        if len(self.shape) != 1:
            self._push(nn.Flatten(), (math.prod(self.shape),))
        if len(new) != 1:
            self._push(nn.Unflatten(1, new), new)

    def _linear(self, weight: Tensor, bias: Tensor) -> None:
        if len(self.shape) != 1 or self.shape[0] != weight.shape[1]:
            self._fail(f"needs a flat input of size {weight.shape[1]}; the input here has "
                       f"per-sample shape {self.shape} (add a Flatten before it)")
        layer = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
        self._push(layer, (int(weight.shape[0]),))

    def _gemm(self, inputs: list[str], attrs: dict[str, Any]) -> None:
        if attrs.get("transA", 0):
            self._fail("transA=1 is not supported (the data input must be A, not transposed)")
        b = self._const(inputs[1], "weight B").double()
        weight = (b if attrs.get("transB", 0) else b.T) * float(attrs.get("alpha", 1.0))
        out = weight.shape[0]
        bias = torch.zeros(out, dtype=torch.float64)
        if len(inputs) > 2 and inputs[2]:
            c = self._const(inputs[2], "bias C").double()
            if c.numel() not in (1, out):
                self._fail(f"bias C of shape {tuple(c.shape)} must broadcast to ({out},)")
            bias = torch.broadcast_to(c.reshape(-1), (out,)) * float(attrs.get("beta", 1.0))
        self._linear(weight, bias)

    def _matmul(self, inputs: list[str], attrs: dict[str, Any]) -> None:
        if inputs[0] != self.current:
            self._fail("the data input must be the first operand (x @ W)")
        w = self._const(inputs[1], "weight").double()
        if w.dim() != 2:
            self._fail(f"the weight must be a matrix; got shape {tuple(w.shape)}")
        self._linear(w.T, torch.zeros(w.shape[1], dtype=torch.float64))

    def _conv(self, inputs: list[str], attrs: dict[str, Any]) -> None:
        w = self._const(inputs[1], "weight").double()
        if w.dim() != 4 or len(self.shape) != 3:
            self._fail("only 2-D convolutions of (C, H, W) inputs are supported")
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            self._fail(f"auto_pad={attrs['auto_pad']!r} is not supported; give explicit pads")
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if pads[0] != pads[2] or pads[1] != pads[3]:
            self._fail(f"only symmetric padding is supported; got pads={pads}")
        layer = nn.Conv2d(self.shape[0], w.shape[0], (int(w.shape[2]), int(w.shape[3])),
                          stride=tuple(attrs.get("strides", [1, 1])), padding=tuple(pads[:2]),
                          dilation=tuple(attrs.get("dilations", [1, 1])),
                          groups=int(attrs.get("group", 1)))
        bias = layer.bias
        assert bias is not None
        with torch.no_grad():
            layer.weight.copy_(w)
            bias.zero_()
            if len(inputs) > 2 and inputs[2]:
                bias.copy_(self._const(inputs[2], "bias"))
            out = layer(torch.zeros((1, *self.shape)))
        self._push(layer, tuple(out.shape[1:]))

    def _relu(self, inputs: list[str], attrs: dict[str, Any]) -> None:
        self._push(nn.ReLU(), self.shape)

    def _broadcast(self, c: Tensor) -> Tensor:
        try:
            return torch.broadcast_to(c.double(), (1, *self.shape))[0].clone()
        except RuntimeError:
            self._fail(f"constant of shape {tuple(c.shape)} does not broadcast to the "
                       f"per-sample shape {self.shape}")

    def _arith(self, inputs: list[str], attrs: dict[str, Any]) -> None:
        data_first = inputs[0] == self.current
        c = self._broadcast(self._const(inputs[1] if data_first else inputs[0], "operand"))
        one, zero = torch.ones_like(c), torch.zeros_like(c)
        if self._op == "Add":
            scale, shift = one, c
        elif self._op == "Mul":
            scale, shift = c, zero
        elif self._op == "Sub":
            scale, shift = (one, -c) if data_first else (-one, c)
        else:
            if not data_first or bool((c == 0).any()):
                self._fail("Div is supported only as x / c with a non-zero constant c")
            scale, shift = 1.0 / c, zero
        self._push(Scale(scale, shift), self.shape)

    def _batchnorm(self, inputs: list[str], attrs: dict[str, Any]) -> None:
        if attrs.get("training_mode", 0):
            self._fail("training_mode=1 is not supported")
        gamma, beta, mean, var = (self._const(n, "statistics").double() for n in inputs[1:5])
        view = (-1,) + (1,) * (len(self.shape) - 1)
        s = gamma / torch.sqrt(var + float(attrs.get("epsilon", 1e-5)))
        scale = self._broadcast(s.reshape(view))
        self._push(Scale(scale, self._broadcast((beta - mean * s).reshape(view))), self.shape)
