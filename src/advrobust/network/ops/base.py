"""The op interface of the chain IR (:class:`Op`): shapes, the numerical facts every op
declares, and the hooks the algorithms call instead of asking an op's type."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from advrobust.core.threat import Norm
from advrobust.errors import UnsupportedLayerError

if TYPE_CHECKING:
    from advrobust.network.graph.base import GraphOp

__all__ = ["Op", "Window"]

#: A window's ``(size, stride, padding)``, each (rows, columns).
Window = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


class Op:
    """A node of the IR: shapes (without the batch dimension) and a name for messages."""

    #: True if the op's outputs are exact in floating point (a reshape, ReLU): interval bounds
    #: through it need no rounding allowance.
    exact: bool = False
    #: True for the elementwise activation (ReLU); the ops after the last one fold into spec
    #: rows.
    nonlinear: bool = False
    #: True if the op's linear relaxation has its slopes in [0, 1], so coefficients never grow
    #: in magnitude through a backward step (ReLU): the patch pass charges the rounding
    #: allowance of the affine op before it at this op.
    bounded_slopes: bool = False

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], name: str) -> None:
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(out_shape)
        self.name = name

    @property
    def in_size(self) -> int:
        """Number of input units."""
        return math.prod(self.in_shape)

    @property
    def out_size(self) -> int:
        """Number of output units."""
        return math.prod(self.out_shape)

    def forward(self, x: Tensor) -> Tensor:
        """The layer's output (N, *out_shape)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward()")

    def interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Elementwise output bounds from elementwise input bounds."""
        raise NotImplementedError(f"{type(self).__name__} does not implement interval()")

    @property
    def terms(self) -> int:
        """Products summed per rounded value of the op in any pass (an upper bound; 0 when
        nothing is rounded): the forward dot products sum the fan-in, back-substitution's
        transposed products the fan-out (at most ``out_size``), the bias term ``<a, b>``
        ``out_size`` products."""
        return max(1, self.out_size)

    def magnitude(self, lo: Tensor, hi: Tensor) -> Tensor:
        """Magnitudes of the terms of the op's outputs over the input box ``[lo, hi]``
        (N, *out_shape): ``max(|lo|, |hi|)`` for an elementwise op."""
        return torch.maximum(lo.abs(), hi.abs())

    def operator_norm(self, norm: Norm) -> float:
        """A certified upper bound on ``||op||_{p->p}`` (its linear part; biases cancel).

        Raises:
            UnsupportedLayerError: the op has no such bound.
        """
        raise UnsupportedLayerError(
            f"{type(self).__name__} ({self.name}): no operator-norm bound for this op kind.")

    def jacobian_backward(self, mid: Tensor, rad: Tensor, lo: Tensor, hi: Tensor
                          ) -> tuple[Tensor, Tensor]:
        """Carry elementwise gradient bounds ``mid +- rad`` (N, K, *out_shape) of rows w.r.t.
        the op's output back to its input, over inputs in ``[lo, hi]`` (N, *in_shape).

        Raises:
            UnsupportedLayerError: the op has no Jacobian bound.
        """
        raise UnsupportedLayerError(
            f"{type(self).__name__} ({self.name}): no Jacobian bound for this op kind.")

    def to_graph_op(self) -> GraphOp:
        """The registered graph op that carries this op (every bound pass, interval pass and
        LP / MILP encoding of a :class:`~advrobust.network.ir.Network` goes through it)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement to_graph_op()")

    # --- receptive-field windows (CROWN's patch pass, :mod:`advrobust.relax._patch_crown`)

    @property
    def patchable(self) -> bool:
        """True if CROWN's patch pass can carry coefficients back through the op as
        receptive-field windows: an affine op then gives :meth:`patch_window`,
        :meth:`window_backward` and :meth:`channel_bias`, a nonlinear one
        :meth:`patch_relaxation`."""
        return False

    def patch_window(self, kernel: tuple[int, int], stride: tuple[int, int],
                     padding: tuple[int, int]) -> Window | None:
        """Window size, stride and padding on the op's input of a window ``kernel`` at
        ``stride`` / ``padding`` on its output, or None if windows pass unchanged (an
        elementwise op)."""
        return None

    def window_backward(self, flat: Tensor) -> Tensor:
        """``a W`` on windows: coefficients (M, C_out, kh, kw) on windows of the output ->
        (M, C_in, kh', kw') on the windows :meth:`patch_window` gives (not yet masked)."""
        raise NotImplementedError(f"{type(self).__name__} does not act on patches")

    def channel_bias(self) -> Tensor | None:
        """The bias as one constant per output channel (C_out,), or None (no bias)."""
        return None

    def patch_relaxation(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """A nonlinear op's CROWN relaxation ``low z <= op(z) <= up z + up_b`` for input
        bounds (N, C, H, W): ``(low, up - low, up_b)``, each (N, C, H, W)."""
        raise NotImplementedError(f"{type(self).__name__} does not act on patches")

    # --- Lipschitz training (:class:`~advrobust.training.gloro.GloRo`)

    def l2_estimate(self, v: Tensor | None, init: Callable[[tuple[int, ...]], Tensor],
                    iterations: int) -> tuple[Tensor | None, Tensor | None]:
        """A differentiable estimate of ``||op||_{2->2}`` for Lipschitz-margin training, and
        the power-iteration vector to keep for the next call.

        Args:
            v: the vector kept from the last call, or None.
            init: ``init(shape)`` draws a starting vector (1, *shape) (called only if needed).
            iterations: power iterations from ``v``.

        Returns:
            ``(estimate, vector)``; estimate None: the op counts 1 (ReLU, a reshape);
            vector None: none to keep.
        """
        raise UnsupportedLayerError(
            f"{type(self).__name__} ({self.name}): no l2 norm estimate for this op kind.")

    def fold_batchnorm(self, bn: nn.Module, name: str) -> bool:
        """Fold an eval-mode batch-norm ``bn`` (called ``name``) that follows the op into it
        (applied at call time, from the live buffers); False if the op cannot take one (the
        batch-norm then stays an op of its own)."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}: {self.in_shape} -> {self.out_shape})"
