"""Fixtures writing small dataset files in the formats the loaders read."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from advrobust.data import write_idx

STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

WriteMnist = Callable[..., tuple[np.ndarray, np.ndarray]]


@pytest.fixture
def write_mnist() -> WriteMnist:
    """``write(folder, split, n_images=5, n_labels=None, gz=True, image_name=None, seed=0)``.

    Writes an IDX image / label pair of random 28x28 uint8 images and labels; returns the full
    (images, labels) arrays written.
    """

    def write(folder: Path, split: str, n_images: int = 5, n_labels: int | None = None,
              gz: bool = True, image_name: str | None = None, seed: int = 0
              ) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, size=(n_images, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n_labels or n_images, dtype=np.uint8)
        image_stem, label_stem = STEMS[split]
        suffix = ".gz" if gz else ""
        folder.mkdir(parents=True, exist_ok=True)
        write_idx(folder / (image_name or image_stem + suffix), images, compress=gz)
        write_idx(folder / (label_stem + suffix), labels, compress=gz)
        return images, labels

    return write


@pytest.fixture
def write_cifar_batches() -> Callable[..., dict[str, tuple[np.ndarray, np.ndarray]]]:
    """``write(folder, n=4, protocol=2, bytes_keys=True)``: the six pickle batches, 4 images each.

    ``bytes_keys`` mimics the original Python 2 pickles (keys b"data", b"labels").
    Returns batch name -> (data (n, 3072) uint8, labels (n,)).
    """

    def write(folder: Path, n: int = 4, protocol: int = 2,
              bytes_keys: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(1)
        written = {}
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, 10, size=n)]
            key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
            batch = {key("batch_label"): key(name), key("data"): data, key("labels"): labels}
            (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
            written[name] = (data, np.asarray(labels))
        return written

    return write

