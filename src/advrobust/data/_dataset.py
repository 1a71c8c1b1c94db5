"""The in-memory dataset every loader returns: images in [0, 1] and integer labels."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from advrobust.core._validation import check_int
from advrobust.errors import InvalidInputError, InvalidParameterError

__all__ = ["Dataset", "uint8_to_unit"]


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A labelled image dataset held in memory.

    Attributes:
        x: Images, float32 tensor of shape (N, C, H, W) with values in [0, 1].
        y: Labels, int64 tensor of shape (N,) with values in [0, num_classes).
        classes: Class names; ``classes[k]`` names label ``k``.
        name: Dataset name, e.g. ``"mnist"``.
        split: ``"train"`` or ``"test"`` (free text for custom datasets).
        provenance: Where the data came from: the files read (or the library call) and the rule
            that chose the split, plus any ``take`` / ``subset`` applied since.

    Raises:
        InvalidInputError: If ``x`` / ``y`` have the wrong type, dtype, shape or values.
    """

    x: Tensor
    y: Tensor
    classes: tuple[str, ...]
    name: str
    split: str
    provenance: str

    def __post_init__(self) -> None:
        _check_images(self.x)
        _check_labels(self.y, self.x.shape[0], self.classes)
        for field in ("name", "split", "provenance"):
            if not isinstance(getattr(self, field), str):
                raise InvalidInputError(
                    f"Dataset '{field}' must be a str. Got {type(getattr(self, field)).__name__} "
                    "instead.")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The shape (C, H, W) of one image."""
        c, h, w = self.x.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        """The number of classes, ``len(classes)``."""
        return len(self.classes)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"input_shape={self.input_shape}, num_classes={self.num_classes})")

    def take(self, n: int) -> Dataset:
        """The first ``n`` samples, in order.

        Args:
            n: How many samples to keep, in ``[1, len(self)]``.

        Returns:
            A new Dataset sharing storage with this one.

        Raises:
            InvalidParameterError: If ``n < 1`` or ``n > len(self)``: asking for more samples than
                exist is an error rather than a silently shorter dataset.
        """
        n = check_int(n, "n", "Dataset.take", low=1, high=len(self))
        return self._derive(self.x[:n], self.y[:n], f"first {n} of {len(self)}")

    def subset(self, indices: Tensor | Sequence[int] | np.ndarray) -> Dataset:
        """The samples at ``indices``, in the order given (repeats allowed).

        Args:
            indices: Integer indices, shape (K,), each in ``[-len(self), len(self))``.

        Returns:
            A new Dataset with K samples.

        Raises:
            InvalidParameterError: If ``indices`` is not a 1-D integer sequence or is out of range.
        """
        idx = _as_index(indices, len(self))
        return self._derive(self.x[idx], self.y[idx], f"subset of {idx.numel()} indices")

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Iterate over ``(x, y)`` mini-batches; the last one may be smaller.

        Args:
            batch_size: Samples per batch, >= 1.
            shuffle: Visit the samples in a random order (``torch.randperm``) instead of in order.
            generator: Random source of the shuffle; ``None`` uses torch's default generator.

        Yields:
            ``x`` of shape (B, C, H, W) and ``y`` of shape (B,), B <= batch_size.

        Raises:
            InvalidParameterError: If ``batch_size`` is not a positive int or ``generator`` is not
                a ``torch.Generator``.
        """
        batch_size = check_int(batch_size, "batch_size", "Dataset.batches", low=1)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise InvalidParameterError(
                "The 'generator' parameter of Dataset.batches must be a torch.Generator or None. "
                f"Got {generator!r} instead.")
        return self._iter_batches(batch_size, shuffle, generator)

    def _iter_batches(self, batch_size: int, shuffle: bool,
                      generator: torch.Generator | None) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(len(self), generator=generator) if shuffle else None
        for start in range(0, len(self), batch_size):
            if order is None:
                yield self.x[start:start + batch_size], self.y[start:start + batch_size]
            else:
                idx = order[start:start + batch_size]
                yield self.x[idx], self.y[idx]

    def _derive(self, x: Tensor, y: Tensor, what: str) -> Dataset:
        return Dataset(x=x, y=y, classes=self.classes, name=self.name, split=self.split,
                       provenance=f"{self.provenance}; {what}")


def uint8_to_unit(images: np.ndarray) -> Tensor:
    """uint8 pixels -> float32 tensor ``pixels / 255`` (torch converts ~4x faster than numpy)."""
    contiguous = np.ascontiguousarray(images)
    if not contiguous.flags.writeable:  # torch.from_numpy warns on read-only buffers
        contiguous = contiguous.copy()
    return torch.from_numpy(contiguous).to(torch.float32).div_(255.0)


def _check_images(x: object) -> None:
    if not torch.is_tensor(x):
        raise InvalidInputError(f"Dataset 'x' must be a torch.Tensor. Got {type(x).__name__} "
                                "instead.")
    assert isinstance(x, Tensor)
    if x.dtype != torch.float32 or x.dim() != 4:
        raise InvalidInputError(
            "Dataset 'x' must be a float32 tensor of shape (N, C, H, W). Got dtype "
            f"{x.dtype} and shape {tuple(x.shape)} instead.")
    if x.shape[0] < 1:
        raise InvalidInputError("Dataset 'x' must hold at least one sample. Got 0 instead.")
    lo, hi = float(x.min()), float(x.max())
    if not (0.0 <= lo and hi <= 1.0):  # also false for NaN
        raise InvalidInputError(
            f"Dataset 'x' must have values in [0, 1]. Got values in [{lo:g}, {hi:g}] instead.")


def _check_labels(y: object, n: int, classes: object) -> None:
    if (not isinstance(classes, tuple) or not classes
            or not all(isinstance(c, str) for c in classes)):
        raise InvalidInputError(
            f"Dataset 'classes' must be a non-empty tuple of str. Got {classes!r} instead.")
    if not torch.is_tensor(y):
        raise InvalidInputError(f"Dataset 'y' must be a torch.Tensor. Got {type(y).__name__} "
                                "instead.")
    assert isinstance(y, Tensor)
    if y.dtype != torch.int64 or tuple(y.shape) != (n,):
        raise InvalidInputError(
            f"Dataset 'y' must be an int64 tensor of shape ({n},) to match x. Got dtype "
            f"{y.dtype} and shape {tuple(y.shape)} instead.")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= len(classes):
        raise InvalidInputError(
            f"Dataset 'y' must hold labels in [0, {len(classes) - 1}] ({len(classes)} classes). "
            f"Got values in [{lo}, {hi}] instead.")


def _as_index(indices: object, n: int) -> Tensor:
    try:
        idx = torch.as_tensor(np.asarray(indices) if not torch.is_tensor(indices) else indices)
    except (TypeError, ValueError, RuntimeError):
        idx = None
    if idx is None or idx.dim() != 1 or idx.dtype.is_floating_point or idx.dtype == torch.bool \
            or idx.is_complex() or idx.numel() == 0:
        raise InvalidParameterError(
            "The 'indices' parameter of Dataset.subset must be a non-empty 1-D sequence of ints. "
            f"Got {_short(indices)} instead.")
    idx = idx.long()
    if int(idx.min()) < -n or int(idx.max()) >= n:
        raise InvalidParameterError(
            f"The 'indices' parameter of Dataset.subset must hold indices in [{-n}, {n - 1}]. Got "
            f"values in [{int(idx.min())}, {int(idx.max())}] instead.")
    return idx


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
