"""CIFAR-10 from the python pickle batches (read with a restricted unpickler) or a pixel CSV."""

from __future__ import annotations

import functools
import importlib
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advrobust.data._dataset import Dataset, uint8_to_unit
from advrobust.data._paths import candidate_dirs
from advrobust.errors import DataFormatError, DatasetNotFoundError

__all__ = ["CIFAR10_CLASSES", "load_cifar10", "safe_unpickle"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
BATCH_DIR = "cifar-10-batches-py"
BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
CSV_NAME = "cifar10_test100.csv"
_PIXELS = 3 * 32 * 32


def _numpy_global(name: str, *modules: str) -> Callable[..., Any]:
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy provides no {name} in {modules}")


@functools.lru_cache(maxsize=1)
def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only callables a CIFAR batch pickle may name: numpy array reconstruction and bytes."""
    rebuild = _numpy_global("_reconstruct", "numpy._core.multiarray", "numpy.core.multiarray")
    frombuffer = _numpy_global("_frombuffer", "numpy._core.numeric", "numpy.core.numeric")
    scalar = _numpy_global("scalar", "numpy._core.multiarray", "numpy.core.multiarray")
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray,
                                           ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): _latin1_encode}
    for prefix in ("numpy.core", "numpy._core"):
        allowed[(f"{prefix}.multiarray", "_reconstruct")] = rebuild
        allowed[(f"{prefix}.multiarray", "scalar")] = scalar
        allowed[(f"{prefix}.numeric", "_frombuffer")] = frombuffer
    return allowed


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` restricted to the latin-1 text codec protocol-2 pickles use for bytes."""
    if encoding not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"refusing codec {encoding!r}")
    return text.encode("latin1")


class _RestrictedUnpickler(pickle.Unpickler):
    """Refuses every global but numpy array reconstruction: no code runs from the file."""

    def find_class(self, module: str, name: str) -> Any:
        found = _allowed_globals().get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return found


def safe_unpickle(path: Path) -> Any:
    """Unpickle ``path`` allowing only builtin containers and numpy arrays.

    Raises:
        DataFormatError: If the file is not such a pickle (including one naming other globals).
    """
    try:
        with path.open("rb") as handle:
            return _RestrictedUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError) as err:
        raise DataFormatError(f"{path}: not a plain CIFAR batch pickle ({err}).") from err


def load_cifar10(split: str, root: str | os.PathLike[str] | None) -> Dataset:
    """Load one CIFAR-10 split; see ``load_dataset`` for where files are looked for.

    Raises:
        DatasetNotFoundError: If no searched folder holds the split (the CSV has no train split).
        DataFormatError: If a file is malformed.
    """
    names, report, csv_seen = BATCHES[split], [], None
    # A folder holding cifar-10-batches-py/ is read from there, else from the folder itself.
    for folder in candidate_dirs(root, "cifar10"):
        if not folder.is_dir():
            report.append(f"  {folder}: no such folder")
            continue
        batch_dir = folder / BATCH_DIR if (folder / BATCH_DIR).is_dir() else folder
        missing = [n for n in names if not (batch_dir / n).is_file()]
        if not missing:
            return _from_batches(split, [batch_dir / n for n in names])
        if (folder / CSV_NAME).is_file():
            if split == "test":
                return _from_csv(folder / CSV_NAME)
            csv_seen = folder / CSV_NAME
        report.append(f"  {batch_dir}: missing {', '.join(missing)}"
                      + ("" if split == "train" else f" (and no {folder / CSV_NAME})"))
    note = (f"\n{csv_seen} was found but holds 100 test images only: the train split needs the "
            "pickle batches." if csv_seen else "")
    raise DatasetNotFoundError(
        f"CIFAR-10 {split} split not found. Looked in:\n" + "\n".join(report) + note
        + f"\nPass root=<folder holding {BATCH_DIR}> (--data-dir on the command line) or set "
        "$ADVROBUST_DATA (files go in $ADVROBUST_DATA/cifar10).")


def _from_batches(split: str, paths: list[Path]) -> Dataset:
    parts = [_read_batch(p) for p in paths]
    images = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([p[1] for p in parts])
    provenance = (f"CIFAR-10 official {split} split from pickle batches "
                  f"{', '.join(str(p) for p in paths)}; pixels/255")
    return _to_dataset(images, labels, split, provenance)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_unpickle(path)
    if not isinstance(batch, dict):
        raise DataFormatError(f"{path}: expected a dict, got {type(batch).__name__}.")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != _PIXELS:
        raise DataFormatError(f"{path}: 'data' must be a uint8 array of shape (N, {_PIXELS}). Got "
                              f"{_describe(data)}.")
    try:
        label_array = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise DataFormatError(f"{path}: 'labels' must be a list of ints ({err}).") from err
    if label_array.shape != (len(data),):
        raise DataFormatError(f"{path}: 'labels' must hold {len(data)} ints, one per image. Got "
                              f"{_describe(labels)}.")
    _check_label_range(label_array, path)
    return data, label_array


def _from_csv(path: Path) -> Dataset:
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as err:
        raise DataFormatError(f"{path}: not a CSV of integers ({err}).") from err
    if table.shape[1] != 1 + _PIXELS or len(table) == 0:
        raise DataFormatError(f"{path}: rows must be label,p0,...,p{_PIXELS - 1} ({1 + _PIXELS} "
                              f"columns). Got shape {table.shape}.")
    pixels = table[:, 1:]
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataFormatError(f"{path}: pixels must be in [0, 255]. Got values in "
                              f"[{pixels.min()}, {pixels.max()}].")
    _check_label_range(table[:, 0], path)
    # Rows store height x width x channel (r, g, b interleaved): HWC -> CHW.
    images = pixels.astype(np.uint8).reshape(-1, 32, 32, 3).transpose(0, 3, 1, 2)
    provenance = (f"CIFAR-10 test split, first {len(table)} images, from {path} "
                  "(label,p0..p3071 HWC rows); pixels/255")
    return _to_dataset(images, table[:, 0], "test", provenance)


def _check_label_range(labels: np.ndarray, path: Path) -> None:
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataFormatError(f"{path}: CIFAR-10 labels must be in [0, 9]. Got values in "
                              f"[{labels.min()}, {labels.max()}].")


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"array of dtype {value.dtype} and shape {value.shape}"
    return f"{type(value).__name__}" + (f" of length {len(value)}" if hasattr(value, "__len__")
                                        else "")


def _to_dataset(images: np.ndarray, labels: np.ndarray, split: str, provenance: str) -> Dataset:
    x = uint8_to_unit(images)
    y = torch.from_numpy(labels.astype(np.int64))
    return Dataset(x=x, y=y, classes=CIFAR10_CLASSES, name="cifar10", split=split,
                   provenance=provenance)
