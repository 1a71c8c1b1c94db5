"""Tiny seeded ReLU networks for the relaxation tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn


def make_mlp(seed: int, widths: tuple[int, ...], dtype: torch.dtype = torch.float32
             ) -> nn.Sequential:
    """A seeded ReLU MLP ``widths[0] -> ... -> widths[-1]`` with a leading Flatten."""
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


@pytest.fixture(scope="session")
def mlp_factory() -> Callable[..., nn.Sequential]:
    """``make_mlp(seed, widths, dtype)``."""
    return make_mlp


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Small tensor ops run far slower with 2 threads on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
