"""MinMax (GroupSort-2): the pair sort, its IR, 1-Lipschitz in every lp norm, and the bounds."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advrobust.attacks import PGD
from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall, Norm
from advrobust.errors import InvalidInputError, InvalidParameterError
from advrobust.models import MinMax
from advrobust.network.ir import from_module
from advrobust.relax import CROWN, IBP, GlobalLipschitz, certified_radius
from advrobust.relax._opnorm import minmax_blocks


def _tiny(seed: int) -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(6, 8), MinMax(8), nn.Linear(8, 8), MinMax(8),
                             nn.Linear(8, 3))


def _sorted_pairs(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=1)
    return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)


def test_forward_sorts_pairs_and_the_fixed_layers_agree() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=gen)
    act = MinMax(6)
    # b + relu(a - b) is max(a, b) up to one rounding; the fixed layers (what every verifier
    # reads) compute the very same floats
    assert torch.allclose(act(x), _sorted_pairs(x), rtol=1e-6, atol=1e-7)
    assert torch.equal(nn.Sequential.forward(act, x), act(x))
    assert torch.allclose(from_module(nn.Sequential(act), (6,)).forward(x), act(x))
    maps = torch.randn(3, 4, 5, 5, generator=gen)
    spatial = MinMax(4, spatial=True)
    assert torch.allclose(spatial(maps), _sorted_pairs(maps), rtol=1e-6, atol=1e-7)
    assert torch.equal(nn.Sequential.forward(spatial, maps), spatial(maps))
    assert not any(p.requires_grad for p in act.parameters())


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), p=st.sampled_from([1.0, 2.0, math.inf]),
       scale=st.sampled_from([1e-3, 0.1, 3.0]))
def test_minmax_is_one_lipschitz_and_keeps_the_gradient_norm(seed: int, p: float,
                                                             scale: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 10, generator=gen, dtype=torch.float64, requires_grad=True)
    d = scale * torch.randn(64, 10, generator=gen, dtype=torch.float64)
    act = MinMax(10).double()
    out = act(x)
    slope = (act(x + d) - out).norm(p=p, dim=1) / d.norm(p=p, dim=1)
    assert bool((slope <= 1 + 1e-12).all())
    v = torch.randn(64, 10, generator=gen, dtype=torch.float64)
    (grad,) = torch.autograd.grad(out, x, v)  # locally a permutation: norms preserved
    assert torch.allclose(grad.norm(dim=1), v.norm(dim=1))


@pytest.mark.parametrize("norm", [Norm.L2, Norm.LINF])
def test_certified_constant_counts_blocks_as_one_and_bounds_slopes(norm: Norm) -> None:
    model = _tiny(0).double().eval()
    net = from_module(model, (6,))
    assert minmax_blocks(net) == {1: 4, 5: 8}
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(200, 6, generator=gen, dtype=torch.float64)
    x2 = x + 0.05 * torch.randn(200, 6, generator=gen, dtype=torch.float64)
    spec = Spec.margins(model(x).argmax(1), 3)
    consts = GlobalLipschitz().constants(net, spec, norm)
    with torch.no_grad():
        change = (spec.apply(model(x2)) - spec.apply(model(x))).abs()
    dist = (x2 - x).norm(p=2 if norm is Norm.L2 else math.inf, dim=1, keepdim=True)
    assert bool((change <= consts * dist * (1 + 1e-9) + 1e-12).all())
    if norm is Norm.L2:  # exactly ||c^T W_3|| ||W_2|| ||W_1||: the blocks count 1
        w = [m.weight.detach() for m in model if isinstance(m, nn.Linear)]
        expected = (spec.C.double() @ w[2]).norm(dim=-1) * math.prod(
            float(torch.linalg.matrix_norm(m, ord=2)) for m in w[:2])
        assert torch.allclose(consts, expected, rtol=1e-6)


def test_a_modified_block_is_not_trusted() -> None:
    model = _tiny(0).eval()
    spec = Spec.margins(torch.zeros(1, dtype=torch.long), 3)
    before = GlobalLipschitz().constants(from_module(model, (6,)), spec, Norm.L2)
    with torch.no_grad():
        model[1][0].weight[0, 0] = 2.0  # no longer the pair sort
    net = from_module(model, (6,))
    assert minmax_blocks(net) == {5: 8}
    assert bool((GlobalLipschitz().constants(net, spec, Norm.L2) > before).all())


def test_certified_radius_never_exceeds_an_attack_distance() -> None:
    model = _tiny(3).eval()
    with torch.no_grad():  # steeper, so that the attack breaks points inside the box
        for layer in (model[0], model[2], model[4]):
            layer.weight.mul_(3)
    gen = torch.Generator().manual_seed(2)
    x = 0.3 + 0.4 * torch.rand(64, 6, generator=gen)
    y = model(x).argmax(1)
    radius = certified_radius(GlobalLipschitz(), model, x, y, "l2").radius
    assert bool((radius > 0).all())
    broken = 0
    for eps in (0.05, 0.2):  # radii 0.01-0.07: some certified at 0.05, none at 0.2
        res = PGD(steps=10, step_size=eps / 4)(model, x, y, LpBall("l2", eps))
        broken += int(res.success.sum())
        assert bool((res.norm[res.success] >= radius[res.success].float() - 1e-6).all())
        assert not bool(res.success[radius >= eps].any())
    assert broken > 0  # the attack does find points, beyond the certified radii


def test_graph_route_bounds_a_traced_module_with_minmax() -> None:
    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = _tiny(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    model = Wrapped().eval()
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(8, 6, generator=gen)
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.02)
    noise = (torch.rand(200, 8, 6, generator=gen) * 2 - 1) * 0.02
    with torch.no_grad():
        spec = Spec.margins(y, 3)
        sampled = torch.stack([spec.apply(model((x + n).clamp(0, 1))) for n in noise])
    for bounder in (IBP(), CROWN()):
        lower = bounder(model, x, y, threat).lower
        assert bool(torch.isfinite(lower).all())
        assert bool((lower <= sampled.amin(0).double() + 1e-6).all())


def test_bad_input() -> None:
    with pytest.raises(InvalidParameterError, match="'features' parameter of MinMax.*even"):
        MinMax(5)
    with pytest.raises(InvalidParameterError, match="features"):
        MinMax(0)
    with pytest.raises(InvalidInputError, match=r"MinMax\(4\).*\(N, F\).*\(2, 6\)"):
        MinMax(4)(torch.zeros(2, 6))
    with pytest.raises(InvalidInputError, match=r"spatial=True.*\(N, C, H, W\)"):
        MinMax(4, spatial=True)(torch.zeros(2, 4))
