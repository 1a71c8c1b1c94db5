"""Affine maps ``z -> W z + b`` (:class:`AffineOp`: interval, back-substitution, rounding
magnitudes, LP / MILP rows, power iteration) and the reshape :class:`FlattenOp`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from advrobust.core.threat import Norm
from advrobust.network.ops.base import Op

if TYPE_CHECKING:
    from advrobust.network.graph.base import GraphOp
    from advrobust.solvers.program import Program

__all__ = ["AffineOp", "FlattenOp"]


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
