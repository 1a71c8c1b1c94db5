"""``verify --radius exact``: every sample's bracket at least as good as the cheap methods'
(CROWN / Lipschitz below, a model-checked attack point above), and always sound."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
from torch import nn

from _tiny_nets import relu_mlp
from advrobust.cli._radius import _exact
from advrobust.exact import MinimalDistortion
from advrobust.relax import CROWN, certified_radius


@pytest.fixture(autouse=True)
def _one_torch_thread(one_thread: None) -> None:
    """Small tensor ops run far slower with 2 threads on a shared 2-core machine."""


def _args(time_limit: float) -> argparse.Namespace:
    return argparse.Namespace(norm="l2", time_limit=time_limit, threads=1, no_progress=True)


def _case(seed: int, d: int, n: int = 4) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = relu_mlp(seed, d, 8)
    x = torch.rand((n, d), generator=torch.Generator().manual_seed(seed + 100))
    y = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y[:-1] = model(x[:-1]).argmax(1)  # the last sample's label is random: maybe wrong
    return model, x, y


def _brute(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """l2 distance of the closest misclassified point of a 2-D grid (inf: none)."""
    grid = torch.cartesian_prod(torch.linspace(0, 1, 401), torch.linspace(0, 1, 401))
    with torch.no_grad():
        pred = model(grid).argmax(1)
    return [float((grid[pred != y[s]] - x[s]).norm(dim=1).min())
            if bool((pred != y[s]).any()) else math.inf for s in range(x.shape[0])]


@pytest.mark.parametrize("seed", [1, 2, 4, 6, 7, 9, 11, 13])
@pytest.mark.parametrize("time_limit", [1e-4, 20.0])
def test_bracket_contains_the_minimal_distortion(seed: int, time_limit: float) -> None:
    """Property over seeds: whatever part proved each end (cheap only with a budget spent
    before the exact stage, exact with a generous one), the bracket holds d* on a 2-D MLP."""
    model, x, y = _case(seed, 2)
    correct = model(x).argmax(1) == y
    lower, upper, cut, lower_by, upper_by = _exact(_args(time_limit), model, x, y, correct)
    brute = _brute(model, x, y)  # an adversarial grid point's distance: >= d*
    exact = MinimalDistortion(norm="l2", time_limit=20)(model, x, y)  # exact.lower <= d*
    for s in range(x.shape[0]):
        if not bool(correct[s]):
            assert float(lower[s]) == float(upper[s]) == 0.0
            assert (lower_by[s], upper_by[s]) == ("none", "clean")
            continue
        assert 0 <= float(lower[s]) <= brute[s] + 1e-9  # sound below
        assert float(upper[s]) >= float(exact.lower[s]) - 1e-9  # sound above
        assert lower_by[s] in ("crown", "lipschitz", "exact", "none")
        assert upper_by[s] in ("attack", "exact", "none")
        if time_limit > 1 and math.isfinite(brute[s]):
            assert s not in cut and float(upper[s]) - float(lower[s]) <= 1e-3
        if time_limit < 1:
            assert s in cut and lower_by[s] != "exact" and upper_by[s] != "exact"


def test_budget_too_small_for_the_exact_stage_still_brackets() -> None:
    """4-D MLPs, no time left for the solver: lower > 0 wherever CROWN certifies something,
    upper finite (a model-checked attack point) wherever the model has adversarial points."""
    axis = torch.linspace(0, 1, 31)
    grid = torch.cartesian_prod(axis, axis, axis, axis)
    checked = 0
    for seed in range(6):
        model, x, y = _case(seed, 4, n=6)
        correct = model(x).argmax(1) == y
        lower, upper, cut, lower_by, upper_by = _exact(_args(1e-4), model, x, y, correct)
        crown = certified_radius(CROWN(), model, x, y, "l2").radius
        with torch.no_grad():
            pred = model(grid).argmax(1)
        for s in range(x.shape[0]):
            if not bool(correct[s]):
                continue
            assert s in cut
            adv = pred != y[s]
            brute = float((grid[adv] - x[s]).norm(dim=1).min()) if bool(adv.any()) else math.inf
            assert 0 <= float(lower[s]) <= brute + 1e-9  # sound
            assert float(upper[s]) >= float(lower[s])
            if float(crown[s]) > 0:
                assert float(lower[s]) > 0 and lower_by[s] in ("crown", "lipschitz")
            if math.isfinite(brute):
                assert math.isfinite(float(upper[s])) and upper_by[s] == "attack"
                checked += 1
    assert checked >= 15
