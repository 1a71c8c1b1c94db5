"""load_dataset's argument checking and default_data_root."""

from __future__ import annotations

from pathlib import Path

import pytest

from advrobust.data import DATASETS, default_data_root, load_dataset
from advrobust.errors import InvalidParameterError


def test_dataset_names() -> None:
    assert DATASETS == ("digits", "mnist", "cifar10")


def test_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(InvalidParameterError) as info:
        load_dataset("imagenet")
    msg = str(info.value)
    assert "'name' parameter of load_dataset" in msg and "'imagenet'" in msg
    assert all(repr(name) in msg for name in DATASETS)


@pytest.mark.parametrize("split", ["val", "Test", None])
def test_bad_split(split: object) -> None:
    with pytest.raises(InvalidParameterError, match="'split' parameter .*'train', 'test'"):
        load_dataset("digits", split)  # type: ignore[arg-type]


def test_bad_root_type() -> None:
    with pytest.raises(InvalidParameterError, match="'root' parameter .*Got int"):
        load_dataset("mnist", root=3)  # type: ignore[arg-type]


def test_default_data_root_honours_environment(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setenv("ADVROBUST_DATA", str(tmp_path))
    assert default_data_root() == tmp_path
    monkeypatch.setenv("ADVROBUST_DATA", "")
    assert default_data_root() == Path.home() / ".advrobust" / "data"
    monkeypatch.delenv("ADVROBUST_DATA")
    assert default_data_root() == Path.home() / ".advrobust" / "data"
