"""Affine ops of the verifiable IR: one class per layer type holding every view of it.

Every op maps a batch ``(N, *in_shape)`` to ``(N, *out_shape)`` and offers four views:

- ``forward(x)`` — the layer itself;
- ``interval(lo, hi)`` — interval propagation (exact for an affine map: centre / radius);
- ``backward(a)`` and ``bias_term(a)`` — back-substitution of linear coefficients
  ``a`` (N, K, *out_shape) through the map: ``<a, W z + b> = <backward(a), z> + bias_term(a)``;
- ``linear_map()`` — the dense matrix and bias, which LP / MILP encodings turn into rows.

Each op also carries its own numerical facts, so that no algorithm asks an op's type: the
products its rounded values sum (``terms``) and their magnitudes (``magnitude``) for the rounding
allowances (:mod:`advrobust.relax._rounding`), whether it is ``exact`` in floating point, a
certified bound on its operator norm (``operator_norm``, for the Lipschitz bounds) and the
backward step of a Jacobian interval (``jacobian_backward``, for local Lipschitz bounds).

Ops are stateless: bounds are passed in and returned. They hold references to the live modules
(never detached copies), and batch-norm layers are folded at call time, so every bound pass is
differentiable w.r.t. the network's parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.core.threat import Norm
from advrobust.errors import UnsupportedLayerError
from advrobust.network._convt import conv_transpose
from advrobust.network._opnorm import INFLATE, conv_norm, matrix_norm

if TYPE_CHECKING:
    from advrobust.network.graph.base import GraphOp
    from advrobust.solvers.program import Program

__all__ = [
    "AffineOp",
    "AvgPoolOp",
    "ChannelAffineOp",
    "ConvOp",
    "FlattenOp",
    "LinearOp",
    "Op",
    "bn_scale_shift",
]


#: A window's ``(size, stride, padding)``, each (rows, columns).
Window = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def _fold(op: LinearOp | ConvOp, bn: nn.Module, name: str) -> bool:
    """Fold ``bn`` (called ``name``) into a linear or convolutional op that has none yet."""
    if op.bn is not None:
        return False
    op.bn = bn
    op.name = f"{op.name}+{name}"
    return True


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


class AffineOp(Op):
    """An affine map ``z -> W z + b``; subclasses give the forward map and its transpose."""

    def linear(self, x: Tensor) -> Tensor:
        """``W x`` without the bias."""
        raise NotImplementedError(f"{type(self).__name__} does not implement linear()")

    def bias(self) -> Tensor | None:
        """``b`` shaped like one output (out_shape), or None."""
        raise NotImplementedError(f"{type(self).__name__} does not implement bias()")

    def backward(self, a: Tensor) -> Tensor:
        """``a W``: coefficients (N, K, *out_shape) -> (N, K, *in_shape)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement backward()")

    def abs_linear(self, x: Tensor) -> Tensor:
        """``|W| x`` (used for the radius of interval propagation)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement abs_linear()")

    def forward(self, x: Tensor) -> Tensor:
        out = self.linear(x)
        b = self.bias()
        return out if b is None else out + b

    def interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        mid = self.forward((hi + lo) / 2)
        rad = self.abs_linear((hi - lo) / 2)
        return mid - rad, mid + rad

    @property
    def fan_in(self) -> int:
        """Products summed per output value of the forward map."""
        return self.in_size

    def magnitude(self, lo: Tensor, hi: Tensor) -> Tensor:
        """``|W| max(|lo|, |hi|) + |b|`` (N, *out_shape)."""
        out = self.abs_linear(torch.maximum(lo.abs(), hi.abs()))
        b = self.bias()
        return out if b is None else out + b.abs().to(out)

    def abs_backward(self, rad: Tensor) -> Tensor:
        """``rad |W|``: (N, K, *out_shape) -> (N, K, *in_shape); here the transpose of
        :meth:`abs_linear` by autograd (exact), subclasses give cheaper forms."""
        n, k = rad.shape[:2]
        with torch.enable_grad():
            z = rad.new_zeros((n * k,) + self.in_shape, requires_grad=True)
            (back,) = torch.autograd.grad(self.abs_linear(z), z,
                                          rad.reshape((n * k,) + self.out_shape))
        return back.reshape((n, k) + self.in_shape)

    def jacobian_backward(self, mid: Tensor, rad: Tensor, lo: Tensor, hi: Tensor
                          ) -> tuple[Tensor, Tensor]:
        return self.backward(mid), self.abs_backward(rad)

    def l2_estimate(self, v: Tensor | None, init: Callable[[tuple[int, ...]], Tensor],
                    iterations: int) -> tuple[Tensor | None, Tensor | None]:
        """Power iteration on ``W^T W`` from ``v`` (no gradient), then ``||W v||``, which is
        differentiable w.r.t. the parameters with ``v`` fixed (spectral normalisation,
        Miyato et al. 2018)."""
        if v is None:
            v = init(self.in_shape).to(self._device())
        with torch.no_grad():
            for _ in range(iterations):
                v = v / v.norm().clamp_min(1e-12)
                v = self.backward(self.linear(v).unsqueeze(0))[0]
            v = v / v.norm().clamp_min(1e-12)
        return self.linear(v).norm(), v

    def to_graph_op(self) -> GraphOp:
        from advrobust.network.graph.ops.chain import AffineAdapter

        return AffineAdapter(self, terms=self.fan_in)

    def rows(self, part: Tensor) -> tuple[Tensor, Tensor | None] | None:
        """Rows ``part`` (k,) of ``W`` (k, in_size) and of ``b`` (k,) when they are at hand
        without materialising ``W`` (dense layers), else None."""
        return None

    def bias_term(self, a: Tensor) -> Tensor:
        """``<a, b>`` per row: (N, K, *out_shape) -> (N, K)."""
        b = self.bias()
        if b is None:
            return a.new_zeros(a.shape[:2])
        return (a * b).flatten(2).sum(-1)

    def linear_map(self) -> tuple[Tensor, Tensor]:
        """Dense ``W`` (out_size, in_size) and ``b`` (out_size,), for LP / MILP encodings."""
        eye = torch.eye(self.in_size, dtype=self._dtype(), device=self._device())
        w = self.linear(eye.reshape((self.in_size,) + self.in_shape)).reshape(self.in_size, -1).T
        b = self.bias()
        b = w.new_zeros(self.out_size) if b is None else b.expand(self.out_shape).reshape(-1)
        return w, b

    def encode(self, program: Program, x: np.ndarray, lo: np.ndarray, hi: np.ndarray
               ) -> np.ndarray:
        """Add ``z = W x + b`` for one sample; return the columns of ``z``.

        Args:
            program: the LP / MILP program to extend.
            x: (in_size,) columns of the input.
            lo, hi: (out_size,) bounds of the output, used as column bounds.
        """
        w, b = self.linear_map()
        w_np = w.detach().cpu().double().numpy()
        b_np = b.detach().cpu().double().numpy()
        z = program.add_vars(lo, hi)
        import scipy.sparse as sp

        block = sp.hstack([sp.csr_matrix(w_np), -sp.identity(self.out_size, format="csr")])
        program.add_rows(block, np.concatenate([x, z]), -b_np, -b_np)
        return z

    def _dtype(self) -> torch.dtype:
        return torch.get_default_dtype()

    def _device(self) -> torch.device:
        return torch.device("cpu")


class FlattenOp(AffineOp):
    """``nn.Flatten`` (from dim 1): a reshape."""

    exact = True

    @property
    def terms(self) -> int:
        return 0

    def magnitude(self, lo: Tensor, hi: Tensor) -> Tensor:
        return torch.maximum(lo.abs(), hi.abs())

    def abs_backward(self, rad: Tensor) -> Tensor:
        return self.backward(rad)

    def operator_norm(self, norm: Norm) -> float:
        return 1.0

    def l2_estimate(self, v: Tensor | None, init: Callable[[tuple[int, ...]], Tensor],
                    iterations: int) -> tuple[Tensor | None, Tensor | None]:
        return None, None

    def linear(self, x: Tensor) -> Tensor:
        return x.reshape((x.shape[0],) + self.out_shape)

    def bias(self) -> Tensor | None:
        return None

    def backward(self, a: Tensor) -> Tensor:
        return a.reshape(a.shape[:2] + self.in_shape)

    def abs_linear(self, x: Tensor) -> Tensor:
        return self.linear(x)

    def interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        return self.linear(lo), self.linear(hi)

    def encode(self, program: Program, x: np.ndarray, lo: np.ndarray, hi: np.ndarray
               ) -> np.ndarray:
        return x

    def to_graph_op(self) -> GraphOp:
        from advrobust.network.graph.ops.reshape import ReshapeOp

        return ReshapeOp([self.in_shape], self.out_shape, self.name)


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
