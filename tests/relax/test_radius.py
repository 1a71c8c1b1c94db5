"""Certified radii: closed form vs bisection, never above the exact minimal distortion, and the
ordering global <= local <= CROWN <= exact on tiny random nets."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
import torch

from advrobust.core.threat import LpBall
from advrobust.errors import InvalidParameterError
from advrobust.exact import MinimalDistortion
from advrobust.relax import CROWN, IBP, GlobalLipschitz, LocalLipschitz, certified_radius


def _batch(model: torch.nn.Module, n: int, d: int, seed: int) -> tuple[torch.Tensor, ...]:
    x = torch.rand((n, d), generator=torch.Generator().manual_seed(seed)) * 0.6 + 0.2
    with torch.no_grad():
        y = model(x).argmax(1)
    return x, y


def test_closed_form_matches_bounder(mlp_factory) -> None:
    model = mlp_factory(0, (4, 10, 10, 3))
    x, y = _batch(model, 6, 4, 0)
    for norm in ("linf", "l2"):
        r = certified_radius(GlobalLipschitz(), model, x, y, norm).radius
        assert bool((r > 0).all())
        # just below the radius the bounder verifies; just above it does not
        for s in range(6):
            xs, ys = x[s:s + 1], y[s:s + 1]
            below = GlobalLipschitz()(model, xs, ys, LpBall(norm, float(r[s]) * 0.999))
            above = GlobalLipschitz()(model, xs, ys, LpBall(norm, float(r[s]) * 1.01))
            assert below.verdict[0].value == "verified"
            assert above.verdict[0].value != "verified"


def test_bisection_radius_is_certified_and_tight(mlp_factory) -> None:
    model = mlp_factory(1, (4, 10, 10, 3))
    x, y = _batch(model, 4, 4, 1)
    res = certified_radius(CROWN(), model, x, y, "linf", rtol=1e-3)
    for s in range(4):
        xs, ys = x[s:s + 1], y[s:s + 1]
        assert CROWN()(model, xs, ys, LpBall("linf", float(res.radius[s]))).verdict[0].value \
            == "verified"
        assert float(res.upper[s]) <= float(res.radius[s]) * (1 + 2e-3)


def test_radius_ordering_and_exact(mlp_factory) -> None:
    """global <= local (by construction), local <= CROWN on average, CROWN <= exact always."""
    glob_all, loc_all, crown_all, exact_all = [], [], [], []
    for seed in range(3):
        model = mlp_factory(seed, (3, 8, 8, 3))
        with torch.no_grad():
            model[1].weight.mul_(4)  # decision boundaries inside the box
        x, y = _batch(model, 3, 3, seed)
        exact = MinimalDistortion(norm="linf", time_limit=30, max_eps=0.3)(model, x, y)
        keep = torch.tensor([s == "optimal" for s in exact.status])
        assert all(s in ("optimal", "robust") for s in exact.status)
        glob_all.append(certified_radius(GlobalLipschitz(), model, x, y, "linf").radius[keep])
        loc_all.append(certified_radius(LocalLipschitz(), model, x, y, "linf").radius[keep])
        crown_all.append(certified_radius(CROWN(), model, x, y, "linf").radius[keep])
        exact_all.append(exact.distance[keep])
    glob, loc, crown, exact_d = (torch.cat(v) for v in (glob_all, loc_all, crown_all,
                                                        exact_all))
    assert exact_d.numel() >= 4
    assert bool((glob <= loc * (1 + 1e-9)).all())
    assert bool((loc <= exact_d + 1e-6).all())
    assert bool((crown <= exact_d * (1 + 1e-6) + 1e-6).all())
    assert float((loc / exact_d).mean()) < float((crown / exact_d).mean())
    assert float((crown >= loc * (1 - 1e-3)).double().mean()) >= 0.8
    assert float((crown / exact_d).mean()) > 0.2  # CROWN is not vacuous on these nets


def test_misclassified_gets_zero(mlp_factory) -> None:
    model = mlp_factory(2, (4, 10, 3))
    x, y = _batch(model, 3, 4, 2)
    wrong = (y + 1) % 3
    for method in (GlobalLipschitz(), IBP()):
        assert bool((certified_radius(method, model, x, wrong, "l2").radius == 0).all())


class _SlowCROWN(CROWN):
    """CROWN that takes at least 50 ms per bound call (a clock the test can count on)."""

    def _bound(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.05)
        return super()._bound(*args, **kwargs)


def test_time_limit_cuts_to_a_sound_bracket(mlp_factory) -> None:
    model = mlp_factory(1, (4, 10, 10, 3))
    x, y = _batch(model, 2, 4, 1)
    full = certified_radius(CROWN(), model, x, y, "linf", rtol=1e-3)
    assert full.stats["cut"] == [] and full.stats["calls"] > 20
    # 0.5 s for both samples: at most ~5 bound calls each, the bracket needs more than 10
    res = certified_radius(_SlowCROWN(), model, x, y, "linf", rtol=1e-3, time_limit=0.5)
    assert res.stats["cut"] == [0, 1]
    assert res.stats["seconds"] < 1.5  # the full search takes over 2 x 10 x 50 ms
    for s in range(2):
        r, u = float(res.radius[s]), float(res.upper[s])
        assert r <= float(full.radius[s]) * (1 + 1e-9)  # never a larger radius than the search
        assert u >= float(full.radius[s])  # ... and the bracket holds the full search's radius
        assert u == math.inf or u - r > 1e-3 * u  # the open bracket reached, not a made-up one
        if r > 0:
            xs, ys = x[s:s + 1], y[s:s + 1]
            assert CROWN()(model, xs, ys, LpBall("linf", r)).verdict[0].value == "verified"


def test_time_limit_spent_leaves_trivial_bracket(mlp_factory) -> None:
    model = mlp_factory(1, (4, 10, 10, 3))
    x, y = _batch(model, 3, 4, 1)
    res = certified_radius(CROWN(), model, x, y, "l2", time_limit=1e-9)
    assert res.stats["cut"] == [0, 1, 2] and res.stats["calls"] == 0
    assert bool((res.radius == 0).all()) and bool((res.upper == math.inf).all())
    roomy = certified_radius(CROWN(), model, x, y, "l2", time_limit=math.inf)
    assert roomy.stats["cut"] == []
    assert torch.equal(roomy.radius, certified_radius(CROWN(), model, x, y, "l2").radius)


def test_progress_bar_one_step_per_sample(mlp_factory, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    model = mlp_factory(1, (4, 10, 3))
    x, y = _batch(model, 3, 4, 1)
    monkeypatch.setenv("ADVROBUST_PROGRESS_INTERVAL", "0")  # a status line on every sample
    certified_radius(IBP(), model, x, y, "linf", progress=True)
    assert "radius (IBP): 3/3 sample" in capsys.readouterr().err
    certified_radius(IBP(), model, x, y, "linf")
    assert capsys.readouterr().err == ""


def test_bad_input(mlp_factory) -> None:
    model = mlp_factory(0, (4, 10, 3))
    x, y = _batch(model, 2, 4, 0)
    with pytest.raises(InvalidParameterError, match="must be a Bounder"):
        certified_radius(MinimalDistortion(), model, x, y, "linf")  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="norm"):
        certified_radius(CROWN(), model, x, y, "l3")
    with pytest.raises(InvalidParameterError, match="steps"):
        certified_radius(CROWN(), model, x, y, "l2", steps=0)
    with pytest.raises(InvalidParameterError, match="max_radius"):
        certified_radius(CROWN(), model, x, y, "l2", max_radius=-1.0)
    with pytest.raises(InvalidParameterError, match="time_limit"):
        certified_radius(CROWN(), model, x, y, "l2", time_limit=0.0)
