"""CROWN's intermediate bounds of convolutional layers through patches.

The driver of :class:`~advrobust.relax._patches.Patches` for :func:`advrobust.relax.crown._refine`
(Xu et al. 2020, "Automatic perturbation analysis for scalable certified robustness and beyond"):
the unit rows of a layer's neurons are carried back as receptive-field windows through every op
that declares itself :attr:`~advrobust.network.ops.Op.patchable` (convolutions, average pooling,
per-channel affine maps: ``patch_window`` / ``window_backward`` / ``channel_bias``; ReLU:
``patch_relaxation``), with the same relaxations and rounding allowances as the dense
back-substitution, until a window would cover a whole layer or an op (Flatten, Linear) needs
dense rows; ``dense`` then finishes the pass. No op type is asked.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from advrobust.core.threat import LpBall, Norm
from advrobust.network.ir import Network
from advrobust.relax._patches import Patches, _rowdot
from advrobust.relax._rounding import input_gamma, magnitude, op_gamma
from advrobust.relax.ibp import LayerBounds

__all__ = ["DenseTail", "patch_elements", "patch_pass"]

#: ``dense(a, stop, const, err) -> (N, Q)`` lower bounds: finishes a pass from dense
#: coefficients ``a`` (B, Q, *shape) on the input of op ``stop``, with the constants and
#: rounding allowances accumulated so far.
DenseTail = Callable[[Tensor, int, Tensor, Tensor], Tensor]


def patch_elements(network: Network, index: int, n: int) -> int | None:
    """Values per query of the largest coefficient tensor of the patch pass for op ``index``'s
    input (B * window, or B * dense row after a switch), or None if patches do not apply."""
    shape = network.ops[index].in_shape
    if index == 0 or len(shape) != 3 or not network.ops[index - 1].patchable:
        return None
    kernel, stride, padding = (1, 1), (1, 1), (0, 0)
    batch, worst = 1, shape[0]
    for j in reversed(range(index)):
        op = network.ops[j]
        if op.nonlinear:  # its relaxation differs per sample
            batch = n
            worst = max(worst, batch * op.in_shape[0] * kernel[0] * kernel[1])
        window = op.patch_window(kernel, stride, padding) if op.patchable else None
        if window is not None:
            kernel, stride, padding = window
            dense = kernel[0] * kernel[1] >= op.in_shape[1] * op.in_shape[2]
            if not dense:
                worst = max(worst, batch * op.in_shape[0] * kernel[0] * kernel[1])
        else:
            dense = not op.patchable
        if dense:
            sizes = [network.input_shape] + [o.out_shape for o in network.ops[:j + 1]]
            return max(worst, batch * max(math.prod(s) for s in sizes))
    return worst


def _layer_tensor(network: Network, j: int, kind: str, bounds: LayerBounds,
                  mags: dict[int, Tensor], threat: LpBall, x0: Tensor) -> Tensor:
    """A per-layer tensor (N, *shape) the patch pass reads windows of: the relaxation of the
    nonlinear op ``j`` (``low``, ``diff`` = up - low, ``up_b``), the magnitudes of op ``j``'s
    rounding allowance times its gamma (``act_mag``, ``op_mag``; ``act_op_mag``: the
    nonlinear op ``j`` plus the affine op ``j - 1`` before it), or (j = -1) the input box
    (``mid``, ``rad``, ``mag``)."""
    if j < 0:
        low, up = threat.input_bounds(x0)
        return {"mid": lambda: (up + low) / 2, "rad": lambda: (up - low) / 2,
                "mag": lambda: torch.maximum(low.abs(), up.abs()) + threat.eps}[kind]()
    dtype = bounds[j][0].dtype
    if kind == "op_mag":
        return op_gamma(network.ops[j], dtype) * mags[j]
    if kind in ("act_mag", "act_op_mag"):
        parts = network.graph_ops[j].rounding_terms(dtype, bounds[j])
        out = torch.zeros_like(bounds[j][0]) if parts is None else parts[0] * parts[1]
        if kind == "act_op_mag":
            out = out + op_gamma(network.ops[j - 1], dtype) * mags[j - 1]
        return out
    low, diff, up_b = network.ops[j].patch_relaxation(*bounds[j])
    return {"low": low, "diff": diff, "up_b": up_b}[kind]


def patch_pass(network: Network, x0: Tensor, threat: LpBall, bounds: LayerBounds, index: int,
               channels: Tensor, positions: Tensor, rounding: bool, mags: dict[int, Tensor],
               cache: dict[tuple[int, str], Tensor], dense: DenseTail) -> Tensor:
    """Lower bounds (N, 2, S, L) of ``+z`` then ``-z`` for z the input of op ``index`` at
    ``channels`` (S,) x flat grid ``positions`` (L,), carried back as patches
    (:mod:`advrobust.relax._patches`) while windows are smaller than the layers, then densely.
    Same relaxations and rounding allowances as CROWN's dense back-substitution (an affine
    op's charged at the ReLU after it). ``dense(a, stop, const, err)`` finishes the pass from
    dense coefficients ``a`` on the output of op ``stop - 1`` and concretises it."""
    lo = bounds[index][0]
    out_shape = (x0.shape[0], 2, channels.numel(), positions.numel())
    p = Patches.units(channels, positions, network.ops[index].in_shape, lo)
    const = lo.new_zeros(1, p.pt.shape[1])
    err = lo.new_zeros(1, p.pt.shape[1])
    charged = -1  # the affine op whose allowance the ReLU after it already charged

    def take(j: int, kind: str) -> Tensor:
        if (j, kind) not in cache:  # windows depend on the layer only: shared by the chunks
            cache[j, kind] = p.unfold(_layer_tensor(network, j, kind, bounds, mags, threat, x0))
        return p.take(cache[j, kind])

    for j in reversed(range(index)):
        op = network.ops[j]
        window = op.patch_window(p.kernel, p.stride, p.padding) if op.patchable else None
        grow = window is not None and math.prod(window[0]) >= op.in_shape[1] * op.in_shape[2]
        if grow or not op.patchable:
            return dense(p.to_dense(), j + 1, const, err).reshape(out_shape)
        if op.nonlinear:
            if rounding:
                prev = network.ops[j - 1] if j > 0 else None
                kind = "act_mag"
                if op.bounded_slopes and prev is not None and prev.patchable \
                        and not prev.nonlinear and op_gamma(prev, lo.dtype):
                    # Slopes in [0, 1]: |coefficients| only shrink through the relaxation, so
                    # the allowance of the affine op before it is charged here, on the same
                    # windows, with one product instead of two (slightly larger, still sound).
                    if j - 1 not in mags:
                        mags[j - 1] = magnitude(prev, *bounds[j - 1])
                    kind, charged = "act_op_mag", j - 1
                err = err + p.dot(take(j, kind), absolute=True)
            p, c = p.through_relu(take(j, "low"), take(j, "diff"), take(j, "up_b"))
        else:
            if rounding and op_gamma(op, lo.dtype) > 0 and charged != j:
                if j not in mags:
                    mags[j] = magnitude(op, *bounds[j])
                err = err + p.dot(take(j, "op_mag"), absolute=True)
            p, c = p.through(op)
        const = const + c
    if threat.norm is not Norm.LINF:
        return dense(p.to_dense(), 0, const, err).reshape(out_shape)
    absolute = p.grouped().abs()
    value = p.dot(take(-1, "mid")) - _rowdot(absolute, take(-1, "rad")) + const
    if rounding:
        value = value - (err + input_gamma(x0[0].numel(), value.dtype) * (
            _rowdot(absolute.detach(), take(-1, "mag")) + const.detach().abs()))
    return value.reshape(out_shape)
