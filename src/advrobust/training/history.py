"""What ``fit`` records: one row per epoch."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["EpochStats", "History"]


@dataclass(frozen=True)
class EpochStats:
    """The facts of one training epoch.

    Attributes:
        epoch: 1-based epoch number.
        lr: Learning rate used during the epoch (with ``lr_schedule="cyclic"``, which
            changes it every batch: the rate of the epoch's first batch).
        train_loss: Mean objective loss over the epoch's batches.
        train_error: Error rate of the predictions made while training (the last forward pass
            the objective ran on each batch in training mode: the clean batch for ``Standard``,
            the adversarial batch for adversarial objectives), in [0, 1].
        test_error: Error rate on the test data at the end of the epoch (eval mode), or None
            when no test data was given.
        seconds: Wall-clock time of the epoch, test evaluation included.
    """

    epoch: int
    lr: float
    train_loss: float
    train_error: float
    test_error: float | None
    seconds: float


@dataclass
class History:
    """Per-epoch statistics of a ``fit`` run, in order."""

    epochs: list[EpochStats] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.epochs)

    @property
    def train_loss(self) -> list[float]:
        """Mean training loss of each epoch."""
        return [e.train_loss for e in self.epochs]

    @property
    def train_error(self) -> list[float]:
        """Training error rate of each epoch."""
        return [e.train_error for e in self.epochs]

    @property
    def test_error(self) -> list[float | None]:
        """Test error rate at the end of each epoch (None without test data)."""
        return [e.test_error for e in self.epochs]

    @property
    def lr(self) -> list[float]:
        """Learning rate of each epoch."""
        return [e.lr for e in self.epochs]

    @property
    def seconds(self) -> float:
        """Total training time."""
        return math.fsum(e.seconds for e in self.epochs)

    @property
    def test_accuracy(self) -> float | None:
        """Test accuracy after the last epoch (None without test data or epochs)."""
        if not self.epochs or self.epochs[-1].test_error is None:
            return None
        return 1.0 - self.epochs[-1].test_error

    def to_dict(self) -> dict[str, Any]:
        """Plain lists per column, e.g. for checkpoint metadata or JSON."""
        rows = [asdict(e) for e in self.epochs]
        keys = ("epoch", "lr", "train_loss", "train_error", "test_error", "seconds")
        return {k: [r[k] for r in rows] for k in keys}

    @classmethod
    def from_dict(cls, columns: dict[str, Any]) -> History:
        """The inverse of :meth:`to_dict`."""
        keys = ("epoch", "lr", "train_loss", "train_error", "test_error", "seconds")
        rows = zip(*(columns[k] for k in keys), strict=True)
        return cls([EpochStats(**dict(zip(keys, row, strict=True))) for row in rows])
