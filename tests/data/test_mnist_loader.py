"""MNIST from IDX files (plain / gzipped / prefix image file) and mnist.npz, and its errors."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from advrobust.data import load_dataset, read_idx, write_idx
from advrobust.errors import DataFormatError, DatasetNotFoundError

WriteMnist = Callable[..., tuple[np.ndarray, np.ndarray]]


def _assert_matches(ds, images: np.ndarray, labels: np.ndarray) -> None:
    assert ds.x.dtype == torch.float32 and ds.x.shape == (len(images), 1, 28, 28)
    assert torch.equal(ds.x[:, 0], torch.from_numpy(images).float() / 255)
    assert torch.equal(ds.y, torch.from_numpy(labels.astype(np.int64)))
    assert ds.classes == tuple("0123456789") and ds.name == "mnist"


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("split", ["train", "test"])
def test_reads_idx_pair(tmp_path: Path, write_mnist: WriteMnist, gz: bool, split: str) -> None:
    images, labels = write_mnist(tmp_path, split, n_images=6, gz=gz)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_dataset("mnist", split, root=tmp_path)
    _assert_matches(ds, images, labels)
    assert ds.split == split and str(tmp_path) in ds.provenance and "/255" in ds.provenance


def test_shorter_image_file_takes_label_prefix_with_warning(
        tmp_path: Path, write_mnist: WriteMnist) -> None:
    images, labels = write_mnist(tmp_path, "train", n_images=4, n_labels=9,
                                 image_name="train-images-idx3-ubyte.first4.gz")
    with pytest.warns(UserWarning, match="holds 4 images but .* holds 9 labels: using the first 4"):
        ds = load_dataset("mnist", "train", root=tmp_path)
    _assert_matches(ds, images, labels[:4])
    assert "first4.gz" in ds.provenance and "first 4 of 9 labels" in ds.provenance


def test_more_images_than_labels_is_an_error(tmp_path: Path, write_mnist: WriteMnist) -> None:
    write_mnist(tmp_path, "test", n_images=5, n_labels=3)
    with pytest.raises(DataFormatError, match="holds 5 images but .* only 3 labels"):
        load_dataset("mnist", "test", root=tmp_path)


def test_exact_name_wins_and_ambiguous_names_are_refused(
        tmp_path: Path, write_mnist: WriteMnist) -> None:
    images, labels = write_mnist(tmp_path, "test", n_images=3)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.old.gz", np.zeros((2, 28, 28), np.uint8))
    _assert_matches(load_dataset("mnist", "test", root=tmp_path), images, labels)
    (tmp_path / "t10k-images-idx3-ubyte.gz").rename(tmp_path / "t10k-images-idx3-ubyte.new.gz")
    with pytest.raises(DataFormatError, match="Several candidate files .*new.gz.*old.gz"):
        load_dataset("mnist", "test", root=tmp_path)


@pytest.mark.parametrize(("array", "name", "fragment"), [
    (np.zeros((2, 28, 28), np.float32), "t10k-images-idx3-ubyte.gz", "must be uint8"),
    (np.zeros((2, 784), np.uint8), "t10k-images-idx3-ubyte.gz", "expected 3, the header says 2"),
    (np.full(3, 10, np.uint8), "t10k-labels-idx1-ubyte.gz", "labels must be in [0, 9]"),
])
def test_bad_content_raises_naming_file(tmp_path: Path, write_mnist: WriteMnist,
                                        array: np.ndarray, name: str, fragment: str) -> None:
    write_mnist(tmp_path, "test", n_images=3)
    write_idx(tmp_path / name, array)
    with pytest.raises(DataFormatError) as info:
        load_dataset("mnist", "test", root=tmp_path)
    assert fragment in str(info.value) and name in str(info.value)


def test_missing_files_name_each_file_and_folder(tmp_path: Path, write_mnist: WriteMnist) -> None:
    write_mnist(tmp_path, "test")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", "test", root=tmp_path)
    msg = str(info.value)
    assert f"{tmp_path}: missing t10k-labels-idx1-ubyte[.gz] (and no mnist.npz)" in msg
    assert "t10k-images-idx3-ubyte[.gz]," not in msg
    assert f"{tmp_path / 'mnist'}: no such folder" in msg and "download_mnist" in msg
    assert "--data-dir" in msg  # the command-line user's way to pass root
    with pytest.raises(DatasetNotFoundError, match="missing train-images-idx3-ubyte.*, train-lab"):
        load_dataset("mnist", "train", root=tmp_path)


def test_root_subfolder_and_environment(tmp_path: Path, write_mnist: WriteMnist,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = write_mnist(tmp_path / "mnist", "test", n_images=2)
    _assert_matches(load_dataset("mnist", root=tmp_path), images, labels)
    monkeypatch.setenv("ADVROBUST_DATA", str(tmp_path))
    _assert_matches(load_dataset("mnist"), images, labels)
    monkeypatch.setenv("ADVROBUST_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(DatasetNotFoundError, match="elsewhere/mnist: no such folder"):
        load_dataset("mnist")


def test_keras_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    arrays = {f"{k}_{s}": (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) if k == "x"
                           else rng.integers(0, 10, n).astype(np.uint8))
              for s, n in (("train", 5), ("test", 3)) for k in ("x", "y")}
    np.savez(tmp_path / "mnist.npz", **arrays)
    for split in ("train", "test"):
        ds = load_dataset("mnist", split, root=tmp_path)
        _assert_matches(ds, arrays[f"x_{split}"], arrays[f"y_{split}"])
        assert "mnist.npz" in ds.provenance
    np.savez(tmp_path / "mnist.npz", x_train=arrays["x_train"])
    with pytest.raises(DataFormatError, match="missing the array 'y_train'"):
        load_dataset("mnist", "train", root=tmp_path)
    (tmp_path / "mnist.npz").write_bytes(b"not a zip")
    with pytest.raises(DataFormatError, match="not a readable .npz"):
        load_dataset("mnist", "train", root=tmp_path)


def test_real_mnist_test_split(shared_data: Path) -> None:
    folder = shared_data / "mnist"
    ds = load_dataset("mnist", "test", root=folder)
    assert len(ds) == 10_000 and ds.input_shape == (1, 28, 28)
    expected = read_idx(folder / "t10k-labels-idx1-ubyte.gz")
    assert torch.equal(ds.y, torch.from_numpy(expected.astype(np.int64)))
    assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0
    assert torch.equal((ds.x * 255).round() / 255, ds.x)


def test_real_mnist_train_prefix(shared_data: Path) -> None:
    folder = shared_data / "mnist"
    start = time.perf_counter()
    with pytest.warns(UserWarning, match="24345 images but .* 60000 labels"):
        ds = load_dataset("mnist", "train", root=shared_data)
    assert time.perf_counter() - start < 5.0  # numpy-vectorised: ~0.3 s here
    assert len(ds) == 24_345 and ds.split == "train"
    labels = read_idx(folder / "train-labels-idx1-ubyte.gz")
    assert torch.equal(ds.y, torch.from_numpy(labels[:24_345].astype(np.int64)))
    assert 0.0 <= float(ds.x.min()) and float(ds.x.max()) <= 1.0
    assert set(ds.y.tolist()) == set(range(10))


class _Payload:
    """Pickling this object records a call to ``marker.touch`` on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_npz_with_pickled_objects_is_refused_unrun(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    objects = np.empty(2, dtype=object)
    objects[:] = [_Payload(marker), _Payload(marker)]
    np.savez(tmp_path / "mnist.npz", x_train=objects, y_train=np.zeros(2, np.uint8))
    with pytest.raises(DataFormatError, match="not a readable .npz.*pickled Python objects"):
        load_dataset("mnist", "train", root=tmp_path)
    assert not marker.exists()
    # The payload is live: loading it with pickles allowed does run it.
    np.load(tmp_path / "mnist.npz", allow_pickle=True)["x_train"]
    assert marker.exists()
