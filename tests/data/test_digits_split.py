"""The bundled digits: a fixed, stratified, disjoint train / test split."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

from advrobust.data import load_dataset


def _rows(x: torch.Tensor, y: torch.Tensor) -> Counter[bytes]:
    return Counter(xi.numpy().tobytes() + bytes([int(yi)]) for xi, yi in zip(x, y, strict=True))


def test_split_partitions_the_bundled_set() -> None:
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(train), len(test)) == (1347, 450)
    bunch = load_digits()
    full = torch.from_numpy((bunch.images / 16.0).astype(np.float32)).unsqueeze(1)
    # as multisets: train + test is exactly the whole set, so the parts are disjoint
    assert _rows(train.x, train.y) + _rows(test.x, test.y) == _rows(full, torch.from_numpy(
        bunch.target))


def test_split_is_stratified() -> None:
    test = load_dataset("digits", "test")
    per_class = np.bincount(load_digits().target, minlength=10)
    test_counts = np.bincount(test.y.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - 0.25 * per_class) <= 1)


def test_split_is_deterministic_and_documented(tmp_path: Path) -> None:
    a, b = load_dataset("digits", "test"), load_dataset("digits", "test", root=tmp_path)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert "test_size=0.25, stratify=y, random_state=0" in a.provenance


def test_pixels_are_sixteenths_in_unit_range() -> None:
    ds = load_dataset("digits", "train")
    assert ds.x.shape == (1347, 1, 8, 8) and ds.x.dtype == torch.float32
    assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0
    assert torch.equal(ds.x * 16, (ds.x * 16).round())
    assert ds.classes == tuple("0123456789") and ds.name == "digits"
