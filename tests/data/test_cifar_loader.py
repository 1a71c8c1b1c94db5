"""CIFAR-10 from pickle batches (restricted unpickler) and from the 100-image CSV."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from advrobust.data import CIFAR10_CLASSES, load_dataset
from advrobust.errors import DataFormatError, DatasetNotFoundError

WriteBatches = Callable[..., dict[str, tuple[np.ndarray, np.ndarray]]]


@pytest.mark.parametrize(("protocol", "bytes_keys"), [(2, True), (5, False)])
def test_pickle_batches(tmp_path: Path, write_cifar_batches: WriteBatches, protocol: int,
                        bytes_keys: bool) -> None:
    written = write_cifar_batches(tmp_path / "cifar-10-batches-py", protocol=protocol,
                                  bytes_keys=bytes_keys)
    train = load_dataset("cifar10", "train", root=tmp_path)
    test = load_dataset("cifar10", "test", root=tmp_path)
    data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = np.concatenate([written[f"data_batch_{i}"][1] for i in range(1, 6)])
    assert train.x.shape == (20, 3, 32, 32) and test.x.shape == (4, 3, 32, 32)
    # batch rows are channel-planar: 1024 red, 1024 green, 1024 blue values, row-major.
    assert round(float(train.x[3, 1, 2, 5]) * 255) == data[3, 1024 + 69]
    assert torch.equal((train.x.reshape(20, -1) * 255).round(), torch.from_numpy(data).float())
    assert torch.equal(train.y, torch.from_numpy(labels))
    assert torch.equal(test.y, torch.from_numpy(written["test_batch"][1]))
    assert train.classes == CIFAR10_CLASSES and CIFAR10_CLASSES[0] == "airplane"
    assert "data_batch_5" in train.provenance and "test_batch" in test.provenance


def test_batches_directly_in_cifar10_folder(tmp_path: Path,
                                            write_cifar_batches: WriteBatches) -> None:
    write_cifar_batches(tmp_path / "cifar10")
    assert len(load_dataset("cifar10", "test", root=tmp_path)) == 4


def test_unpickler_runs_no_code(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("still here")

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return os.remove, (str(victim),)

    (tmp_path / "test_batch").write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(DataFormatError, match="refusing to load global .*remove") as info:
        load_dataset("cifar10", "test", root=tmp_path)
    assert "test_batch" in str(info.value) and victim.exists()


@pytest.mark.parametrize(("batch", "fragment"), [
    ({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, "shape (N, 3072)"),
    ({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, "uint8 array"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "must hold 2 ints"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, "labels must be in [0, 9]"),
    ([1, 2], "expected a dict"),
])
def test_malformed_batches(tmp_path: Path, batch: object, fragment: str) -> None:
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataFormatError) as info:
        load_dataset("cifar10", "test", root=tmp_path)
    assert fragment in str(info.value) and "test_batch" in str(info.value)


def _write_csv(path: Path, rows: np.ndarray) -> None:
    path.write_text("\n".join(",".join(str(v) for v in row) for row in rows) + "\n")


def test_csv_is_hwc_interleaved(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.integers(0, 10, (3, 1)), rng.integers(0, 256, (3, 3072))], axis=1)
    _write_csv(tmp_path / "cifar10_test100.csv", rows)
    ds = load_dataset("cifar10", "test", root=tmp_path)
    assert ds.x.shape == (3, 3, 32, 32) and torch.equal(ds.y, torch.from_numpy(rows[:, 0]))
    h, w, c = 7, 30, 2
    assert float(ds.x[1, c, h, w]) * 255 == pytest.approx(rows[1, 1 + (h * 32 + w) * 3 + c])
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar10", "train", root=tmp_path)
    msg = str(info.value)
    assert "cifar10_test100.csv was found but holds 100 test images only" in msg
    assert "data_batch_1" in msg and str(tmp_path / "cifar10") in msg


def test_batches_are_preferred_over_csv(tmp_path: Path, write_cifar_batches: WriteBatches) -> None:
    (tmp_path / "cifar10_test100.csv").write_text("garbage")
    write_cifar_batches(tmp_path / "cifar-10-batches-py")
    assert "test_batch" in load_dataset("cifar10", "test", root=tmp_path).provenance


@pytest.mark.parametrize(("text", "fragment"), [
    ("1,2,3\n", "3073 columns"), ("0," + ",".join(["300"] * 3072) + "\n", "[0, 255]"),
    ("11," + ",".join(["3"] * 3072) + "\n", "labels must be in [0, 9]"),
    ("a,b\n", "not a CSV of integers"),
])
def test_malformed_csv(tmp_path: Path, text: str, fragment: str) -> None:
    (tmp_path / "cifar10_test100.csv").write_text(text)
    with pytest.raises(DataFormatError) as info:
        load_dataset("cifar10", "test", root=tmp_path)
    assert fragment in str(info.value) and "cifar10_test100.csv" in str(info.value)


def test_not_found_lists_places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADVROBUST_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match=f"{tmp_path / 'cifar10'}: no such folder"):
        load_dataset("cifar10")
    (tmp_path / "cifar10").mkdir()
    with pytest.raises(DatasetNotFoundError, match="missing test_batch .*no .*cifar10_test100"):
        load_dataset("cifar10")


def test_real_cifar_csv(shared_data: Path) -> None:
    ds = load_dataset("cifar10", "test", root=shared_data)
    assert len(ds) == 100 and ds.input_shape == (3, 32, 32) and ds.split == "test"
    names = [ds.classes[i] for i in ds.y[:5]]
    assert names == ["cat", "ship", "ship", "airplane", "frog"]
    assert 0.0 <= float(ds.x.min()) and float(ds.x.max()) <= 1.0
    assert float(ds.x.std()) > 0.1
    # Decoded the right way round, neighbouring pixels are alike (natural images are smooth).
    assert float((ds.x[..., 1:] - ds.x[..., :-1]).abs().mean()) < 0.1
