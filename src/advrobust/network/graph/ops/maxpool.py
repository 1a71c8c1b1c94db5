"""2-D max pooling with a sound linear relaxation.

Per window, with ``j`` the input of largest lower bound: ``max >= x_j`` (lower line); the upper
line is ``x_j`` when ``l_j`` is at least every other input's upper bound (the max *is* ``x_j``),
else the constant ``max_i u_i`` (DeepPoly, Singh et al. 2019). Windows are read with
``F.unfold`` on ``-inf``-padded maps, so padding, stride and dilation follow torch exactly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.network.graph.base import (
    Bound,
    Call,
    GraphOp,
    NpBound,
    gamma_of,
    register,
)

__all__ = ["MaxPoolOp"]


class MaxPoolOp(GraphOp):
    """``nn.MaxPool2d`` on (C, H, W) inputs (no ceil_mode)."""

    nonlinear = True
    milp_exact = False  # the encoding is a relaxation under ``integer`` too

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                 kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                 dilation: tuple[int, int], name: str) -> None:
        super().__init__([in_shape], out_shape, name)
        self.kernel, self.stride, self.padding, self.dilation = kernel, stride, padding, dilation
        self.terms = math.prod(kernel)

    def forward(self, *xs: Tensor) -> Tensor:
        return F.max_pool2d(xs[0], self.kernel, self.stride, self.padding, self.dilation)

    def interval(self, *bounds: Bound) -> Bound:
        lo, hi = bounds[0]
        return self.forward(lo), self.forward(hi)

    def _windows(self, x: Tensor, fill: float) -> Tensor:
        """(B, C, k, L) window values of x (B, C, H, W)."""
        ph, pw = self.padding
        padded = F.pad(x, (pw, pw, ph, ph), value=fill)
        cols = F.unfold(padded, self.kernel, self.dilation, 0, self.stride)
        return cols.reshape(x.shape[0], x.shape[1], self.terms, -1)

    def _index(self, like: Tensor) -> Tensor:
        """(1, 1, k, L) flat input positions (h * W + w) of every window slot, -1 for padding."""
        _, h, w = self.in_shapes[0]
        pos = torch.arange(h * w, dtype=like.dtype, device=like.device).reshape(1, 1, h, w)
        return self._windows(pos, -1.0).long()

    def relaxation(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Flat input index of ``j`` per output (N, C, L), whether the upper line is ``x_j``,
        and the constant upper line ``max u`` (N, C, L)."""
        wl, wh = self._windows(lo, -math.inf), self._windows(hi, -math.inf)
        best = wl.argmax(dim=2, keepdim=True)
        lj = wl.gather(2, best).squeeze(2)
        others = wh.scatter(2, best, -math.inf).amax(dim=2)
        exact = lj >= others
        idx = self._index(lo).expand_as(wl).gather(2, best).squeeze(2)
        return idx, exact, wh.amax(dim=2)

    def backward(self, a: Tensor, *bounds: Bound, slopes: Tensor | None = None
                 ) -> tuple[list[Tensor | None], Tensor]:
        lo, hi = bounds[0]
        idx, exact, umax = self.relaxation(lo, hi)
        n, k = max(a.shape[0], lo.shape[0]), a.shape[1]
        c = self.in_shapes[0][0]
        af = a.expand((n,) + tuple(a.shape[1:])).reshape(n, k, c, -1)
        pos, neg = af.clamp(min=0), af.clamp(max=0)
        to_x = pos + torch.where(exact.unsqueeze(1), neg, torch.zeros_like(neg))
        const = (torch.where(exact.unsqueeze(1), torch.zeros_like(neg), neg)
                 * umax.unsqueeze(1)).flatten(2).sum(-1)
        out = a.new_zeros((n, k, c, math.prod(self.in_shapes[0][1:])))
        out.scatter_add_(3, idx.unsqueeze(1).expand_as(to_x), to_x)
        return [out.reshape((n, k) + self.in_shapes[0])], const

    def rounding_terms(self, dtype: torch.dtype, *bounds: Bound) -> tuple[float, Tensor] | None:
        lo, hi = bounds[0]
        s = self.forward(torch.maximum(lo.abs(), hi.abs()))
        return gamma_of(max(self.terms, self.out_size), dtype), s

    def refine_mask(self, lo: Tensor, hi: Tensor) -> Tensor | None:
        return hi > lo

    def encode(self, program: Any, cols: list[np.ndarray], ins: list[NpBound], out: NpBound,
               integer: bool) -> np.ndarray:
        """``z >= x_i`` for every input of the window, ``z`` within its bounds (a sound LP
        relaxation, also under ``integer``)."""
        import scipy.sparse as sp

        c = self.in_shapes[0][0]
        z = program.add_vars(out[0], out[1])
        idx = self._index(torch.zeros(1, dtype=torch.float64))[0, 0].numpy()  # (k, L)
        zc = z.reshape(c, -1)
        xc = cols[0].reshape(c, -1)
        rows_z, rows_x = [], []
        for slot in range(idx.shape[0]):
            valid = idx[slot] >= 0
            rows_z.append(zc[:, valid].reshape(-1))
            rows_x.append(xc[:, idx[slot][valid]].reshape(-1))
        zs, xs = np.concatenate(rows_z), np.concatenate(rows_x)
        eye = sp.identity(zs.size, format="csr")
        program.add_rows(sp.hstack([eye, -eye]), np.concatenate([zs, xs]), 0.0, np.inf)
        lo, hi = (torch.from_numpy(v).reshape((1,) + self.in_shapes[0]) for v in ins[0])
        best, dominant, _ = self.relaxation(lo, hi)  # where x_j dominates its window: z = x_j
        j, exact = best[0].numpy(), dominant[0].numpy()
        zj, xj = zc[exact], xc[np.nonzero(exact)[0], j[exact]]
        if zj.size:
            eye = sp.identity(zj.size, format="csr")
            program.add_rows(sp.hstack([eye, -eye]), np.concatenate([zj, xj]), -np.inf, 0.0)
        return z


@register(modules=(nn.MaxPool2d,))
def _maxpool(call: Call) -> GraphOp:
    layer = call.module
    assert isinstance(layer, nn.MaxPool2d)
    if len(call.data) != 1 or len(call.data[0].shape) != 3:
        raise call.fail("MaxPool2d takes one (C, H, W) data tensor")
    if layer.ceil_mode or layer.return_indices:
        raise call.fail("MaxPool2d with ceil_mode or return_indices is not supported")
    pair = nn.modules.utils._pair
    stride = layer.stride if layer.stride is not None else layer.kernel_size
    return MaxPoolOp(call.data[0].shape, call.out_shape, pair(layer.kernel_size), pair(stride),
                     pair(layer.padding), pair(layer.dilation), call.name)
