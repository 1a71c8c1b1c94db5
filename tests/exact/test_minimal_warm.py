"""MinimalDistortion warm-started from a known lower bound and an incumbent point."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from _tiny_nets import relu_mlp
from advrobust.errors import InvalidParameterError
from advrobust.exact import MinimalDistortion
from advrobust.relax import CROWN, certified_radius

GRID = torch.cartesian_prod(torch.linspace(0, 1, 401), torch.linspace(0, 1, 401))


def _brute(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """The l2 distance of the closest misclassified grid point (inf: none), per sample."""
    with torch.no_grad():
        pred = model(GRID).argmax(1)
    out = []
    for s in range(x.shape[0]):
        adv = pred != y[s]
        out.append(float((GRID[adv] - x[s]).norm(dim=1).min()) if bool(adv.any()) else math.inf)
    return out


def _case(seed: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = relu_mlp(seed, 2, 8)
    x = torch.rand((3, 2), generator=torch.Generator().manual_seed(seed + 100))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _closest_grid_point(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A real adversarial point per sample (the clean point where the grid has none)."""
    with torch.no_grad():
        pred = model(GRID).argmax(1)
    points = x.clone()
    for s in range(x.shape[0]):
        adv = pred != y[s]
        if bool(adv.any()):
            points[s] = GRID[adv][(GRID[adv] - x[s]).norm(dim=1).argmin()]
    return points


@pytest.mark.parametrize("seed", [1, 2, 4, 6, 7, 9])
def test_warm_start_keeps_the_bracket_sound_and_exact(seed: int) -> None:
    model, x, y = _case(seed)
    brute = _brute(model, x, y)
    known = certified_radius(CROWN(), model, x, y, "l2").radius
    incumbent = _closest_grid_point(model, x, y)
    cold = MinimalDistortion(norm="l2", time_limit=30)(model, x, y)
    warm = MinimalDistortion(norm="l2", time_limit=30)(model, x, y, known_lower=known,
                                                       incumbent=incumbent)
    step = 1 / 400 * math.sqrt(2) / 2  # any point is this close to a grid point
    for s in range(3):
        low, up = float(warm.lower[s]), float(warm.distance[s])
        assert low >= float(known[s]) - 1e-12  # never below the warm start's lower end
        assert low <= brute[s] + 1e-9  # sound: no adversarial grid point is closer
        assert up >= brute[s] - step - 1e-6  # and the upper end is a real distance
        if math.isfinite(brute[s]):
            given = float((incumbent[s] - x[s]).norm())
            assert up <= given + 1e-9  # the incumbent counts
            assert warm.status[s] == cold.status[s] == "optimal"
            assert up == pytest.approx(float(cold.distance[s]), abs=1e-3)
            assert float(warm.margin[s]) <= 1e-6
            assert warm.stats["upper_by"][s] == ("incumbent" if up == given else "exact")
            assert warm.stats["lower_by"][s] in ("known", "exact")


def test_tiny_budget_keeps_the_warm_bracket() -> None:
    """With no time for the solver, the bracket is the warm start's, and says so."""
    model, x, y = _case(2)
    known = certified_radius(CROWN(), model, x, y, "l2").radius
    incumbent = _closest_grid_point(model, x, y)
    res = MinimalDistortion(norm="l2", time_limit=1e-9)(model, x, y, known_lower=known,
                                                        incumbent=incumbent)
    brute = _brute(model, x, y)
    for s in range(3):
        if not math.isfinite(brute[s]) or float(known[s]) <= 0:
            continue
        assert float(res.lower[s]) == float(known[s]) > 0
        assert float(res.distance[s]) == pytest.approx(float((incumbent[s] - x[s]).norm()))
        assert res.stats["lower_by"][s] == "known" and res.stats["upper_by"][s] == "incumbent"


def test_incumbent_that_is_not_adversarial_is_ignored() -> None:
    model, x, y = _case(2)
    far = torch.full_like(x, 0.5)
    outside = _closest_grid_point(model, x, y) + 2.0  # adversarial maybe, but off the box
    for bad in (x.clone(), outside):  # the clean points: correctly classified
        res = MinimalDistortion(norm="l2", time_limit=1e-9)(model, x, y, incumbent=bad)
        assert res.stats["upper_by"] == ("none",) * 3
        assert bool(torch.isinf(res.distance).all())
    with pytest.raises(InvalidParameterError, match="incumbent"):
        MinimalDistortion(norm="l2")(model, x, y, incumbent=far[:2])
    with pytest.raises(InvalidParameterError, match="known_lower"):
        MinimalDistortion(norm="l2")(model, x, y, known_lower=torch.zeros(2))
    with pytest.raises(InvalidParameterError, match="known_lower"):
        MinimalDistortion(norm="l2")(model, x, y, known_lower=-torch.ones(3))


@pytest.mark.parametrize("norm", ["linf", "l1"])
def test_warm_start_in_linf_and_l1_matches_the_cold_optimum(norm: str) -> None:
    model, x, y = _case(7)
    incumbent = _closest_grid_point(model, x, y)
    cold = MinimalDistortion(norm=norm, time_limit=30)(model, x, y)
    warm = MinimalDistortion(norm=norm, time_limit=30)(model, x, y, incumbent=incumbent)
    for s in range(3):
        assert warm.status[s] == cold.status[s]
        if cold.status[s] == "optimal":
            assert float(warm.distance[s]) == pytest.approx(float(cold.distance[s]), abs=1e-4)
            assert float(warm.lower[s]) <= float(cold.distance[s]) + 1e-6
