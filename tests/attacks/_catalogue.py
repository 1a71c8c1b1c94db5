"""A small trained classifier shared by the catalogue's attack tests (sklearn digits, 8x8)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import torch
from torch import Tensor, nn

__all__ = ["digits_batch", "digits_model", "one_thread"]


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread (tiny models run far faster so on a shared, busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@lru_cache(maxsize=1)
def _trained() -> tuple[nn.Module, Tensor, Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(data.target, dtype=torch.int64)
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with one_thread():
        for _ in range(200):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[:1500]), y[:1500]).backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model, x[1500:], y[1500:]


def digits_model() -> nn.Module:
    """An MLP 64-24-10 trained for 200 Adam steps on 1,500 digits (about 90% test accuracy)."""
    return _trained()[0]


def digits_batch(n: int = 24, correct: bool = True) -> tuple[Tensor, Tensor]:
    """The first ``n`` held-out digits (1, 8, 8) in [0, 1]; only correctly classified ones if
    ``correct``."""
    model, x, y = _trained()
    if correct:
        with torch.no_grad():
            keep = model(x).argmax(1) == y
        x, y = x[keep], y[keep]
    return x[:n].clone(), y[:n].clone()
