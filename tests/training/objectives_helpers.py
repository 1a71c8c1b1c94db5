"""Shared pieces of the defense-objective tests: digits data and short seeded training runs."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from advrobust.data import load_dataset
from advrobust.data._dataset import Dataset
from advrobust.models import build_model
from advrobust.training import fit
from advrobust.training.objective import Objective


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: tiny models gain nothing from more, and on a contended machine the
    threads' spin-waits make training many times slower. Restored after the test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def digits(split: str) -> Dataset:
    """sklearn's digits (1x8x8 in [0, 1]), cached per split."""
    return load_dataset("digits", split=split)


def small_mlp(seed: int = 0) -> nn.Sequential:
    """The ``small`` reference MLP (64-50-20-10) for digits, seeded."""
    return build_model("small", (1, 8, 8), seed=seed)


def train(objective: Objective | None, epochs: int, seed: int = 0) -> nn.Sequential:
    """A small MLP trained on digits with SGD + momentum (fast to converge), in eval mode."""
    model = small_mlp(seed)
    fit(model, digits("train"), objective=objective, epochs=epochs, lr=0.05, momentum=0.9,
        batch_size=50, seed=seed, progress=False)
    return model.eval()


def own_loss_drop(objective: Objective, steps: int = 30, seed: int = 0) -> tuple[float, float]:
    """The objective's loss on a fixed batch before and after ``steps`` SGD steps on it."""
    torch.manual_seed(seed)
    model = small_mlp(seed).train()
    data = digits("train")
    x, y = data.x[:128], data.y[:128]
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    before = float(objective(model, x, y, 1.0).detach())
    for _ in range(steps):
        opt.zero_grad()
        objective(model, x, y, 1.0).backward()
        opt.step()
    return before, float(objective(model, x, y, 1.0).detach())
