"""Patch representation of convolution coefficients for CROWN's intermediate bounds.

Xu et al. 2020, "Automatic perturbation analysis for scalable certified robustness and beyond"
(the ``Patches`` mode of auto_LiRPA): the coefficients of one neuron of a convolutional layer,
carried back through convolutions, ReLU relaxations, per-channel affine maps and average pooling,
are non-zero only on that neuron's receptive field. :class:`Patches` stores for each of ``Q``
query neurons the window ``(C, kh, kw)`` of the tensor the coefficients sit on, at spatial
offset ``(row * stride - padding, col * stride - padding)``; every coefficient outside the
tensor is kept at zero (masked), so a window may hang over the border. A dense row of the
layer would hold ``C * H * W`` values; a window holds ``C * kh * kw``.

The arithmetic per element is the dense back-substitution's, rearranged: the same relaxation,
the same transposed convolution, the same rounding allowances (only summed over the window),
so the patch path and the dense path give the same bounds up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from advrobust.network.ops import Op

__all__ = ["Patches", "conv_window", "patch_capable"]


def patch_capable(op: Op) -> bool:
    """True if coefficients can be carried back through ``op`` as patches (its
    :attr:`~advrobust.network.ops.Op.patchable`)."""
    return op.patchable


def conv_window(op: Op, kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int],
                                                   tuple[int, int]]:
    """Window size, stride and padding on ``op``'s input of a window on its output (its
    :meth:`~advrobust.network.ops.Op.patch_window`; an elementwise op keeps the window)."""
    window = op.patch_window(kernel, stride, padding)
    return (kernel, stride, padding) if window is None else window


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """``sum_k a[., s, l, k] b[., l, k]``: a (B, S, L, K), b (N, L, K), B in {1, N} -> (N, S L)."""
    if a.shape[0] == 1 and b.shape[0] != 1:
        out = torch.einsum("slk,nlk->nsl", a[0], b)
    else:
        out = torch.einsum("nslk,nlk->nsl", a, b)
    return out.flatten(1)


class Patches:
    """Coefficients of ``S x L`` linear functions of a (C, H, W) tensor, each on one window.

    Query ``s * L + l`` sits at grid position ``l`` (all ``S`` queries of a position share its
    window, so a window of a layer is read once per position, not once per query).

    Args:
        pt: (B, S * L, C, kh, kw) window coefficients, B = 1 (shared by the batch) or N.
        rows, cols: (L,) grid positions; the window of position ``l`` starts at
            ``rows[l] * stride - padding`` (and likewise for columns).
        grid: (Hq, Wq), the query layer's spatial size.
        stride, padding: of the windows on the tensor.
        shape: (C, H, W) of the tensor.
    """

    def __init__(self, pt: Tensor, rows: Tensor, cols: Tensor, grid: tuple[int, int],
                 stride: tuple[int, int], padding: tuple[int, int], shape: tuple[int, ...]
                 ) -> None:
        self.pt, self.rows, self.cols, self.grid = pt, rows, cols, grid
        self.stride, self.padding = stride, padding
        self.shape = tuple(shape)
        self.lin = rows * grid[1] + cols

    @classmethod
    def units(cls, channels: Tensor, positions: Tensor, shape: tuple[int, ...], like: Tensor
              ) -> Patches:
        """``+e`` then ``-e`` for every channel of ``channels`` (S,) at every flat grid position
        of ``positions`` (L,): 2 S L queries with 1x1 windows, ordered (sign, channel, position).
        """
        c, h, w = shape
        s, n_pos = channels.numel(), positions.numel()
        pt = like.new_zeros(1, 2, s, n_pos, c)
        ar = torch.arange(s, device=like.device)
        pt[0, 0, ar, :, channels] = 1.0
        pt[0, 1, ar, :, channels] = -1.0
        pt = pt.reshape(1, 2 * s * n_pos, c, 1, 1)
        return cls(pt, positions // w, positions % w, (h, w), (1, 1), (0, 0), shape)

    @property
    def kernel(self) -> tuple[int, int]:
        """Window size (kh, kw)."""
        return int(self.pt.shape[3]), int(self.pt.shape[4])

    @property
    def group(self) -> int:
        """Queries per grid position (S)."""
        return self.pt.shape[1] // self.rows.numel()

    def mask(self) -> Tensor:
        """(L, 1, kh, kw): 1 where the window lies on the tensor, 0 where it hangs over."""
        valid = []
        for d, pos in enumerate((self.rows, self.cols)):
            idx = pos.unsqueeze(1) * self.stride[d] - self.padding[d] + torch.arange(
                self.kernel[d], device=pos.device)
            valid.append((idx >= 0) & (idx < self.shape[1 + d]))
        return (valid[0].unsqueeze(2) & valid[1].unsqueeze(1)).unsqueeze(1).to(self.pt.dtype)

    def unfold(self, t: Tensor) -> Tensor:
        """The window of ``t`` (N, C, H, W) at every grid position: (N, Hq * Wq, C * kh * kw),
        0 outside ``t``. Depends only on the windows' geometry: cache it across queries."""
        kh, kw = self.kernel
        extra = [max(0, (self.grid[d] - 1) * self.stride[d] + self.kernel[d] - self.padding[d]
                     - self.shape[1 + d]) for d in range(2)]
        tp = F.pad(t.to(self.pt.dtype), (self.padding[1], extra[1], self.padding[0], extra[0]))
        cols = F.unfold(tp, (kh, kw), stride=self.stride)
        n_w = (tp.shape[3] - kw) // self.stride[1] + 1
        cols = cols.unflatten(2, (-1, n_w))[:, :, :self.grid[0], :self.grid[1]]
        return cols.flatten(2).transpose(1, 2).contiguous()

    def take(self, unfolded: Tensor) -> Tensor:
        """The window of each position (N, L, C * kh * kw) from :meth:`unfold`'s result."""
        return unfolded.index_select(1, self.lin)

    def windows(self, t: Tensor) -> Tensor:
        """The window of ``t`` (N, C, H, W) at each position: (N, L, C * kh * kw), 0 outside."""
        return self.take(self.unfold(t))

    def grouped(self) -> Tensor:
        """The coefficients as (B, S, L, C * kh * kw)."""
        return self.pt.reshape(self.pt.shape[0], self.group, self.rows.numel(), -1)

    def dot(self, windows: Tensor, absolute: bool = False) -> Tensor:
        """``<pt_q, window of q's position>`` per query (``|pt|`` if ``absolute``): (N, Q).

        Args:
            windows: (N, L, C * kh * kw) from :meth:`take` / :meth:`windows`.
        """
        pt = self.grouped().detach().abs() if absolute else self.grouped()
        return _rowdot(pt, windows)

    def channel_dot(self, b: Tensor) -> Tensor:
        """``<pt_q, b>`` for a per-channel constant ``b`` (C,): (B, Q)."""
        return self.pt.sum((3, 4)).matmul(b.reshape(-1).to(self.pt))

    def with_pt(self, pt: Tensor) -> Patches:
        """The same windows with other coefficients."""
        return Patches(pt, self.rows, self.cols, self.grid, self.stride, self.padding,
                       self.shape)

    def through(self, op: Op) -> tuple[Patches, Tensor]:
        """Coefficients on an affine ``op``'s input of these on its output and the constant
        ``<pt_q, b>`` (B or 1, Q) of its bias (see :meth:`through_conv`)."""
        b = op.channel_bias()
        const = self.pt.new_zeros(1) if b is None else self.channel_dot(b)
        return self.through_conv(op), const

    def through_conv(self, op: Op) -> Patches:
        """Coefficients on an affine ``op``'s input of these on its output (``a W``), masked:
        the op's :meth:`~advrobust.network.ops.Op.window_backward` on the windows its
        :meth:`~advrobust.network.ops.Op.patch_window` gives (the same windows for an
        elementwise op)."""
        b, q = self.pt.shape[:2]
        flat = self.pt.reshape((b * q,) + tuple(self.pt.shape[2:]))
        back = op.window_backward(flat)
        window = op.patch_window(self.kernel, self.stride, self.padding)
        if window is None:  # elementwise: the windows and their masks stay
            return self.with_pt(back.reshape(self.pt.shape))
        _, stride, padding = window
        out = Patches(back.reshape((b, q) + tuple(back.shape[1:])), self.rows, self.cols,
                      self.grid, stride, padding, op.in_shape)
        pt6 = out.pt.view((b, out.group, out.rows.numel()) + tuple(back.shape[1:]))
        pt6.mul_(out.mask())  # in place: `back` is a fresh tensor
        return out

    def through_relu(self, low: Tensor, diff: Tensor, up_b: Tensor) -> tuple[Patches, Tensor]:
        """Lower relaxation step of a nonlinear op (``low z <= op(z) <= up z + up_b``, see
        :meth:`~advrobust.network.ops.Op.patch_relaxation`): the windows (N, L, C * kh * kw)
        of the lower slopes, of ``up - low`` and of the upper intercepts."""
        pt = self.grouped()
        neg = pt.clamp(max=0)
        out = (pt * low.unsqueeze(1)).addcmul_(neg, diff.unsqueeze(1))
        pt_new = out.reshape((out.shape[0], -1) + tuple(self.pt.shape[2:]))
        return self.with_pt(pt_new), _rowdot(neg, up_b)

    def to_dense(self) -> Tensor:
        """Dense coefficients (B, Q, C, H, W)."""
        b, q, c = self.pt.shape[:3]
        kh, kw = self.kernel
        _, h, w = self.shape
        rows, cols = self.rows.repeat(self.group), self.cols.repeat(self.group)
        size = [max(h + self.padding[0], int(rows.max()) * self.stride[0] + kh),
                max(w + self.padding[1], int(cols.max()) * self.stride[1] + kw)]
        i = rows.unsqueeze(1) * self.stride[0] + torch.arange(kh, device=rows.device)
        j = cols.unsqueeze(1) * self.stride[1] + torch.arange(kw, device=rows.device)
        idx = (i.unsqueeze(2) * size[1] + j.unsqueeze(1)).reshape(1, q, 1, kh * kw)
        canvas = self.pt.new_zeros(b, q, c, size[0] * size[1])
        canvas.scatter_(3, idx.expand(b, q, c, kh * kw), self.pt.reshape(b, q, c, kh * kw))
        canvas = canvas.reshape(b, q, c, size[0], size[1])
        return canvas[:, :, :, self.padding[0]:self.padding[0] + h,
                      self.padding[1]:self.padding[1] + w]
