"""Tiny seeded ReLU networks for the exact-verification tests."""

from __future__ import annotations

import pytest

from _tiny_nets import scaled_mlp as make_mlp  # noqa: F401 - the tests import it from here
from advrobust.core import Verdict


@pytest.fixture(autouse=True)
def _one_torch_thread(one_thread: None) -> None:
    """Small tensor ops run far slower with 2 threads on a shared 2-core machine."""


def assert_agrees_with_milp(out: object, exact: object) -> None:
    """A bounder's result ``out`` is sound against the exact MILP's ``exact`` (same samples):
    its lower bounds do not exceed the exact minima, and every verdict it reaches is the
    exact one."""
    assert bool((out.lower <= exact.lower + 1e-5).all())  # type: ignore[attr-defined]
    for mine, truth in zip(out.verdict, exact.verdict, strict=True):  # type: ignore[attr-defined]
        if mine is not Verdict.UNKNOWN:
            assert mine is truth
