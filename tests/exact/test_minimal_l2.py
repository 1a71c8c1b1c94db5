"""Exact minimal l2 distortion: a sound bracket that matches brute force on 2-D inputs."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from advrobust.errors import InvalidParameterError, SolverUnavailableError
from advrobust.exact import MinimalDistortion


def _net(seed: int) -> nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
        net[0].weight.mul_(3)
    return net.eval()


def test_l2_matches_brute_force_on_2d() -> None:
    grid = torch.linspace(0, 1, 601)
    points = torch.cartesian_prod(grid, grid)
    step = float(grid[1] - grid[0])
    checked = 0
    for seed in (1, 2):  # seed 0's net has one class over the whole box (checked: "robust")
        model = _net(seed)
        x = torch.rand((3, 2), generator=torch.Generator().manual_seed(seed + 10))
        with torch.no_grad():
            y = model(x).argmax(1)
            pred = model(points).argmax(1)
        res = MinimalDistortion(norm="l2", time_limit=30)(model, x, y)
        for s in range(3):
            adv = pred != y[s]
            if not bool(adv.any()):
                assert res.status[s] == "robust"
                continue
            brute = float((points[adv] - x[s]).norm(dim=1).min())
            assert res.status[s] == "optimal"
            lower, upper = float(res.lower[s]), float(res.distance[s])
            # sound bracket: lower <= any adversarial grid point's distance; upper is real
            assert lower <= brute + 1e-6
            assert lower <= upper + 1e-9 and upper - lower <= 1e-3
            assert float(res.margin[s]) <= 1e-6  # the model-checked point is adversarial
            assert float((res.x_adv[s] - x[s]).norm()) == pytest.approx(upper, abs=1e-6)
            # and exact: the grid finds nothing much closer than the optimum
            assert brute <= upper + step
            checked += 1
    assert checked >= 4


def test_l2_not_below_linf_and_not_above_l1() -> None:
    """||.||_inf <= ||.||_2 <= ||.||_1 pointwise, so d*_inf <= d*_2 <= d*_1."""
    model = _net(4)
    x = torch.rand((1, 2), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y = model(x).argmax(1)
    d = {p: MinimalDistortion(norm=p, time_limit=30)(model, x, y) for p in ("linf", "l2", "l1")}
    for s in range(1):
        if d["l2"].status[s] != "optimal":
            continue
        assert float(d["linf"].distance[s]) <= float(d["l2"].distance[s]) + 1e-5
        assert float(d["l2"].lower[s]) <= float(d["l1"].distance[s]) + 1e-5


def test_bad_norm_names_the_choices() -> None:
    with pytest.raises(InvalidParameterError, match="l2"):
        MinimalDistortion(norm="l3")
    with pytest.raises(InvalidParameterError, match="tol"):
        MinimalDistortion(norm="l2", tol=0.0)


def test_scip_miqp_agrees_with_the_cutting_planes() -> None:
    pytest.importorskip("pyscipopt")
    model = _net(1)
    x = torch.rand((1, 2), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        y = model(x).argmax(1)
    cuts = MinimalDistortion(norm="l2", time_limit=30)(model, x, y)
    miqp = MinimalDistortion(norm="l2", solver="scip", time_limit=30)(model, x, y)
    for s in range(1):
        assert miqp.status[s] == cuts.status[s] == "optimal"
        assert float(miqp.lower[s]) <= float(cuts.distance[s]) + 1e-6
        assert float(cuts.lower[s]) <= float(miqp.distance[s]) + 1e-6
        assert float(miqp.distance[s]) == pytest.approx(float(cuts.distance[s]), abs=1e-3)
        assert float(miqp.margin[s]) <= 1e-6


def test_miqp_without_scip_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyscipopt", None)  # import fails as if not installed
    with pytest.raises(SolverUnavailableError, match=r"advrobust\[scip\]"):
        MinimalDistortion(norm="l2", solver="scip")
    with pytest.raises(InvalidParameterError, match="only with norm='l2'"):
        MinimalDistortion(norm="linf", solver="scip")
    with pytest.raises(InvalidParameterError, match="solver"):
        MinimalDistortion(norm="l2", solver="gurobi")
