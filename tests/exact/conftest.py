"""Tiny seeded ReLU networks for the exact-verification tests."""

from __future__ import annotations

import pytest

from _tiny_nets import scaled_mlp as make_mlp  # noqa: F401 - the tests import it from here


@pytest.fixture(autouse=True)
def _one_torch_thread(one_thread: None) -> None:
    """Small tensor ops run far slower with 2 threads on a shared 2-core machine."""
