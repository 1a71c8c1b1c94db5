"""Certified operator-norm bounds of the chain IR's affine ops (what their ``operator_norm``
methods compute; :mod:`advrobust.relax._opnorm` explains the bounds and multiplies them).

- linf -> linf: the largest absolute row sum; l1 -> l1: the largest absolute column sum;
- l2 -> l2 of a dense layer: the largest singular value from an SVD in float64;
- l2 -> l2 of a convolution: the largest singular value over frequencies of the 2-D DFT of the
  kernel on a grid where the zero-padded (and strided) convolution is a submatrix of the
  circular one (Sedghi, Gupta & Long 2019), and the SVD of the dense matrix when it is small
  (:data:`DENSE_LIMIT`); the smaller bound is kept.

Every value is inflated by :data:`INFLATE` (covers the float64 computations' rounding).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from advrobust.core.threat import Norm

if TYPE_CHECKING:
    from advrobust.network.ops.conv import _ConvLike

__all__ = ["DENSE_LIMIT", "INFLATE", "conv_l2", "conv_norm", "dense_kernel", "matrix_norm"]

#: Relative inflation of every float64 norm: covers the rounding of the float64 computations.
INFLATE = 1e-9

#: Convolutions whose dense matrix has at most this many entries (80 MB in float64) also get
#: the SVD of that matrix; the smaller of the two bounds is used.
DENSE_LIMIT = 10_000_000


def matrix_norm(w: Tensor, norm: Norm) -> float:
    """``||W||_{p->p}`` of a dense (out, in) float64 matrix (before inflation)."""
    if norm is Norm.LINF:
        return float(w.abs().sum(1).amax())
    if norm is Norm.L1:
        return float(w.abs().sum(0).amax())
    return float(torch.linalg.matrix_norm(w, ord=2))


def dense_kernel(op: _ConvLike) -> Tensor:
    """The full (C_out, C_in, kh', kw') kernel in float64: groups as zero blocks, dilation as
    zero taps."""
    k = op.kernel().detach().double()
    c_out, c_in_g, kh, kw = k.shape
    groups = op.groups
    dh, dw = op.dilation
    full = k.new_zeros(c_out, c_in_g * groups, dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    per = c_out // groups
    for g in range(groups):
        full[g * per:(g + 1) * per, g * c_in_g:(g + 1) * c_in_g, ::dh, ::dw] = k[g * per:
                                                                              (g + 1) * per]
    return full


def conv_l2(op: _ConvLike) -> float:
    """The circular-embedding l2 bound of a (strided) convolution (before inflation)."""
    k = dense_kernel(op)
    c_out, c_in = k.shape[:2]
    sh, sw = op.stride
    # a circular grid where the zero-padded map is a submatrix, rounded up to whole strides
    grid = [op.in_shape[1 + d] + 2 * op.padding[d] + k.shape[2 + d] for d in range(2)]
    grid = [-(-g // s) * s for g, s in zip(grid, (sh, sw), strict=True)]
    mh, mw = grid[0] // sh, grid[1] // sw
    spectrum = torch.fft.fft2(k, s=grid)  # (C_out, C_in, S_h, S_w)
    # Keeping every stride-th output of a circular convolution folds the sh * sw frequencies
    # j + a * (S / s) onto frequency j: per folded frequency the unitary map is
    # [K(f_1) ... K(f_{sh sw})] / sqrt(sh sw), a (C_out, sh sw C_in) matrix.
    mats = spectrum.reshape(c_out, c_in, sh, mh, sw, mw).permute(3, 5, 0, 2, 4, 1)
    mats = mats.reshape(mh, mw, c_out, sh * sw * c_in)
    return float(torch.linalg.matrix_norm(mats, ord=2).amax()) / math.sqrt(sh * sw)


def conv_norm(op: _ConvLike, norm: Norm) -> float:
    """``||op||_{p->p}`` of a convolution-like op (before inflation)."""
    k = op.kernel().detach().double().abs()
    if norm is Norm.LINF:  # every output sums at most its whole kernel slice
        return float(k.flatten(1).sum(1).amax())
    if norm is Norm.L1:  # an input touches each tap at most once per output channel
        return float(k.sum((0, 2, 3)).amax())
    value = conv_l2(op)
    if op.in_size * op.out_size <= DENSE_LIMIT:  # small: the exact norm may be tighter
        w = op.linear_map()[0].detach().double()
        value = min(value, float(torch.linalg.matrix_norm(w, ord=2)))
    return value
