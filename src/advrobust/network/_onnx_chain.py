"""The chain form of an imported ONNX graph (used by ``network.onnx``).

ONNX files are parsed once, by the graph importer (:mod:`advrobust.network.graph.onnx`). When the
imported graph is a chain of standard layers -- one data input, each step consuming the previous
step's output, made of Gemm / MatMul, Conv, Relu, BatchNormalization, Flatten / Reshape and Add /
Sub / Mul / Div / Neg with a constant -- :func:`as_chain` rebuilds it as a float32
``nn.Sequential`` of standard layers: the elementwise affine steps become
:class:`~advrobust.network._onnx_fold.Scale` records that ``_onnx_fold`` folds into the
neighbouring affine layers (a bias addition, a batch-norm, an input normalisation). Anything
else (branches, Sigmoid, Tanh, MaxPool, ...) returns ``None`` and stays a graph module.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from advrobust.errors import UnsupportedLayerError
from advrobust.network._onnx_fold import Item, Scale, resolve
from advrobust.network.graph.onnx import OnnxGraphModule

__all__ = ["as_chain"]

Shape = tuple[int, ...]


def _shapes(module: OnnxGraphModule) -> dict[str, Shape] | None:
    """Every step's per-sample output shape (one zero sample through the graph), or None when
    the graph does not run (its error is raised to the caller by the import's output probe)."""
    env = {module.input_name: torch.zeros((1, *module.input_shape), dtype=torch.float64)}
    try:
        with torch.no_grad():
            for kind, ins, out, attrs in module.steps:
                xs = [env[i] if i in env else module.constant(i) for i in ins]
                env[out] = module.run_step(kind, xs, attrs)
    except (RuntimeError, ValueError, IndexError):
        return None
    return {name: tuple(v.shape[1:]) for name, v in env.items()}


def _linear(layer: nn.Module, shape: Shape) -> list[Item] | None:
    assert isinstance(layer, nn.Linear)
    if shape != (layer.in_features,):
        return None  # a matrix product over the last axis of a >1-D input: not a chain layer
    out = nn.Linear(layer.in_features, layer.out_features)
    with torch.no_grad():
        out.weight.copy_(layer.weight)
        out.bias.copy_(layer.bias if layer.bias is not None else torch.zeros(layer.out_features))
    return [out]


def _conv(layer: nn.Module, shape: Shape) -> list[Item] | None:
    assert isinstance(layer, nn.Conv2d)
    if len(shape) != 3:
        return None
    out = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,  # type: ignore[arg-type]
                    stride=layer.stride, padding=layer.padding,  # type: ignore[arg-type]
                    dilation=layer.dilation, groups=layer.groups)  # type: ignore[arg-type]
    assert out.bias is not None
    with torch.no_grad():
        out.weight.copy_(layer.weight)
        out.bias.copy_(layer.bias if layer.bias is not None else torch.zeros(layer.out_channels))
    return [out]


def _relu(layer: nn.Module, shape: Shape) -> list[Item] | None:
    return [nn.ReLU()]


def _broadcast(c: Tensor, shape: Shape) -> Tensor | None:
    try:
        return torch.broadcast_to(c.double(), (1, *shape))[0].clone()
    except RuntimeError:
        return None


def _batchnorm(layer: nn.Module, shape: Shape) -> list[Item] | None:
    assert isinstance(layer, nn.BatchNorm1d | nn.BatchNorm2d)
    assert layer.running_mean is not None and layer.running_var is not None
    s = layer.weight.double() / torch.sqrt(layer.running_var.double() + layer.eps)
    view = (-1,) + (1,) * (len(shape) - 1)
    scale = _broadcast(s.reshape(view), shape)
    shift = _broadcast((layer.bias.double() - layer.running_mean.double() * s).reshape(view),
                       shape)
    return None if scale is None or shift is None else [Scale(scale, shift)]


_LAYERS: dict[type, Callable[[nn.Module, Shape], list[Item] | None]] = {
    nn.Linear: _linear, nn.Conv2d: _conv, nn.ReLU: _relu, nn.BatchNorm1d: _batchnorm,
    nn.BatchNorm2d: _batchnorm,
}


def _elementwise(kind: str, data_first: bool, c: Tensor | None, shape: Shape) -> list[Item] | None:
    """``x op c`` (or ``c op x``) as a Scale; None where it is not affine in x."""
    if kind == "Neg":
        return [Scale(-torch.ones(shape, dtype=torch.float64),
                      torch.zeros(shape, dtype=torch.float64))]
    if c is None:
        return None
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    if kind == "Add":
        return [Scale(one, c)]
    if kind == "Mul":
        return [Scale(c, zero)]
    if kind == "Sub":
        return [Scale(one, -c) if data_first else Scale(-one, c)]
    if not data_first or bool((c == 0).any()):  # Div: only x / c with c != 0 is affine
        return None
    return [Scale(1.0 / c, zero)]


def _reshape(old: Shape, new: Shape) -> list[Item]:
    if new == old:
        return []
    out: list[Item] = []
    if len(old) != 1:
        out.append(nn.Flatten())
    if len(new) != 1:
        out.append(nn.Unflatten(1, new))
    return out


def _step(module: OnnxGraphModule, kind: str, ins: list[str], current: str, old: Shape,
          new: Shape) -> list[Item] | None:
    if kind in module.layers:
        layer = module.layers[kind]
        convert = _LAYERS.get(type(layer))
        return None if convert is None else convert(layer, old)
    if kind == "Flatten":
        return [nn.Flatten()]
    if kind == "Reshape":
        return _reshape(old, new)
    if kind in ("Add", "Sub", "Mul", "Div", "Neg"):
        if new != old:  # the constant broadcasts the data up: not elementwise on it
            return None
        consts = [i for i in ins if i != current]
        c = _broadcast(module.constant(consts[0]), old) if consts else None
        return _elementwise(kind, ins[0] == current, c, old)
    return None  # Transpose, Concat: not chain layers


def as_chain(module: OnnxGraphModule, source: str) -> nn.Sequential | None:
    """``module`` as a float32 ``nn.Sequential`` of standard layers (eval mode), or None when it
    is not a chain of them (see the module docstring)."""
    shapes = _shapes(module)
    if shapes is None:
        return None
    current, items = module.input_name, []
    for kind, ins, out, _attrs in module.steps:
        if [i for i in ins if not module.is_constant(i)] != [current]:
            return None  # a branch, a join, or a step on the data twice (x * x)
        step = _step(module, kind, ins, current, shapes[current], shapes[out])
        if step is None:
            return None
        items.extend(step)
        current = out
    if current != module.output_name:
        return None
    try:
        layers = resolve(items, source)
    except UnsupportedLayerError:
        return None  # per-position constants on an image: the graph module takes them
    return nn.Sequential(*layers).eval()
