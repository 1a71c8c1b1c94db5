"""Seeded tiny ReLU networks shared by the verification tests (tests/ is on sys.path through its
conftest.py, so test modules import this as ``from _tiny_nets import relu_mlp``)."""

from __future__ import annotations

import torch
from torch import nn


def relu_mlp(seed: int, d: int, h: int, k: int = 3) -> nn.Sequential:
    """A ``d -> h -> h -> k`` ReLU MLP with N(0, 1) weights and N(0, 0.25) biases, eval mode."""
    gen = torch.Generator().manual_seed(seed)
    layers = [nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, k)]
    with torch.no_grad():
        for layer in layers:
            if isinstance(layer, nn.Linear):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen))
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen) * 0.5)
    return nn.Sequential(*layers).eval()


def scaled_mlp(seed: int, widths: tuple[int, ...], dtype: torch.dtype = torch.float32
               ) -> nn.Sequential:
    """A seeded ReLU MLP ``widths[0] -> ... -> widths[-1]`` with a leading Flatten, weights
    N(0, 1/fan_in) and biases N(0, 0.01), eval mode."""
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=gen) / a ** 0.5)
            lin.bias.copy_(torch.randn(b, generator=gen) * 0.1)
        layers.append(lin)
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).to(dtype).eval()


def tent() -> nn.Sequential:
    """``y = |x0| + 0.1 x1`` on 2 inputs as ``relu(x0) + relu(-x0) + 0.1 relu(x1)`` (x1 >= 0 in
    the tests that use it), eval mode."""
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[1.0, 1.0, 0.1]]))
        net[2].bias.zero_()
    return net.eval()
