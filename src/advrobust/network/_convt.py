"""Float64 transposed convolutions as one matrix product per tile (for CROWN's backward passes).

Back-substitution carries coefficients back through a convolution with
:func:`torch.nn.functional.conv_transpose2d`. The verifiers run in float64, where this CPU
build has no oneDNN kernels: PyTorch's fallback does one small GEMM per batch element whose inner
dimension is the convolution's output channels, 6 for LeNet's first layer, and runs at ~1 GMAC/s
against the ~40 GMAC/s of one large float64 GEMM.

Here the coefficient map ``x`` (B, C_out, H, W) is cut into ``th x tw`` tiles; every tile is
mapped back by the same matrix ``M`` (``C_out th tw`` x ``C_in wh ww``, the transposed
convolution of one tile, ``wh = (th - 1) s + (kh - 1) d + 1``): one GEMM over all tiles of all
rows, then :func:`torch.nn.functional.fold` adds the overlapping tile windows onto the input
canvas, which is cropped by the padding. ``M`` is built by the transposed convolution of
one-hot tiles, so each entry is one kernel weight, exactly, or an exact zero.

Rounding: every output value is the sum of the same products ``w x`` as in the transposed
convolution (the GEMM also adds products with a structural zero of ``M``, which are exact zeros
and leave every partial sum unchanged), only in another order. Any order of summing ``n`` terms
errs by at most ``gamma_n * sum |terms|`` (Higham 2002, ch. 3), and ``n`` is at most
``C_out * kh * kw``, at most the op's ``out_size``: the allowance the passes already charge for
a convolution step (:mod:`advrobust.relax._rounding`) covers this path as it covers
``conv_transpose2d``. Values differ from it by a few ulps, not more.

Used only where it pays, by a cost model of both kernels (small output channel counts and
small maps, e.g. LeNet; never the course ``cnn``'s 32-64 channel layers), for float64 on CPU
and outside autograd (certified training keeps ``conv_transpose2d``), with ``M`` at most
:data:`MAX_MATRIX_BYTES`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MAX_MATRIX_BYTES", "conv_transpose", "tile_plan"]

#: Largest tile matrix ``M`` (bytes) the tiled path builds.
MAX_MATRIX_BYTES = 1 << 24
_CACHE_SIZE = 16
_cache: dict[tuple, tuple[Tensor, Tensor, tuple[int, int]]] = {}

# Cost model (seconds per unit, one float64 thread of a current x86-64 core, measured on the
# shapes of LeNet and the course cnn): large GEMM MACs, element moves of the tile copy and the
# fold, and conv_transpose2d MACs, whose speed grows with its inner GEMM dimension C_out.
_GEMM_MAC = 1 / 25e9
_MOVE = 1 / 0.4e9


def _conv_rate(c_out: int) -> float:
    return min(8.0, 0.15 * c_out) * 1e9


def _candidates(size: int) -> list[int]:
    out = [t for t in range(8, 17) if size % t == 0 and t < size]
    return out + [size] if size <= 16 else out


def tile_plan(batch: int, x_shape: tuple[int, int, int], w_shape: tuple[int, ...],
              stride: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int] | None:
    """Tile size ``(th, tw)`` for which the tiled product is estimated at least 1.25x faster
    than ``conv_transpose2d`` on ``batch`` maps of shape ``x_shape`` (C_out, H, W), or None."""
    c_out, h, w = x_shape
    c_in, kh, kw = int(w_shape[1]), int(w_shape[2]), int(w_shape[3])
    direct = batch * c_out * h * w * c_in * kh * kw / _conv_rate(c_out)
    best, best_cost = None, 0.8 * direct
    for th in _candidates(h):
        for tw in _candidates(w):
            k = c_out * th * tw
            n = c_in * ((th - 1) * stride[0] + (kh - 1) * dilation[0] + 1) \
                * ((tw - 1) * stride[1] + (kw - 1) * dilation[1] + 1)
            if k * n * 8 > MAX_MATRIX_BYTES:
                continue
            rows = batch * math.ceil(h / th) * math.ceil(w / tw)
            cost = rows * k * n * _GEMM_MAC + rows * (k + n) * _MOVE
            if cost < best_cost:
                best, best_cost = (th, tw), cost
    return best


def _matrix(w: Tensor, tile: tuple[int, int], stride: tuple[int, int],
            dilation: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
    """``M`` (C_out th tw, C_in wh ww) and the window (wh, ww), memoised by the weight values."""
    key = (tile, tuple(stride), tuple(dilation), tuple(w.shape), w.dtype, w.device)
    hit = _cache.get(key)
    if hit is not None and torch.equal(hit[0], w):
        return hit[1], hit[2]
    c_out, th, tw = w.shape[0], tile[0], tile[1]
    eye = torch.eye(c_out * th * tw, dtype=w.dtype, device=w.device)
    m = F.conv_transpose2d(eye.reshape(-1, c_out, th, tw), w, None, stride, 0, 0, 1, dilation)
    window = (int(m.shape[2]), int(m.shape[3]))
    m = m.reshape(c_out * th * tw, -1)
    if len(_cache) >= _CACHE_SIZE:
        _cache.pop(next(iter(_cache)))
    _cache[key] = (w.detach().clone(), m, window)
    return m, window


def _tiled(x: Tensor, w: Tensor, stride: tuple[int, int], padding: tuple[int, int],
           out_hw: tuple[int, int], tile: tuple[int, int], dilation: tuple[int, int]) -> Tensor:
    b, c_out, h, wd = x.shape
    th, tw = tile
    nh, nw = math.ceil(h / th), math.ceil(wd / tw)
    if (nh * th, nw * tw) != (h, wd):
        x = F.pad(x, (0, nw * tw - wd, 0, nh * th - h))
    m, window = _matrix(w, tile, stride, dilation)
    tiles = x.reshape(b, c_out, nh, th, nw, tw).permute(0, 2, 4, 1, 3, 5)
    y = tiles.reshape(b * nh * nw, c_out * th * tw).matmul(m)
    canvas_hw = ((nh - 1) * th * stride[0] + window[0], (nw - 1) * tw * stride[1] + window[1])
    if nh * nw == 1:  # one tile: its window is the canvas
        canvas = y.reshape((b, -1) + window)
    else:  # add the overlapping windows of the tiles
        canvas = F.fold(y.reshape(b, nh * nw, -1).transpose(1, 2), canvas_hw, window,
                        stride=(th * stride[0], tw * stride[1]))
    need = (padding[0] + out_hw[0], padding[1] + out_hw[1])
    if canvas_hw[0] < need[0] or canvas_hw[1] < need[1]:  # output_padding: zero rows / columns
        canvas = F.pad(canvas, (0, max(0, need[1] - canvas_hw[1]),
                                0, max(0, need[0] - canvas_hw[0])))
    return canvas[:, :, padding[0]:need[0], padding[1]:need[1]]


def _pair(v: Sequence[int]) -> tuple[int, int]:
    return int(v[0]), int(v[1])


def conv_transpose(x: Tensor, w: Tensor, stride: Sequence[int] = (1, 1),
                   padding: Sequence[int] = (0, 0), output_padding: Sequence[int] = (0, 0),
                   groups: int = 1, dilation: Sequence[int] = (1, 1), *,
                   tile: tuple[int, int] | None = None) -> Tensor:
    """``F.conv_transpose2d(x, w, None, stride, padding, output_padding, groups, dilation)``,
    by tiles where :func:`tile_plan` expects that to be faster (float64 on CPU, no autograd,
    ``groups == 1``); equal up to the summation order (see the module docstring).

    Args:
        x: (B, C_out, H, W) coefficients on the convolution's output.
        w: (C_out, C_in, kh, kw) the convolution's weight.
        tile: force this tile size on the tiled path (tests); None: the cost model decides.

    Returns:
        (B, C_in, H_in, W_in) with ``H_in = (H - 1) s - 2 p + (kh - 1) d + 1 + output_padding``.
    """
    st, pad, opad, dil = _pair(stride), _pair(padding), _pair(output_padding), _pair(dilation)

    def direct() -> Tensor:
        return F.conv_transpose2d(x, w, None, st, pad, opad, groups, dil)

    if (groups != 1 or x.dtype != torch.float64 or x.device.type != "cpu" or x.dim() != 4
            or (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))):
        return direct()
    b, _, h, wd = x.shape
    plan = tile if tile is not None else tile_plan(b, (x.shape[1], h, wd), tuple(w.shape),
                                                   st, dil)
    if plan is None:
        return direct()
    out_hw = _pair([(n - 1) * s - 2 * p + (k - 1) * d + 1 + o for n, s, p, k, d, o in zip(
        (h, wd), st, pad, w.shape[2:], dil, opad, strict=True)])
    return _tiled(x, w.to(x), st, pad, out_hw, plan, dil)
