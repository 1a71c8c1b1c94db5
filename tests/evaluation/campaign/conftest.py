"""Fixtures of the campaign tests: one trained tiny checkpoint per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _campaign_fixtures import make_checkpoint


@pytest.fixture(scope="session")
def _trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("campaign-model"))


@pytest.fixture
def folder(tmp_path: Path, _trained: Path) -> Path:
    """A fresh folder holding the trained ``mlp.pt``."""
    shutil.copy(_trained, tmp_path / "mlp.pt")
    return tmp_path
