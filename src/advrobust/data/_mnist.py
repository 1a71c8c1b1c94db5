"""MNIST from the original IDX files (gzipped or not) or a Keras-style ``mnist.npz``."""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from advrobust.core._npz import npz_reason
from advrobust.data._dataset import Dataset, uint8_to_unit
from advrobust.data._idx import read_idx
from advrobust.data._paths import candidate_dirs
from advrobust.errors import DataFormatError, DatasetNotFoundError

__all__ = ["MNIST_CLASSES", "MNIST_FILES", "find_idx_file", "load_mnist"]

MNIST_CLASSES = tuple(str(d) for d in range(10))
# split -> (image file stem, label file stem)
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
NPZ_NAME = "mnist.npz"


def find_idx_file(folder: Path, stem: str) -> Path | None:
    """The file holding ``stem`` in ``folder``, or None.

    Accepted names, in order: ``<stem>``, ``<stem>.gz``, else the only file named
    ``<stem>.<anything>`` (such as ``train-images-idx3-ubyte.first24345.gz``). Compression is
    detected from the content, not the name.

    Raises:
        DataFormatError: If several ``<stem>.<anything>`` files exist and none has an exact name.
    """
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    matches = sorted(p for p in folder.glob(stem + ".*") if p.is_file())
    if len(matches) > 1:
        raise DataFormatError(
            f"Several candidate files for {stem} in {folder}: {', '.join(p.name for p in matches)}."
            f" Keep one, or name the one to use {stem}[.gz].")
    return matches[0] if matches else None


def load_mnist(split: str, root: str | os.PathLike[str] | None) -> Dataset:
    """Load one MNIST split; see ``load_dataset`` for where files are looked for.

    Raises:
        DatasetNotFoundError: If no searched folder holds the split's files.
        DataFormatError: If a file is malformed.
    """
    image_stem, label_stem = MNIST_FILES[split]
    report = []
    for folder in candidate_dirs(root, "mnist", extra=("MNIST/raw",)):
        if not folder.is_dir():
            report.append(f"  {folder}: no such folder")
            continue
        images, labels = find_idx_file(folder, image_stem), find_idx_file(folder, label_stem)
        if images is not None and labels is not None:
            return _from_idx(split, images, labels)
        if (folder / NPZ_NAME).is_file():
            return _from_npz(split, folder / NPZ_NAME)
        missing = [f"{stem}[.gz]" for stem, p in ((image_stem, images), (label_stem, labels))
                   if p is None]
        report.append(f"  {folder}: missing {', '.join(missing)} (and no {NPZ_NAME})")
    raise DatasetNotFoundError(
        f"MNIST {split} split not found. Looked for {image_stem}[.gz] with {label_stem}[.gz], or "
        f"{NPZ_NAME}, in:\n" + "\n".join(report) + "\nPass root=<folder> (--data-dir DIR on the "
        "command line), set $ADVROBUST_DATA, or fetch the files with "
        "advrobust.data.download_mnist(<folder>).")


def _from_idx(split: str, image_path: Path, label_path: Path) -> Dataset:
    images = _check_uint8(read_idx(image_path, ndim=3), image_path)
    labels = _check_uint8(read_idx(label_path, ndim=1), label_path)
    images, labels, note = _pair(images, labels, str(image_path), str(label_path))
    provenance = (f"MNIST official {split} split from IDX files: images {image_path}, labels "
                  f"{label_path}{note}; pixels/255")
    return _to_dataset(images, labels, split, provenance)


def _from_npz(split: str, path: Path) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in (f"x_{split}", f"y_{split}")
                      if key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataFormatError(f"{path}: not a readable .npz archive ({npz_reason(err)}).") from err
    for key in (f"x_{split}", f"y_{split}"):
        if key not in arrays:
            raise DataFormatError(f"{path}: missing the array '{key}' (expected keys x_train, "
                                  "y_train, x_test, y_test).")
    images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or labels.ndim != 1:
        raise DataFormatError(
            f"{path}: x_{split} must have shape (N, H, W) and y_{split} shape (N,). Got "
            f"{images.shape} and {labels.shape}.")
    images = _check_uint8(images, path, f"x_{split}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(f"{path}: y_{split} must hold integers. Got dtype {labels.dtype}.")
    images, labels, note = _pair(images, labels, f"{path}[x_{split}]", f"{path}[y_{split}]")
    provenance = (f"MNIST official {split} split from {path} (x_{split}, y_{split}){note}; "
                  "pixels/255")
    return _to_dataset(images, labels, split, provenance)


def _check_uint8(array: np.ndarray, path: Path, what: str = "data") -> np.ndarray:
    if array.dtype != np.uint8:
        raise DataFormatError(f"{path}: MNIST {what} must be uint8. Got {array.dtype}.")
    return array


def _pair(images: np.ndarray, labels: np.ndarray, image_name: str,
          label_name: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Match image and label counts; a shorter image file takes the label prefix, with a warning."""
    n_img, n_lab = len(images), len(labels)
    if n_img > n_lab:
        raise DataFormatError(
            f"{image_name} holds {n_img} images but {label_name} only {n_lab} labels: every image "
            "needs a label.")
    if n_img == 0:
        raise DataFormatError(f"{image_name} holds no images.")
    note = ""
    if n_img < n_lab:
        warnings.warn(
            f"{image_name} holds {n_img} images but {label_name} holds {n_lab} labels: using the "
            f"first {n_img} labels, assuming the image file is a prefix of the full set.",
            UserWarning, stacklevel=5)
        labels, note = labels[:n_img], f" (first {n_img} of {n_lab} labels)"
    if labels.min() < 0 or labels.max() > 9:
        raise DataFormatError(
            f"{label_name}: MNIST labels must be in [0, 9]. Got values in [{labels.min()}, "
            f"{labels.max()}].")
    return images, labels, note


def _to_dataset(images: np.ndarray, labels: np.ndarray, split: str, provenance: str) -> Dataset:
    x = uint8_to_unit(images).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return Dataset(x=x, y=y, classes=MNIST_CLASSES, name="mnist", split=split,
                   provenance=provenance)
