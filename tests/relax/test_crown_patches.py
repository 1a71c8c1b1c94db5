"""The patch path of CROWN's intermediate bounds (receptive-field windows after a convolution)
gives the dense path's bounds, is sound at sampled points, and chunks / refuses by memory."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import advrobust.relax.crown as crown
import advrobust.relax.dag as dag
from advrobust.core import LpBall
from advrobust.errors import MemoryLimitError
from advrobust.network import ReLUOp, from_module
from advrobust.relax import crown_layer_bounds, crown_lower
from advrobust.relax._patches import Patches


def _randomize_bn(bn: nn.BatchNorm2d, gen: torch.Generator) -> None:
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen) * 0.3)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
        bn.weight.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(bn.num_features, generator=gen) * 0.2)


def _cnn(seed: int, channels: int, stride: int, padding: int, kernel: int, pool: bool,
         bn_after_relu: bool) -> tuple[nn.Sequential, tuple[int, int, int]]:
    """conv (+ folded BN) -> ReLU [-> BN left unfolded] -> conv -> ReLU [-> AvgPool] -> conv
    -> ReLU -> Flatten -> Linear -> ReLU -> Linear, seeded."""
    gen = torch.Generator().manual_seed(seed)
    shape = (2, 11, 11)
    layers: list[nn.Module] = [nn.Conv2d(2, channels, 3, padding=1),
                               nn.BatchNorm2d(channels), nn.ReLU()]
    if bn_after_relu:
        layers.append(nn.BatchNorm2d(channels))
    layers += [nn.Conv2d(channels, 3, kernel, stride=stride, padding=padding), nn.ReLU()]
    if pool:
        layers.append(nn.AvgPool2d(2, stride=1))
    layers += [nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.Flatten()]
    body = nn.Sequential(*layers)
    with torch.no_grad():
        flat = body(torch.zeros((1,) + shape)).shape[1]
    model = nn.Sequential(*layers, nn.Linear(flat, 6), nn.ReLU(), nn.Linear(6, 3))
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen)
                               / m.weight[0].numel() ** 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        elif isinstance(m, nn.BatchNorm2d):
            _randomize_bn(m, gen)
    return model.double().eval().requires_grad_(False), shape


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), channels=st.integers(1, 4), stride=st.sampled_from([1, 2]),
       padding=st.integers(0, 2), kernel=st.sampled_from([2, 3]), pool=st.booleans(),
       bn_after_relu=st.booleans(), norm=st.sampled_from(["linf", "linf", "l2"]),
       rounding=st.booleans())
def test_patch_bounds_equal_dense_bounds(seed: int, channels: int, stride: int, padding: int,
                                         kernel: int, pool: bool, bn_after_relu: bool,
                                         norm: str, rounding: bool) -> None:
    model, shape = _cnn(seed, channels, stride, padding, kernel, pool, bn_after_relu)
    net = from_module(model, shape)
    x0 = torch.rand((3,) + shape, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(seed))
    threat = LpBall(norm, 0.05 if norm == "linf" else 0.3)
    used = []
    real = crown._patch_pass

    def spy(*args: object, **kw: object) -> torch.Tensor:
        used.append(args[4])
        return real(*args, **kw)  # type: ignore[arg-type]

    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(crown, "_patch_pass", spy)
        # the dense pass on the union of the samples' neurons, as the patch pass carries it
        # (its per-sample pass leaves a neuron a sample does not need at its interval bounds)
        mp.setattr(dag, "_UNION_ELEMENTS", 1 << 62)
        fast = crown_layer_bounds(net, x0, threat, rounding=rounding)
        mp.setattr(crown, "_patch_elements", lambda *a: None)
        slow = crown_layer_bounds(net, x0, threat, rounding=rounding)
    finally:
        mp.undo()
    assume(used)  # all stable: nothing to compare (never all examples: Unsatisfiable then)
    for (lo_f, hi_f), (lo_s, hi_s) in zip(fast, slow, strict=True):
        scale = 1 + float(torch.maximum(lo_s.abs().max(), hi_s.abs().max()))
        torch.testing.assert_close(lo_f, lo_s, rtol=1e-9, atol=1e-9 * scale)
        torch.testing.assert_close(hi_f, hi_s, rtol=1e-9, atol=1e-9 * scale)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_patch_bounds_are_sound_at_sampled_points(seed: int) -> None:
    model, shape = _cnn(seed, 3, 2, 1, 3, True, True)
    net = from_module(model, shape)
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand((2,) + shape, dtype=torch.float64, generator=gen)
    threat = LpBall("linf", 0.1)
    bounds = crown_layer_bounds(net, x0, threat, rounding=True)
    c = torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]], dtype=torch.float64)
    c = c.expand(2, -1, -1)
    lower = crown_lower(net, x0, threat, c, bounds=bounds, rounding=True)
    low, up = threat.input_bounds(x0)
    for k in range(200):
        u = torch.rand(low.shape, dtype=torch.float64, generator=gen)
        z = low + (u > 0.5).double() * (up - low) if k % 2 else low + u * (up - low)
        for i, op in enumerate(net.ops):
            lo, hi = bounds[i]
            assert bool((z >= lo).all()) and bool((z <= hi).all()), f"op {i} input"
            z = op.forward(z)
        assert bool((torch.einsum("nkc,nc->nk", c, z) >= lower).all())


def test_memory_limit_chunks_and_refuses() -> None:
    model, shape = _cnn(5, 4, 1, 1, 3, False, False)
    net = from_module(model, shape)
    x0 = torch.rand((2,) + shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    threat = LpBall("linf", 0.1)
    free = crown_layer_bounds(net, x0, threat, rounding=True)
    index = next(i for i in net.relu_indices[1:] if len(net.ops[i].in_shape) == 3)
    one = 2 * crown._patch_elements(net, index, 2) * 8 * crown._WORKSET_PATCH
    widest = max(op.out_size for op in net.ops)
    dense_one = 2 * 2 * widest * 8 * crown._WORKSET_DENSE
    tight = crown_layer_bounds(net, x0, threat, rounding=True, memory_limit=3 * max(one, dense_one))
    for (lo_f, hi_f), (lo_t, hi_t) in zip(free, tight, strict=True):
        torch.testing.assert_close(lo_f, lo_t, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(hi_f, hi_t, rtol=1e-12, atol=1e-12)
    with pytest.raises(MemoryLimitError, match="MiB for a single neuron"):
        crown_layer_bounds(net, x0, threat, rounding=True, memory_limit=one // 2)


def test_patches_to_dense_match_the_dense_transpose() -> None:
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1).double()
    net = from_module(nn.Sequential(conv, nn.ReLU(), nn.Flatten()), (3, 7, 7))
    op = net.ops[0]
    shape = op.out_shape
    channels = torch.tensor([0, 3])
    positions = torch.tensor([0, 5, 15])
    p = Patches.units(channels, positions, shape, torch.zeros(1, dtype=torch.float64))
    dense = p.to_dense()  # (1, 12, 4, 4, 4)
    assert dense.shape == (1, 12) + shape
    assert float(dense.abs().sum()) == 12.0
    back = p.through_conv(op).to_dense()
    torch.testing.assert_close(back, op.backward(dense), rtol=0, atol=1e-14)
    assert isinstance(net.ops[1], ReLUOp)


def _conv_needle(k: float, c: float) -> nn.Sequential:
    """Pixels (x0, x1): ``margin = 1.5 - c relu(1 - k relu(k x0))`` through 1x1 convolutions,
    negative only for ``x0 < 1/k^2``; with k = 2e8 float64 without allowances calls the
    second ReLU dead (the deep corner needle of tests/exact/test_extreme_weights.py)."""
    conv1, conv2, head = nn.Conv2d(1, 1, 1), nn.Conv2d(1, 1, 1), nn.Linear(2, 2)
    with torch.no_grad():
        conv1.weight.fill_(k)
        conv1.bias.zero_()
        conv2.weight.fill_(-k)
        conv2.bias.fill_(1.0)
        head.weight.copy_(torch.tensor([[0.0, 0.0], [c, 0.0]]))
        head.bias.copy_(torch.tensor([1.0, -0.5]))
    return nn.Sequential(conv1, nn.ReLU(), conv2, nn.ReLU(), nn.Flatten(), head).eval()


def test_patch_path_keeps_the_rounding_allowances() -> None:
    from advrobust.core import Verdict
    from advrobust.relax import CROWN

    model = _conv_needle(2e8, 1e9).requires_grad_(False)
    x = torch.full((1, 1, 1, 2), 0.5)
    threat = LpBall("linf", 0.5)
    net = from_module(model.double(), (1, 1, 2))
    assert crown._patch_elements(net, 3, 1) is not None  # the needle's ReLU takes patches
    x64 = x.double()
    plain = crown_layer_bounds(net, x64, threat)
    sound = crown_layer_bounds(net, x64, threat, rounding=True)
    assert float(plain[3][1][0, 0, 0, 0]) <= 0.0 < float(sound[3][1][0, 0, 0, 0])
    result = CROWN()(_conv_needle(2e8, 1e9), x, torch.tensor([0]), threat)
    assert result.verdict[0] is not Verdict.VERIFIED


def test_patch_pass_subtracts_its_rounding_allowance() -> None:
    model, shape = _cnn(7, 3, 2, 1, 3, True, True)
    net = from_module(model, shape)
    x0 = torch.rand((2,) + shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    threat = LpBall("linf", 0.05)
    bounds = crown_layer_bounds(net, x0, threat, rounding=True)
    # the first patch layer: windows stay below the layer sizes down to the input
    index = [i for i in net.relu_indices if crown._patch_elements(net, i, 2) is not None
             and not crown._interval_is_exact(net, threat, i)][0]
    plain = crown._refine(net, x0, threat, bounds[:index + 1], index)
    sound = crown._refine(net, x0, threat, bounds[:index + 1], index, rounding=True)
    refined = plain[0] > bounds[index][0]  # where CROWN beat the interval bound
    assert int(refined.sum()) > 0
    gap = (plain[0] - sound[0])[refined]
    assert bool((gap > 0).all())  # an allowance was subtracted ...
    assert bool((gap <= 1e-9 * (1 + plain[0][refined].abs())).all())  # ... a float64-sized one
