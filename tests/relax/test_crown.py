"""CROWN: closed forms for every norm, soundness, convolutions, differentiability."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advrobust.core import LpBall, Spec
from advrobust.network import from_module
from advrobust.relax import CROWN, crown_lower


@pytest.mark.parametrize("norm,q", [("linf", 1.0), ("l2", 2.0), ("l1", math.inf)])
def test_single_linear_layer_bound_is_dual_norm_closed_form(norm: str, q: float) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(6, 4).double()
    x = torch.rand(3, 6, dtype=torch.float64)
    eps = 0.3
    threat = LpBall(norm, eps, lo=-math.inf, hi=math.inf)
    eye = torch.eye(4, dtype=torch.float64).expand(3, 4, 4)
    lower = crown_lower(nn.Sequential(lin), x, threat, eye)
    upper = -crown_lower(nn.Sequential(lin), x, threat, -eye)
    rad = eps * lin.weight.norm(p=q, dim=1)
    torch.testing.assert_close(lower, lin(x) - rad)
    torch.testing.assert_close(upper, lin(x) + rad)


def conv_net() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AvgPool2d(2), nn.Conv2d(3, 4, 2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4, 3)).eval()


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.floats(0.0, 0.3),
       norm=st.sampled_from(["linf", "l2", "l1"]), conv=st.booleans())
def test_crown_is_sound_on_sampled_points(seed: int, eps: float, norm: str,
                                          conv: bool) -> None:
    from tests.relax.conftest import make_mlp

    model = conv_net() if conv else make_mlp(seed, (9, 12, 12, 3))
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 1, 9, 9, generator=gen) if conv else torch.rand(3, 9, generator=gen)
    y = model(x).argmax(1)
    threat = LpBall(norm, eps)
    res = CROWN()(model, x, y, threat)
    spec = Spec.margins(y, 3)
    pts = threat.sample(x.repeat((40,) + (1,) * (x.dim() - 1)), generator=gen)
    vals = torch.stack([spec.apply(model(p)) for p in pts.split(3)])
    assert bool((vals >= res.lower - 1e-5).all())
    assert bool((res.upper >= res.lower - 1e-6).all())


def test_alpha_crown_is_at_least_crown() -> None:
    from tests.relax.conftest import make_mlp

    model = make_mlp(5, (6, 16, 16, 3))
    x = torch.rand(4, 6)
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.1)
    plain = CROWN()(model, x, y, threat).lower
    opt = CROWN(alpha=True, steps=10)(model, x, y, threat).lower
    assert bool((opt >= plain - 1e-6).all())
    assert bool((opt > plain + 1e-6).any())


@pytest.mark.parametrize("intermediate", ["crown", "ibp"])
def test_crown_lower_gradient_matches_finite_differences(intermediate: str) -> None:
    from tests.relax.conftest import make_mlp

    model = make_mlp(7, (5, 8, 8, 3), torch.float64)
    net = from_module(model, (5,))
    x = torch.rand(2, 5, dtype=torch.float64)
    c = Spec.margins(torch.tensor([0, 2]), 3).C.double()
    threat = LpBall("linf", 0.15)

    def value() -> torch.Tensor:
        return crown_lower(net, x, threat, c, intermediate=intermediate).sum()

    value().backward()
    w = model[3].weight
    assert w.grad is not None
    i, j, h = 2, 1, 1e-6
    with torch.no_grad():
        w[i, j] += h
        up = value().item()
        w[i, j] -= 2 * h
        down = value().item()
        w[i, j] += h
    assert (up - down) / (2 * h) == pytest.approx(float(w.grad[i, j]), abs=1e-4)


def test_crown_lower_of_no_rows_is_empty_on_chains_and_graphs() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    x0 = torch.rand(2, 3, generator=torch.Generator().manual_seed(0))
    none = torch.zeros(2, 0, 2)
    for net in (from_module(model, (3,)), from_module(model, (3,)).graph):
        out = crown_lower(net, x0, LpBall("linf", 0.1), none, torch.zeros(2, 0))
        assert out.shape == (2, 0)
