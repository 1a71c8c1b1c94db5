"""The tiled float64 transposed convolution equals ``conv_transpose2d`` within the rounding
allowance the bound passes charge, its cost model picks it only where it pays, and CROWN's
bounds through it are the direct kernel's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import advrobust.network._convt as convt
from advrobust.core import LpBall
from advrobust.network import from_module
from advrobust.network._convt import conv_transpose, tile_plan
from advrobust.relax import crown_layer_bounds, crown_lower


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), c_out=st.integers(1, 4), c_in=st.integers(1, 3),
       h=st.integers(1, 8), w=st.integers(1, 8), kh=st.integers(1, 4), kw=st.integers(1, 4),
       stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       pad=st.tuples(st.integers(0, 3), st.integers(0, 3)),
       opad=st.tuples(st.integers(0, 2), st.integers(0, 2)),
       th=st.integers(1, 9), tw=st.integers(1, 9), scale=st.sampled_from([1.0, 1e8]))
def test_tiled_equals_conv_transpose_within_the_allowance(
        seed: int, c_out: int, c_in: int, h: int, w: int, kh: int, kw: int,
        stride: tuple[int, int], dilation: tuple[int, int], pad: tuple[int, int],
        opad: tuple[int, int], th: int, tw: int, scale: float) -> None:
    # output_padding must be smaller than stride or dilation, padding must leave an output
    assume(all(o < max(s, d) for o, s, d in zip(opad, stride, dilation, strict=True)))
    full = [(n - 1) * s + (k - 1) * d + 1 for n, s, k, d in
            zip((h, w), stride, (kh, kw), dilation, strict=True)]
    assume(all(f - 2 * p + o > 0 for f, p, o in zip(full, pad, opad, strict=True)))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, c_out, h, w, generator=gen, dtype=torch.float64) * scale
    k = torch.randn(c_out, c_in, kh, kw, generator=gen, dtype=torch.float64)
    ref = F.conv_transpose2d(x, k, None, stride, pad, opad, 1, dilation)
    got = conv_transpose(x, k, stride, pad, opad, 1, dilation, tile=(th, tw))
    assert got.shape == ref.shape
    # the summation-order bound: gamma_n * sum |terms|, n = c_out kh kw products per value
    terms = F.conv_transpose2d(x.abs(), k.abs(), None, stride, pad, opad, 1, dilation)
    n = c_out * kh * kw
    gamma = n * 2.0 ** -53 / (1 - n * 2.0 ** -53)
    assert bool(((got - ref).abs() <= 2 * gamma * terms + 1e-300).all())


def test_cost_model_picks_tiles_for_few_channels_only() -> None:
    # LeNet's dense rows through conv1 / conv2 and its patches: tiled
    assert tile_plan(2400, (6, 24, 24), (6, 1, 5, 5), (1, 1), (1, 1)) is not None
    assert tile_plan(2400, (16, 8, 8), (16, 6, 5, 5), (1, 1), (1, 1)) is not None
    assert tile_plan(20480, (6, 10, 10), (6, 1, 5, 5), (1, 1), (1, 1)) is not None
    # the course cnn's 32-64 channel layers: conv_transpose2d stays faster
    assert tile_plan(2000, (64, 7, 7), (64, 64, 4, 4), (2, 2), (1, 1)) is None
    assert tile_plan(2000, (32, 28, 28), (32, 1, 3, 3), (1, 1), (1, 1)) is None
    assert tile_plan(2000, (32, 14, 14), (32, 32, 4, 4), (2, 2), (1, 1)) is None


def test_tile_matrix_memo_follows_the_weights() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 6, generator=gen, dtype=torch.float64)
    k = torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64)
    first = conv_transpose(x, k, tile=(3, 3))
    k2 = k.clone()
    k2[0, 0, 1, 1] += 1.0  # same shape and geometry, other values: the memo must not answer
    second = conv_transpose(x, k2, tile=(3, 3))
    assert torch.allclose(second, F.conv_transpose2d(x, k2), rtol=0, atol=1e-12)
    assert not torch.allclose(first, second)


def test_autograd_and_float32_keep_conv_transpose2d() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 6, 6, generator=gen, dtype=torch.float64)
    k = torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    out = conv_transpose(x, k, tile=(3, 3))
    assert torch.equal(out, F.conv_transpose2d(x, k))  # bit for bit: the direct kernel
    out.sum().backward()
    assert k.grad is not None
    x32, k32 = x.float(), k.detach().float()
    assert torch.equal(conv_transpose(x32, k32, tile=(3, 3)), F.conv_transpose2d(x32, k32))


def _lenet_like(seed: int) -> nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.AvgPool2d(2),
                          nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 12),
                          nn.ReLU(), nn.Linear(12, 4))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.double().eval().requires_grad_(False)


@pytest.mark.parametrize("seed", [0, 1])
def test_crown_through_tiles_equals_the_direct_kernel_and_is_sound(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _lenet_like(seed)
    net = from_module(model, (1, 14, 14))
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 1, 14, 14, generator=gen, dtype=torch.float64)
    threat = LpBall("linf", 0.05)
    c = torch.randn(3, 2, 4, generator=gen, dtype=torch.float64)

    def run() -> torch.Tensor:
        with torch.no_grad():
            bounds = crown_layer_bounds(net, x, threat, rounding=True)
            return crown_lower(net, x, threat, c, bounds=bounds, rounding=True)

    calls = []
    real = convt._tiled
    monkeypatch.setattr(convt, "tile_plan", lambda *args: (4, 4))  # tile every convolution
    monkeypatch.setattr(convt, "_tiled", lambda *a: calls.append(1) or real(*a))
    tiled = run()
    assert calls  # the tiled path ran
    monkeypatch.setattr(convt, "tile_plan", lambda *args: None)
    direct = run()
    assert torch.allclose(tiled, direct, rtol=1e-10, atol=1e-10)
    low, high = threat.input_bounds(x)
    with torch.no_grad():
        for _ in range(32):
            pts = low + torch.rand(low.shape, generator=gen, dtype=torch.float64) * (high - low)
            margins = torch.einsum("nkc,nc->nk", c, model(pts))
            assert bool((tiled <= margins).all())
