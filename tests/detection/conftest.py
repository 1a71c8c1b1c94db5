"""Fixtures of the detection tests: a digits MLP trained once per session, one thread."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from advrobust.data import load_dataset
from advrobust.data._dataset import Dataset
from advrobust.models import build_model
from advrobust.training import fit


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from more threads; contended machines lose a lot."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits_train() -> Dataset:
    return load_dataset("digits", split="train")


@pytest.fixture(scope="session")
def digits_test() -> Dataset:
    return load_dataset("digits", split="test")


@pytest.fixture(scope="session")
def digits_model(digits_train: Dataset) -> nn.Module:
    """The ``small`` MLP trained 15 epochs on the first 700 digits training images (the rest
    is held out for calibration), eval mode."""
    model = build_model("small", (1, 8, 8), seed=0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    fit(model, digits_train.take(700), epochs=15, lr=0.05, momentum=0.9, batch_size=50, seed=0,
        progress=False)
    torch.set_num_threads(before)
    model.zero_grad(set_to_none=True)
    return model.eval()
