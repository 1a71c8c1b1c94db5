"""Interval bound propagation: closed forms, soundness, differentiability."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advrobust.core import LpBall, Spec
from advrobust.network import from_module
from advrobust.relax import IBP, interval_bounds


def test_single_linear_layer_interval_is_closed_form() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(6, 4).double()
    x = torch.rand(3, 6, dtype=torch.float64)
    eps = 0.07
    lo, hi = interval_bounds(nn.Sequential(lin), x - eps, x + eps)
    centre = lin(x)
    rad = eps * lin.weight.abs().sum(dim=1)
    torch.testing.assert_close(lo, centre - rad)
    torch.testing.assert_close(hi, centre + rad)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.floats(0.0, 0.3))
def test_ibp_encloses_sampled_outputs(seed: int, eps: float,
                                      mlp_factory: Callable[..., nn.Sequential]) -> None:
    model = mlp_factory(seed, (5, 8, 8, 3))
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 5, generator=gen)
    threat = LpBall("linf", eps)
    lo, hi = interval_bounds(model, *threat.input_bounds(x))
    pts = threat.sample(x.repeat(50, 1), generator=gen)
    out = model(pts).reshape(50, 4, 3)
    assert bool((out >= lo - 1e-5).all() and (out <= hi + 1e-5).all())


def test_spec_folding_is_at_least_as_tight_as_output_intervals(
        mlp_factory: Callable[..., nn.Sequential]) -> None:
    model = mlp_factory(1, (5, 8, 3))
    x = torch.rand(6, 5)
    y = torch.zeros(6, dtype=torch.long)
    threat = LpBall("linf", 0.1)
    spec = Spec.margins(y, 3)
    lo, hi = interval_bounds(model, *threat.input_bounds(x))
    naive = torch.einsum("nkc,nc->nk", spec.C.clamp(min=0), lo) + \
        torch.einsum("nkc,nc->nk", spec.C.clamp(max=0), hi)
    folded = IBP()(model, x, y, threat).lower
    assert bool((folded >= naive - 1e-6).all())


def test_interval_bounds_are_differentiable_in_the_weights(
        mlp_factory: Callable[..., nn.Sequential]) -> None:
    model = mlp_factory(2, (4, 6, 3), torch.float64)
    net = from_module(model, (4,))
    x = torch.rand(2, 4, dtype=torch.float64)
    c = Spec.margins(torch.tensor([0, 1]), 3).C.double()
    lo, _ = interval_bounds(net, x - 0.1, x + 0.1, c=c)
    lo.sum().backward()
    grad = model[1].weight.grad
    assert grad is not None and bool(grad.abs().sum() > 0)

    def value(w: torch.Tensor) -> float:
        with torch.no_grad():
            old = model[1].weight.clone()
            model[1].weight.copy_(w)
            out = interval_bounds(net, x - 0.1, x + 0.1, c=c)[0].sum().item()
            model[1].weight.copy_(old)
        return out

    i, j, h = 1, 2, 1e-6
    w = model[1].weight.detach().clone()
    wp, wm = w.clone(), w.clone()
    wp[i, j] += h
    wm[i, j] -= h
    assert (value(wp) - value(wm)) / (2 * h) == pytest.approx(float(grad[i, j]), abs=1e-4)
