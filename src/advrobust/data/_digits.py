"""scikit-learn's bundled 8x8 digits: the offline default dataset."""

from __future__ import annotations

import numpy as np
import torch

from advrobust.data._dataset import Dataset

__all__ = ["DIGITS_SPLIT", "load_digits_split"]

# The fixed split rule: 25 % test, stratified by label, seeded; 1,347 train / 450 test images.
DIGITS_SPLIT = {"test_size": 0.25, "random_state": 0}


def load_digits_split(split: str) -> Dataset:
    """One split of ``sklearn.datasets.load_digits`` (1,797 images, 16 grey levels).

    Pixels are divided by 16 into [0, 1] and shaped (N, 1, 8, 8). The split is
    ``train_test_split(test_size=0.25, stratify=y, random_state=0)``: deterministic, disjoint,
    with each class in the same proportion in both parts.
    """
    # sklearn is imported here, not at module level: importing it takes seconds.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / np.float32(16.0)
    labels = np.asarray(bunch.target, dtype=np.int64)
    index = np.arange(len(labels))
    train_idx, test_idx = train_test_split(index, stratify=labels, shuffle=True, **DIGITS_SPLIT)
    chosen = np.asarray(train_idx if split == "train" else test_idx)
    x = torch.from_numpy(np.ascontiguousarray(images[chosen])).unsqueeze(1)
    y = torch.from_numpy(labels[chosen])
    provenance = (f"sklearn.datasets.load_digits (sklearn bundled copy of the UCI optdigits test "
                  f"set, {len(labels)} images), pixels/16; {split} part of "
                  "sklearn.model_selection.train_test_split(test_size=0.25, stratify=y, "
                  f"random_state=0): {len(chosen)} images")
    return Dataset(x=x, y=y, classes=tuple(str(d) for d in range(10)), name="digits", split=split,
                   provenance=provenance)
