"""Per-channel input normalisation as the model's first layer.

Keeping normalisation inside the model lets attacks, verifiers and threat sets work in the
data's [0, 1] pixel space: ``eps`` is measured on pixels, not on normalised values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from advrobust.errors import InvalidInputError, InvalidParameterError

__all__ = ["Normalize", "normalize_values"]


def _as_floats(value: float | Sequence[float], name: str) -> list[float]:
    items = [value] if isinstance(value, (int, float)) else value
    try:
        floats = [float(v) for v in items]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"The '{name}' parameter of Normalize must be a float or a sequence of floats "
            f"(one per channel). Got {value!r} instead.") from None
    if not floats or isinstance(value, bool) or not all(math.isfinite(v) for v in floats):
        raise InvalidParameterError(
            f"The '{name}' parameter of Normalize must be one finite float or a non-empty "
            f"sequence of finite floats (one per channel). Got {value!r} instead.")
    return floats


def normalize_values(mean: float | Sequence[float],
                     std: float | Sequence[float]) -> tuple[list[float], list[float]]:
    """Validate ``(mean, std)`` and return them as two equally long lists of floats.

    A single value is broadcast to the length of the other.

    Raises:
        InvalidParameterError: non-finite values, ``std <= 0``, or lengths that differ
            (other than 1).
    """
    m, s = _as_floats(mean, "mean"), _as_floats(std, "std")
    if any(v <= 0 for v in s):
        raise InvalidParameterError(
            f"The 'std' parameter of Normalize must hold floats in (0, inf). Got {std!r} "
            "instead.")
    if len(m) != len(s):
        if len(m) == 1:
            m = m * len(s)
        elif len(s) == 1:
            s = s * len(m)
        else:
            raise InvalidParameterError(
                f"Normalize needs as many 'mean' as 'std' values (one per channel). Got "
                f"{len(m)} means and {len(s)} stds instead.")
    return m, s


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, for inputs of shape (N, C, H, W) or (N, C).

    ``mean`` and ``std`` are buffers of shape (C, 1, 1) (saved in the state dict, moved with
    the model); verifiers read them as a per-channel affine map.

    Args:
        mean: One value for every channel, or one per channel.
        std: One positive value for every channel, or one per channel.

    Raises:
        InvalidParameterError: ``std <= 0``, non-finite values, or mismatched lengths.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float]) -> None:
        super().__init__()
        m, s = normalize_values(mean, std)
        self.register_buffer("mean", torch.tensor(m, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(s, dtype=torch.float32).view(-1, 1, 1))

    @property
    def channels(self) -> int:
        """The number of channels the buffers hold (1 broadcasts to any)."""
        return int(self.mean.shape[0])

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` of shape (N, C, H, W); shape is preserved."""
        if x.dim() >= 2 and self.channels not in (1, x.shape[1]):
            raise InvalidInputError(
                f"Normalize holds {self.channels} channel statistics but the input has "
                f"{x.shape[1]} channels (shape {tuple(x.shape)}).")
        mean, std = self.mean, self.std
        if x.dim() == 2:
            mean, std = mean.view(1, -1), std.view(1, -1)
        return (x - mean) / std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
