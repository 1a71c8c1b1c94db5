"""``nn.Linear`` (:class:`LinearOp`) and the eval-mode batch-norm folding shared with
convolutions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.core.threat import Norm
from advrobust.network._opnorm import INFLATE, matrix_norm
from advrobust.network.ops.affine import AffineOp

if TYPE_CHECKING:
    from advrobust.network.ops.conv import ConvOp

__all__ = ["LinearOp", "bn_scale_shift"]


def bn_scale_shift(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """Per-channel ``(scale, shift)`` of an eval-mode batch-norm: ``bn(x) = scale * x + shift``."""
    var = bn.running_var  # type: ignore[union-attr]
    mean = bn.running_mean  # type: ignore[union-attr]
    assert isinstance(var, Tensor) and isinstance(mean, Tensor)
    scale = torch.rsqrt(var + bn.eps)  # type: ignore[operator]
    if bn.weight is not None:  # type: ignore[union-attr]
        scale = scale * bn.weight  # type: ignore[union-attr,operator]
    shift = -mean * scale
    if bn.bias is not None:  # type: ignore[union-attr]
        shift = shift + bn.bias  # type: ignore[union-attr,operator]
    return scale, shift


def _fold(op: LinearOp | ConvOp, bn: nn.Module, name: str) -> bool:
    """Fold ``bn`` (called ``name``) into a linear or convolutional op that has none yet."""
    if op.bn is not None:
        return False
    op.bn = bn
    op.name = f"{op.name}+{name}"
    return True


class LinearOp(AffineOp):
    """``nn.Linear``, optionally followed by a folded ``nn.BatchNorm1d``."""

    def __init__(self, module: nn.Linear, in_shape: tuple[int, ...], name: str,
                 bn: nn.Module | None = None) -> None:
        super().__init__(in_shape, (module.out_features,), name)
        self.module = module
        self.bn = bn

    def fold_batchnorm(self, bn: nn.Module, name: str) -> bool:
        return _fold(self, bn, name)

    def weight_bias(self) -> tuple[Tensor, Tensor | None]:
        """The effective (folded) weight (out, in) and bias (out,), from the live modules."""
        w, b = self.module.weight, self.module.bias
        if self.bn is None:
            return w, b
        scale, shift = bn_scale_shift(self.bn)
        return w * scale.unsqueeze(1), shift if b is None else b * scale + shift

    def linear(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_bias()[0])

    def bias(self) -> Tensor | None:
        return self.weight_bias()[1]

    def backward(self, a: Tensor) -> Tensor:
        return a.matmul(self.weight_bias()[0])

    def abs_linear(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_bias()[0].abs())

    def linear_map(self) -> tuple[Tensor, Tensor]:
        w, b = self.weight_bias()
        return w, (w.new_zeros(w.shape[0]) if b is None else b)

    def rows(self, part: Tensor) -> tuple[Tensor, Tensor | None] | None:
        w, b = self.weight_bias()
        return w[part], None if b is None else b[part]

    @property
    def terms(self) -> int:
        return max(self.in_size, self.out_size)

    def abs_backward(self, rad: Tensor) -> Tensor:
        return rad.matmul(self.weight_bias()[0].abs())

    def operator_norm(self, norm: Norm) -> float:
        return matrix_norm(self.weight_bias()[0].detach().double(), norm) * (1 + INFLATE)

    def _dtype(self) -> torch.dtype:
        return self.module.weight.dtype
