"""Tiny seeded ReLU networks for the relaxation tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from torch import nn

from _tiny_nets import scaled_mlp as make_mlp


@pytest.fixture(scope="session")
def mlp_factory() -> Callable[..., nn.Sequential]:
    """``make_mlp(seed, widths, dtype)``."""
    return make_mlp


@pytest.fixture(autouse=True)
def _one_torch_thread(one_thread: None) -> None:
    """Small tensor ops run far slower with 2 threads on a shared 2-core machine."""
