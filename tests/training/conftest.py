"""Fixtures of the training tests: scikit-learn's digits split by a fixed seed."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits
from torch import Tensor

Split = tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]


@pytest.fixture(scope="session")
def digits() -> Split:
    """((x_train, y_train), (x_test, y_test)): 1,400 / 397 digits (N, 1, 8, 8) in [0, 1]."""
    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = order[:1400], order[1400:]
    return (x[train], y[train]), (x[test], y[test])
