"""Per-channel affine maps (:class:`ChannelAffineOp`): a normalisation layer, a batch-norm
left unfolded."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from advrobust.core.threat import Norm
from advrobust.network._opnorm import INFLATE
from advrobust.network.ops.affine import AffineOp

__all__ = ["ChannelAffineOp"]


class ChannelAffineOp(AffineOp):
    """Per-channel ``x * scale + shift``: a normalisation layer or a batch-norm left unfolded.

    ``params`` is called at every use and returns the live ``(scale, shift)``, each (C,).
    """

    def __init__(self, params: object, shape: tuple[int, ...], name: str) -> None:
        super().__init__(shape, shape, name)
        self.params = params

    def scale_shift(self) -> tuple[Tensor, Tensor]:
        """Per-channel scale and shift, shaped (C, 1, ...) to broadcast over (..., *in_shape)."""
        scale, shift = self.params()  # type: ignore[operator]
        view = (self.in_shape[0],) + (1,) * (len(self.in_shape) - 1)
        return (scale.reshape(-1).expand(self.in_shape[0]).reshape(view),
                shift.reshape(-1).expand(self.in_shape[0]).reshape(view))

    @property
    def fan_in(self) -> int:
        return 1

    def abs_backward(self, rad: Tensor) -> Tensor:
        return rad * self.scale_shift()[0].abs()

    def operator_norm(self, norm: Norm) -> float:
        return float(self.scale_shift()[0].detach().double().abs().amax()) * (1 + INFLATE)

    def l2_estimate(self, v: Tensor | None, init: Callable[[tuple[int, ...]], Tensor],
                    iterations: int) -> tuple[Tensor | None, Tensor | None]:
        return self.scale_shift()[0].abs().amax(), None

    @property
    def patchable(self) -> bool:
        return len(self.in_shape) == 3

    def window_backward(self, flat: Tensor) -> Tensor:
        return flat * self.scale_shift()[0].reshape(1, -1, 1, 1).to(flat)

    def channel_bias(self) -> Tensor | None:
        return self.scale_shift()[1].reshape(-1)

    def linear(self, x: Tensor) -> Tensor:
        return x * self.scale_shift()[0]

    def bias(self) -> Tensor | None:
        return self.scale_shift()[1].expand(self.in_shape)

    def backward(self, a: Tensor) -> Tensor:
        return a * self.scale_shift()[0]

    def abs_linear(self, x: Tensor) -> Tensor:
        return x * self.scale_shift()[0].abs()

    def _dtype(self) -> torch.dtype:
        return self.scale_shift()[0].dtype

    def _device(self) -> torch.device:
        return self.scale_shift()[0].device
