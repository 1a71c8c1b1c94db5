"""A new op is one class plus one registry line: the algorithms need no edit.

The template registers a toy layer (``x -> factor * x``: a negation, a scaled identity) in the
test only, and runs IBP, CROWN (through the patch path: the op sits between a convolution and
a ReLU), alpha-CROWN and GloRo's Lipschitz product on a network containing it. The reference
is the same function without the op (the factor folded into the convolution before it, exact
for -1 and 2), so every bound must agree up to the rounding allowances, and CROWN's bounds must
hold at sampled points.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import advrobust.network.graph.base as registry
import advrobust.relax.crown as crown
from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall, Norm
from advrobust.network.ir import Network
from advrobust.network.ops import AffineOp
from advrobust.relax import CROWN, IBP
from advrobust.relax.alpha_crown import alpha_crown
from advrobust.relax.base import verifiable_ir
from advrobust.training.gloro import GloRo


class ScaleLayer(nn.Module):
    """The toy layer a user writes."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor


class Scaled(AffineOp):
    """Its op, written once: the map, its transpose, its norm and its action on patches."""

    def __init__(self, shape: tuple[int, ...], name: str, factor: float) -> None:
        super().__init__(shape, shape, name)
        self.factor = factor

    def linear(self, x: Tensor) -> Tensor:
        return x * self.factor

    def bias(self) -> Tensor | None:
        return None

    def backward(self, a: Tensor) -> Tensor:
        return a * self.factor

    def abs_linear(self, x: Tensor) -> Tensor:
        return x * abs(self.factor)

    @property
    def fan_in(self) -> int:
        return 1

    def operator_norm(self, norm: Norm) -> float:
        return abs(self.factor)

    @property
    def patchable(self) -> bool:
        return len(self.in_shape) == 3

    def window_backward(self, flat: Tensor) -> Tensor:
        return flat * self.factor


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The registry line, undone after the test."""
    monkeypatch.setattr(registry, "_MODULES", dict(registry._MODULES))
    monkeypatch.setattr(registry, "_LABELS", list(registry._LABELS))

    @registry.register(modules=(ScaleLayer,))
    def _scaled(call: registry.Call) -> registry.GraphOp:
        layer = call.module
        assert isinstance(layer, ScaleLayer)
        return Scaled(call.data[0].shape, call.name, layer.factor).to_graph_op()

    yield


def _nets(factor: float) -> tuple[nn.Module, nn.Module]:
    """conv -> toy op -> ReLU -> strided conv -> ReLU -> Flatten -> Linear -> ReLU -> Linear,
    and the same function with the factor folded into the first convolution."""
    gen = torch.Generator().manual_seed(3)
    conv1, conv2 = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 4, 3, stride=2)
    head1, head2 = nn.Linear(16, 8), nn.Linear(8, 3)
    with torch.no_grad():
        for layer in (conv1, conv2, head1, head2):
            for p in layer.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    tail = [nn.ReLU(), conv2, nn.ReLU(), nn.Flatten(), head1, nn.ReLU(), head2]
    model = nn.Sequential(conv1, ScaleLayer(factor), *tail).double().eval()
    folded = nn.Conv2d(1, 3, 3, padding=1)
    with torch.no_grad():
        folded.weight.copy_(conv1.weight * factor)
        folded.bias.copy_(conv1.bias * factor)
    reference = nn.Sequential(folded, *tail).double().eval()
    return model, reference


def _close(a: Tensor, b: Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("factor", [-1.0, 2.0])
def test_a_registered_toy_op_runs_through_every_algorithm(registered: None, factor: float,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    model, reference = _nets(factor)
    shape = (1, 6, 6)
    gen = torch.Generator().manual_seed(4)
    x = torch.rand((2,) + shape, generator=gen, dtype=torch.float64)
    y = reference(x).argmax(1)
    ball = LpBall("linf", 0.05, lo=0.0, hi=1.0)
    net = verifiable_ir(model, shape, "test", graph_ok=True)
    assert isinstance(net, Network) and isinstance(net.ops[1], Scaled)  # a chain with the op
    _close(net.forward(x), reference(x))

    for bounder in (IBP(), CROWN()):
        got, want = bounder(model, x, y, ball), bounder(reference, x, y, ball)
        _close(got.lower, want.lower)

    # CROWN's intermediate bounds of the ReLU after the op take the patch path through it
    calls: list[int] = []
    real = Scaled.window_backward

    def counted(self: Scaled, flat: Tensor) -> Tensor:
        calls.append(flat.shape[0])
        return real(self, flat)

    monkeypatch.setattr(Scaled, "window_backward", counted)
    assert crown._patch_elements(net, 2, x.shape[0]) is not None
    ref_net = verifiable_ir(reference, shape, "test", graph_ok=True)
    assert isinstance(ref_net, Network)
    layers = crown.crown_layer_bounds(net, x, ball, rounding=True)
    ref_layers = crown.crown_layer_bounds(ref_net, x, ball, rounding=True)
    assert calls
    for got_b, want_b in zip(layers[2:], ref_layers[1:], strict=True):
        _close(got_b[0], want_b[0])
        _close(got_b[1], want_b[1])
    c = Spec.margins(y, 3).C.double()
    lower = crown.crown_lower(net, x, ball, c, bounds=layers, rounding=True)
    pts = ball.clip_box(x + ball.eps * (2 * torch.rand((256,) + x.shape, generator=gen,
                                                         dtype=torch.float64) - 1))
    rows = torch.einsum("nko,mno->mnk", c, model(pts.flatten(0, 1)).reshape(256, 2, 3))
    assert bool((lower <= rows.amin(0)).all())

    got_alpha = alpha_crown(net, x, ball, c, steps=3)
    want_alpha = alpha_crown(ref_net, x, ball, c, steps=3)
    _close(got_alpha.lower, want_alpha.lower)

    gloro: dict[str, Any] = {}  # training runs in float32
    for key, module in (("toy", model), ("ref", reference)):
        objective = GloRo(threat=LpBall("l2", 0.5), iterations=4, seed=0)
        ir = verifiable_ir(copy.deepcopy(module).float(), shape, "test", graph_ok=False)
        assert isinstance(ir, Network)
        gloro[key] = objective.lipschitz(ir, c.float())
    torch.testing.assert_close(gloro["toy"], gloro["ref"], rtol=1e-5, atol=0)
    losses = [GloRo(threat=LpBall("l2", 0.5), seed=0)(copy.deepcopy(m).float(), x.float(), y, 1.0)
              for m in (model, reference)]  # end to end: the objective builds the IR itself
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=0)
