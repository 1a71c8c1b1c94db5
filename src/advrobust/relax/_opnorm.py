"""Certified upper bounds on the operator norms of the IR's affine ops, and their product.

For an lp threat the Lipschitz constant of a logit difference ``c^T f`` w.r.t. the input is at
most ``||c^T W_L||_q * prod_l ||W_l||_{p->p}`` (ReLU is 1-Lipschitz in every lp norm, elementwise),
with q the dual norm of p. The per-op norms here are upper bounds (never estimates):

- linf -> linf: the largest absolute row sum; l1 -> l1: the largest absolute column sum;
- l2 -> l2 of a dense layer: the largest singular value from an SVD in float64, inflated by a
  relative 1e-9 that covers its backward error (~1e-15 relative) many times over;
- l2 -> l2 of a convolution: the largest singular value over frequencies of the 2-D DFT of the
  kernel on a grid large enough that the zero-padded (and strided) convolution is a submatrix of
  the circular one (Sedghi, Gupta & Long 2019, "The singular values of convolutional layers");
  a submatrix's norm is at most the whole matrix's. A stride s keeps every s-th output of the
  circular map, which folds s x s aliased frequencies into one block per frequency (the
  polyphase form), so strided convolutions and average pooling get their own norm (2x2
  average pooling: 1/2), not the unstrided one. The circular map can be larger than the
  zero-padded one on small images (boundary effects, 10-15 % for a 5x5 kernel on 12x12), so a
  convolution whose dense matrix is small enough (:data:`DENSE_LIMIT`) also gets the SVD of
  that matrix, like a dense layer, and keeps the smaller bound. Power iteration on the op itself
  (:func:`power_iteration`) gives the matching lower estimate, kept in the stats.

A :class:`~advrobust.models.minmax.MinMax` block (fixed ``P``, ReLU, fixed ``Q`` in the IR)
sorts feature pairs: it is 1-Lipschitz in every lp norm, so an unmodified block counts 1
(:func:`minmax_blocks`), not ``||Q|| ||P||`` (2 sqrt(2) in l2).

Everything is computed in float64 on detached copies of the live parameters.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from advrobust.core.threat import Norm
from advrobust.errors import UnsupportedLayerError
from advrobust.models.minmax import MinMax
from advrobust.network.ir import Network
from advrobust.network.ops import (
    AffineOp,
    ChannelAffineOp,
    FlattenOp,
    LinearOp,
    Op,
    _ConvLike,
)
from advrobust.network.relu import ReLUOp

__all__ = ["INFLATE", "dual_norm", "minmax_blocks", "network_prefix_norm", "network_split",
           "op_norm", "power_iteration", "prefix_norm", "split_last"]

#: Relative inflation of every float64 norm: covers the rounding of the float64 computations.
INFLATE = 1e-9

#: Convolutions whose dense matrix has at most this many entries (80 MB in float64) also get
#: the SVD of that matrix; the smaller of the two bounds is used.
DENSE_LIMIT = 10_000_000


def dual_norm(a: Tensor, norm: Norm) -> Tensor:
    """Dual norm of the rows of ``a`` (N, K, ...) -> (N, K): l1 for linf, l2 for l2, linf for
    l1."""
    flat = a.flatten(2)
    if norm is Norm.LINF:
        return flat.abs().sum(-1)
    if norm is Norm.L2:
        return flat.norm(dim=-1)
    return flat.abs().amax(-1)


def _dense_kernel(op: _ConvLike) -> Tensor:
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


def _conv_l2(op: _ConvLike) -> float:
    k = _dense_kernel(op)
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


def op_norm(op: Op, norm: Norm) -> float:
    """A certified upper bound on ``||op||_{p->p}`` of one op (its linear part; biases cancel).

    Raises:
        UnsupportedLayerError: an op of a kind the bound does not know.
    """
    if isinstance(op, (FlattenOp, ReLUOp)):
        return 1.0
    if isinstance(op, ChannelAffineOp):
        value = float(op.scale_shift()[0].detach().double().abs().amax())
    elif isinstance(op, LinearOp):
        w = op.weight_bias()[0].detach().double()
        if norm is Norm.LINF:
            value = float(w.abs().sum(1).amax())
        elif norm is Norm.L1:
            value = float(w.abs().sum(0).amax())
        else:
            value = float(torch.linalg.matrix_norm(w, ord=2))
    elif isinstance(op, _ConvLike):
        k = op.kernel().detach().double().abs()
        if norm is Norm.LINF:  # every output sums at most its whole kernel slice
            value = float(k.flatten(1).sum(1).amax())
        elif norm is Norm.L1:  # an input touches each tap at most once per output channel
            value = float(k.sum((0, 2, 3)).amax())
        else:
            value = _conv_l2(op)
            if op.in_size * op.out_size <= DENSE_LIMIT:  # small: the exact norm may be tighter
                w = op.linear_map()[0].detach().double()
                value = min(value, float(torch.linalg.matrix_norm(w, ord=2)))
    else:
        raise UnsupportedLayerError(
            f"{type(op).__name__} ({op.name}): no operator-norm bound for this op kind.")
    return value * (1 + INFLATE)


def split_last(network_ops: list[Op]) -> int:
    """Index after the last ReLU: the ops from there on are affine and fold into the spec."""
    idx = [i for i, op in enumerate(network_ops) if isinstance(op, ReLUOp)]
    return idx[-1] + 1 if idx else 0


def minmax_blocks(network: Network) -> dict[int, int]:
    """Start -> end (exclusive) op index of every MinMax block of ``network`` that is intact.

    A block is the three ops ``P``, ReLU, ``Q`` built from the layers of one
    :class:`~advrobust.models.minmax.MinMax` of ``network.module`` (matched by identity, with no
    batch norm folded in) whose fixed weights are still the canonical ones; anything else is
    left to the per-op bounds (sound, only looser).
    """
    if network.module is None:
        return {}
    firsts = {id(m[0]): m for m in network.module.modules() if isinstance(m, MinMax)}
    ops, blocks = network.ops, {}
    for i, op in enumerate(ops[:-2]):
        block = firsts.get(id(getattr(op, "module", None)))
        if block is None or getattr(op, "bn", None) is not None:
            continue
        last = ops[i + 2]
        if isinstance(ops[i + 1], ReLUOp) and getattr(last, "module", None) is block[2] \
                and getattr(last, "bn", None) is None and block.is_exact():
            blocks[i] = i + 3
    return blocks


def network_split(network: Network, blocks: dict[int, int] | None = None) -> int:
    """Index after the last nonlinearity (a ReLU or a MinMax block): the ops from there on are
    affine and fold into the spec rows."""
    blocks = minmax_blocks(network) if blocks is None else blocks
    inner = {j for start, end in blocks.items() for j in range(start, end)}
    ends = [i + 1 for i, op in enumerate(network.ops)
            if isinstance(op, ReLUOp) and i not in inner]
    return max(ends + list(blocks.values()) + [0])


def network_units(network: Network, end: int, blocks: dict[int, int] | None = None
                  ) -> list[tuple[int, Op | None]]:
    """The ops before ``end`` as ``(index, op)`` Lipschitz units; a MinMax block is one unit
    ``(start, None)`` of constant 1."""
    blocks = minmax_blocks(network) if blocks is None else blocks
    units: list[tuple[int, Op | None]] = []
    i = 0
    while i < end:
        if i in blocks:
            units.append((i, None))
            i = blocks[i]
        else:
            units.append((i, network.ops[i]))
            i += 1
    return units


def network_prefix_norm(network: Network, end: int, norm: Norm) -> float:
    """Product of the per-op bounds of ``network.ops[:end]``, MinMax blocks counted 1."""
    return math.prod(1.0 if op is None else op_norm(op, norm)
                     for _, op in network_units(network, end))


def prefix_norm(ops: list[Op], norm: Norm) -> float:
    """Product of the per-op bounds of ``ops`` (ReLUs count 1)."""
    return math.prod(op_norm(op, norm) for op in ops)


def power_iteration(op: AffineOp, iterations: int = 20,
                    generator: torch.Generator | None = None) -> float:
    """Estimate of ``||op||_{2->2}`` (a lower bound up to rounding) by power iteration on
    ``W^T W`` through the op's own forward and transpose maps."""
    v = torch.randn((1,) + op.in_shape, generator=generator, dtype=op._dtype())
    v = v.to(op._device())
    sigma = 0.0
    with torch.no_grad():
        for _ in range(iterations):
            v = v / v.norm().clamp_min(1e-30)
            u = op.linear(v)
            sigma = float(u.norm())
            v = op.backward(u.unsqueeze(0))[0]
    return sigma
