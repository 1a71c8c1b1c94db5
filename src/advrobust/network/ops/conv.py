"""2-D convolutions and average pooling (:class:`ConvOp`, :class:`AvgPoolOp`): one transpose,
interval and receptive-field (patch) logic for both."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.core.threat import Norm
from advrobust.network._convt import conv_transpose
from advrobust.network._opnorm import INFLATE, conv_norm
from advrobust.network.ops.affine import AffineOp
from advrobust.network.ops.base import Window
from advrobust.network.ops.dense import _fold, bn_scale_shift

__all__ = ["AvgPoolOp", "ConvOp"]


class _ConvLike(AffineOp):
    """Shared transpose / interval logic of 2-D convolutions (conv and average pooling)."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def kernel(self) -> Tensor:
        """The (folded) convolution weight (C_out, C_in / groups, kh, kw)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement kernel()")

    @property
    def fan_in(self) -> int:
        return int(self.kernel()[0].numel())

    @property
    def terms(self) -> int:
        return max(int(self.kernel()[0].numel()), self.out_size)

    def operator_norm(self, norm: Norm) -> float:
        return conv_norm(self, norm) * (1 + INFLATE)

    @property
    def patchable(self) -> bool:
        return len(self.in_shape) == 3

    def patch_window(self, kernel: tuple[int, int], stride: tuple[int, int],
                     padding: tuple[int, int]) -> Window | None:
        k = self.kernel().shape[2:]
        size = tuple((kernel[d] - 1) * self.stride[d] + self.dilation[d] * (k[d] - 1) + 1
                     for d in range(2))
        new_stride = tuple(stride[d] * self.stride[d] for d in range(2))
        new_pad = tuple(padding[d] * self.stride[d] + self.padding[d] for d in range(2))
        return size, new_stride, new_pad  # type: ignore[return-value]

    def window_backward(self, flat: Tensor) -> Tensor:
        return conv_transpose(flat, self.kernel().to(flat), self.stride, (0, 0), (0, 0),
                              self.groups, self.dilation)

    def channel_bias(self) -> Tensor | None:
        b = self.bias()
        return None if b is None else b.reshape(-1)

    def linear(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.kernel(), None, self.stride, self.padding, self.dilation,
                        self.groups)

    def abs_linear(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.kernel().abs(), None, self.stride, self.padding, self.dilation,
                        self.groups)

    def backward(self, a: Tensor) -> Tensor:
        n, k = a.shape[:2]
        flat = a.reshape((n * k,) + self.out_shape)
        w = self.kernel().to(a)
        # output_padding recovers input sizes that the strided forward map rounded down.
        out_pad = []
        for dim in range(2):
            full = ((self.out_shape[1 + dim] - 1) * self.stride[dim] - 2 * self.padding[dim]
                    + self.dilation[dim] * (w.shape[2 + dim] - 1) + 1)
            out_pad.append(self.in_shape[1 + dim] - full)
        back = conv_transpose(flat, w, self.stride, self.padding, tuple(out_pad), self.groups,
                              self.dilation)
        return back.reshape((n, k) + self.in_shape)

    def bias_term(self, a: Tensor) -> Tensor:
        b = self.bias()
        if b is None:
            return a.new_zeros(a.shape[:2])
        return (a.flatten(3).sum(-1) * b.reshape(-1)).sum(-1)

    def _device(self) -> torch.device:
        return self.kernel().device

    def _dtype(self) -> torch.dtype:
        return self.kernel().dtype


class ConvOp(_ConvLike):
    """``nn.Conv2d`` (zero padding), optionally followed by a folded ``nn.BatchNorm2d``."""

    def __init__(self, module: nn.Conv2d, in_shape: tuple[int, ...],
                 out_shape: tuple[int, ...], name: str, bn: nn.Module | None = None) -> None:
        super().__init__(in_shape, out_shape, name)
        self.module = module
        self.bn = bn
        self.stride = module.stride  # type: ignore[assignment]
        self.padding = module.padding  # type: ignore[assignment]
        self.dilation = module.dilation  # type: ignore[assignment]
        self.groups = module.groups

    def fold_batchnorm(self, bn: nn.Module, name: str) -> bool:
        return _fold(self, bn, name)

    def kernel(self) -> Tensor:
        w = self.module.weight
        if self.bn is None:
            return w
        return w * bn_scale_shift(self.bn)[0].reshape(-1, 1, 1, 1)

    def bias(self) -> Tensor | None:
        b = self.module.bias
        if self.bn is not None:
            scale, shift = bn_scale_shift(self.bn)
            b = shift if b is None else b * scale + shift
        return None if b is None else b.reshape(-1, 1, 1)


class AvgPoolOp(_ConvLike):
    """``nn.AvgPool2d`` as a depthwise convolution with weights ``1 / (kh * kw)``."""

    def __init__(self, module: nn.AvgPool2d, in_shape: tuple[int, ...],
                 out_shape: tuple[int, ...], name: str) -> None:
        super().__init__(in_shape, out_shape, name)
        self.module = module
        self.kernel_size = nn.modules.utils._pair(module.kernel_size)
        self.stride = nn.modules.utils._pair(module.stride or module.kernel_size)
        self.padding = nn.modules.utils._pair(module.padding)
        self.groups = in_shape[0]

    def kernel(self) -> Tensor:
        kh, kw = self.kernel_size
        # float64: exact for any input dtype (backward casts it to the coefficients' dtype)
        return torch.full((self.in_shape[0], 1, kh, kw), 1.0 / (kh * kw), dtype=torch.float64)

    def linear(self, x: Tensor) -> Tensor:
        return self.module(x)

    def abs_linear(self, x: Tensor) -> Tensor:
        return self.module(x)

    def bias(self) -> Tensor | None:
        return None

    def tiles(self) -> bool:
        """True if the windows tile the input without overlap or padding (stride = kernel):
        then every input value feeds at most one output value, with weight ``1 / (kh * kw)``."""
        return tuple(self.stride) == self.kernel_size and tuple(self.padding) == (0, 0)

    def tile_back(self, flat: Tensor) -> Tensor:
        """The transposed map of tiling windows (see :meth:`tiles`) on ``flat`` (M, C, h, w):
        each value spread over its ``kh x kw`` block times ``1 / (kh * kw)`` -> (M, C, h kh,
        w kw). The transposed convolution's exact values (one product per value), without
        its kernel."""
        (kh, kw), (m, c, h, w) = self.kernel_size, flat.shape
        up = (flat * (1.0 / (kh * kw))).reshape(m, c, h, 1, w, 1)  # scale before the copy
        return up.expand(-1, -1, -1, kh, -1, kw).reshape(m, c, h * kh, w * kw)

    def window_backward(self, flat: Tensor) -> Tensor:
        return self.tile_back(flat) if self.tiles() else super().window_backward(flat)

    def backward(self, a: Tensor) -> Tensor:
        if not self.tiles():
            return super().backward(a)
        n, k = a.shape[:2]
        h, w = self.in_shape[1:]
        up = self.tile_back(a.reshape((n * k,) + self.out_shape))
        if up.shape[2:] != (h, w):  # rows / columns the forward map rounded away
            up = F.pad(up, (0, w - up.shape[3], 0, h - up.shape[2]))
        return up.reshape((n, k) + self.in_shape)
