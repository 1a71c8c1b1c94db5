"""Exact MILP: brute force on 2-D inputs, time limits, solver failures, verdicts."""

from __future__ import annotations

import math
import time

import pytest
import torch
from tests.exact.conftest import make_mlp

from advrobust.core import LpBall, Spec, Verdict
from advrobust.exact import MILP
from advrobust.solvers import HighsSolver, Solution, SolveStatus


def _grid_min(model: torch.nn.Module, x0: torch.Tensor, threat: LpBall, spec_c: torch.Tensor,
              steps: int = 301) -> torch.Tensor:
    lo, hi = threat.input_bounds(x0.unsqueeze(0))
    g0 = torch.linspace(float(lo[0, 0]), float(hi[0, 0]), steps, dtype=torch.float64)
    g1 = torch.linspace(float(lo[0, 1]), float(hi[0, 1]), steps, dtype=torch.float64)
    pts = torch.cartesian_prod(g0, g1)
    with torch.no_grad():
        out = model.double()(pts)
    model.float()
    return (out @ spec_c.double().T).amin(0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_milp_equals_brute_force_on_2d_inputs(seed: int) -> None:
    model = make_mlp(seed, (2, 12, 12, 3))
    x = torch.rand(2, 2, generator=torch.Generator().manual_seed(seed))
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.2)
    res = MILP(early_stop=False, skip_verified=False)(model, x, y, threat)
    spec = Spec.margins(y, 3)
    lip = math.prod(float(torch.linalg.matrix_norm(m.weight.detach(), 2)) for m in model
                    if isinstance(m, torch.nn.Linear)) * math.sqrt(2)
    h = 0.4 / 300
    for i in range(2):
        grid = _grid_min(model, x[i], threat, spec.C[i])
        assert bool((grid >= res.lower[i].double() - 1e-5).all())
        assert bool((grid - res.lower[i].double() <= lip * h + 1e-5).all())


def test_time_limit_returns_a_valid_bracket_without_hanging() -> None:
    model = make_mlp(3, (20, 120, 120, 120, 10))
    x = torch.rand(1, 20, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)
    start = time.perf_counter()
    res = MILP(time_limit=1.0, early_stop=False, skip_verified=False)(
        model, x, y, LpBall("linf", 0.5))
    assert time.perf_counter() - start < 30
    rows = res.stats["samples"][0]
    assert any(r["status"] in ("time_limit", "skipped (time limit)") for r in rows)
    assert bool((res.lower <= res.upper + 1e-5).all())
    assert res.verdict[0] in (Verdict.UNKNOWN, Verdict.FALSIFIED)


def test_solver_failure_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: HighsSolver, *args: object, **kwargs: object) -> Solution:
        return Solution(SolveStatus.ERROR, math.inf, -math.inf, None, "Solve error", 0.0)

    monkeypatch.setattr(HighsSolver, "minimize", broken)
    model = make_mlp(4, (4, 16, 16, 3))
    x = torch.rand(2, 4, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    res = MILP(skip_verified=False)(model, x, y, LpBall("linf", 0.3))
    assert res.verdict == (Verdict.UNKNOWN, Verdict.UNKNOWN)
    assert {r["status"] for s in res.stats["samples"] for r in s} == {"error"}
    assert {r["solver"] for s in res.stats["samples"] for r in s} == {"Solve error"}


def test_early_stop_falsifies_with_a_model_checked_witness() -> None:
    model = make_mlp(5, (4, 16, 16, 3))
    x = torch.rand(3, 4, generator=torch.Generator().manual_seed(2))[1:]  # two suffice
    y = model(x).argmax(1)
    threat = LpBall("linf", 1.0, lo=-5.0, hi=5.0)
    # a generous limit: early stop ends each solve at its first counterexample, so the limit
    # only matters on a slow or loaded machine (3 s failed under load)
    res = MILP(time_limit=60.0)(model, x, y, threat)
    assert Verdict.FALSIFIED in res.verdict
    for i, v in enumerate(res.verdict):
        if v is Verdict.FALSIFIED:
            assert bool(threat.contains(x[i:i + 1], res.witness[i:i + 1]).all())
            with torch.no_grad():
                value = Spec.margins(y[i:i + 1], 3).apply(model(res.witness[i:i + 1]))
            assert float(value.min()) < 0


def test_lp_tightening_keeps_the_exact_value() -> None:
    model = make_mlp(6, (3, 10, 10, 3))
    x = torch.rand(2, 3, generator=torch.Generator().manual_seed(3))
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.15)
    plain = MILP(early_stop=False, skip_verified=False)(model, x, y, threat)
    tight = MILP(early_stop=False, skip_verified=False, lp_tighten=True)(model, x, y, threat)
    torch.testing.assert_close(plain.lower, tight.lower, atol=1e-4, rtol=1e-4)


def test_bad_parameters_raise() -> None:
    with pytest.raises(ValueError, match="'time_limit' parameter of MILP"):
        MILP(time_limit=0)
    with pytest.raises(ValueError, match="'threads' parameter of MILP"):
        MILP(threads=0)
