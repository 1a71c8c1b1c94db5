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
(:func:`minmax_blocks`), not ``||Q|| ||P||`` (2 sqrt(2) in l2). The block declares itself
through its ``lipschitz_block()`` hook (any module may), so this module imports no model.
The per-op bounds are the ops' own ``operator_norm`` methods.

Everything is computed in float64 on detached copies of the live parameters.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from advrobust.core.threat import Norm
from advrobust.network._opnorm import DENSE_LIMIT, INFLATE
from advrobust.network._opnorm import conv_l2 as _conv_l2  # noqa: F401  (tests, bench)
from advrobust.network.ir import Network
from advrobust.network.ops import AffineOp, Op

__all__ = ["DENSE_LIMIT", "INFLATE", "dual_norm", "minmax_blocks", "network_prefix_norm",
           "network_split", "op_norm", "power_iteration", "prefix_norm", "split_last"]


def dual_norm(a: Tensor, norm: Norm) -> Tensor:
    """Dual norm of the rows of ``a`` (N, K, ...) -> (N, K): l1 for linf, l2 for l2, linf for
    l1."""
    flat = a.flatten(2)
    if norm is Norm.LINF:
        return flat.abs().sum(-1)
    if norm is Norm.L2:
        return flat.norm(dim=-1)
    return flat.abs().amax(-1)


def op_norm(op: Op, norm: Norm) -> float:
    """A certified upper bound on ``||op||_{p->p}`` of one op (its linear part; biases cancel):
    the op's own ``operator_norm`` (see :mod:`advrobust.network._opnorm`).

    Raises:
        UnsupportedLayerError: an op of a kind the bound does not know.
    """
    return op.operator_norm(norm)


def split_last(network_ops: list[Op]) -> int:
    """Index after the last ReLU: the ops from there on are affine and fold into the spec."""
    idx = [i for i, op in enumerate(network_ops) if op.nonlinear]
    return idx[-1] + 1 if idx else 0


def _declared_spans(module: nn.Module) -> dict[int, nn.Module]:
    """``id(first layer) -> last layer`` of every span a submodule declares 1-Lipschitz in
    every lp norm through its ``lipschitz_block()`` hook (None: not now, e.g. changed
    weights)."""
    spans: dict[int, nn.Module] = {}
    for m in module.modules():
        hook = getattr(m, "lipschitz_block", None)
        span = hook() if callable(hook) else None
        if span is not None:
            spans[id(span[0])] = span[1]
    return spans


def minmax_blocks(network: Network) -> dict[int, int]:
    """Start -> end (exclusive) op index of every declared 1-Lipschitz block of ``network``.

    A module declares a block through a ``lipschitz_block()`` method returning the first and
    last of its layers when the span between them is 1-Lipschitz in every lp norm, else None
    (:class:`~advrobust.models.minmax.MinMax`: ``P`` and ``Q`` of an unmodified pair sort).
    The block is the ops from the one built from the first layer to the one built from the
    last (matched by identity, with no batch norm folded into either); anything else is left
    to the per-op bounds (sound, only looser).
    """
    if network.module is None:
        return {}
    spans = _declared_spans(network.module)
    ops, blocks = network.ops, {}
    for i, op in enumerate(ops):
        last = spans.get(id(getattr(op, "module", None)))
        if last is None or getattr(op, "bn", None) is not None:
            continue
        for j in range(i + 1, len(ops)):
            if getattr(ops[j], "module", None) is last:
                if getattr(ops[j], "bn", None) is None:
                    blocks[i] = j + 1
                break
    return blocks


def network_split(network: Network, blocks: dict[int, int] | None = None) -> int:
    """Index after the last nonlinearity (a ReLU or a declared block): the ops from there on
    are affine and fold into the spec rows."""
    blocks = minmax_blocks(network) if blocks is None else blocks
    inner = {j for start, end in blocks.items() for j in range(start, end)}
    ends = [i + 1 for i, op in enumerate(network.ops) if op.nonlinear and i not in inner]
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
