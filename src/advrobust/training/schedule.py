"""Learning-rate schedules: step drops at given epochs, and the course's defaults."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from advrobust.core._validation import check_int
from advrobust.errors import InvalidParameterError

__all__ = ["check_drop_epochs", "course_schedule", "lr_at_epoch"]


def lr_at_epoch(epoch: int, lr: float, drop_epochs: Sequence[int] = (),
                drop_factor: float = 0.1) -> float:
    """Learning rate of epoch ``epoch`` (0-based) under step drops.

    The rate is multiplied by ``drop_factor`` once for every entry ``d`` of ``drop_epochs``
    with ``d <= epoch``: ``drop_epochs=(5,)`` trains epochs 0-4 at ``lr`` and epochs 5 and later
    at ``lr * drop_factor`` ("drop after 5 epochs").
    """
    drops = sum(1 for d in drop_epochs if d <= epoch)
    return lr * drop_factor**drops


def check_drop_epochs(drop_epochs: Any, epochs: int, owner: str = "fit") -> tuple[int, ...]:
    """Return ``drop_epochs`` as a sorted tuple of ints in [1, epochs), or raise naming it."""
    if drop_epochs is None:
        return ()
    if not isinstance(drop_epochs, (list, tuple)):
        raise InvalidParameterError(
            f"The 'lr_drop_epochs' parameter of {owner} must be None or a sequence of ints. "
            f"Got {drop_epochs!r} instead.")
    return tuple(sorted(check_int(d, "lr_drop_epochs", owner, low=1, high=max(epochs - 1, 1))
                        for d in drop_epochs))


def course_schedule(arch: str, epochs: int) -> dict[str, Any]:
    """The course's SGD settings for an architecture, as keyword arguments of ``fit``.

    Plain SGD (no momentum) with learning rate 0.1 and batches of 100; for ``cnn`` the rate
    drops to 0.01 after half the epochs (``epochs // 2``, no drop for a single epoch).

    Example:
        >>> fit(model, train, test=test, **course_schedule("cnn", epochs=10))

    Returns:
        ``{"epochs", "lr", "batch_size", "momentum", "lr_drop_epochs", "lr_drop_factor"}``.
    """
    epochs = check_int(epochs, "epochs", "course_schedule", low=1)
    drops = (epochs // 2,) if arch == "cnn" and epochs >= 2 else ()
    return {"epochs": epochs, "lr": 0.1,
            "batch_size": 100, "momentum": 0.0, "lr_drop_epochs": drops, "lr_drop_factor": 0.1}
