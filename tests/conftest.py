"""Shared fixtures: tiny seeded models and the real data beside the repository."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from torch import nn

REPO = Path(__file__).resolve().parents[1]

# CI replays the same examples every run (a red CI must mean a regression, not an unlucky draw);
# a developer's run explores new ones. Either way the failing examples found are kept.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# Knife-edge hunting (issue 15): run the suite once with ADVROBUST_TEST_DETERMINISTIC=1
# (torch.use_deterministic_algorithms) and with ADVROBUST_TEST_THREADS=1 / 2 (another
# reduction order); a test that flips between them asserts a float outcome without a margin.
if os.environ.get("ADVROBUST_TEST_DETERMINISTIC", "") not in ("", "0"):
    torch.use_deterministic_algorithms(True)
if os.environ.get("ADVROBUST_TEST_THREADS"):
    torch.set_num_threads(int(os.environ["ADVROBUST_TEST_THREADS"]))

# A suite started as a background job of a non-interactive shell (`pytest ... &` in a script,
# nohup) inherits SIGINT *ignored*, and so would every CLI process a test starts: the Ctrl-C
# tests (test_cli_sigint, the campaign kill / seed-store tests) then see exit status 0 instead
# of 130, the SIGINT never delivered. The CLI rightly keeps an inherited "ignore" (that is what
# a shell's background job asks for); the suite restores Python's default handler instead, so
# that its children start with SIGINT at its default disposition.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def shared_data_dir() -> Path:
    """``../shared/data`` beside the repository (or ``$ADVROBUST_SHARED_DATA``)."""
    env = os.environ.get("ADVROBUST_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real data folder; skips the test when it is absent (a user's clone has none)."""
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root}")
    return root


@pytest.fixture
def tiny_mlp() -> nn.Module:
    """A seeded 1x4x4 -> 16 -> 16 -> 3 ReLU network in eval mode."""
    with torch.random.fork_rng(devices=[]):  # seeded without touching the global RNG
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16),
                             nn.ReLU(), nn.Linear(16, 3)).eval()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for the test (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    on a shared 2-core machine extra threads only oversubscribe it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
