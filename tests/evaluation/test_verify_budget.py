"""One wall-clock budget for the cascade; the spec-row attack; exact stages skip proved rows."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from advrobust.attacks.spec_apgd import SpecAPGD
from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall
from advrobust.evaluation.verify import verify_property
from advrobust.exact import MILP
from advrobust.network.vnnlib import parse_vnnlib
from advrobust.verify import Bracket, Budget, Problem
from advrobust.verify.stages import exact_stage


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _wide(width: int, depth: int, d: int = 64, k: int = 10) -> nn.Sequential:
    """A ReLU MLP whose CROWN pass costs ~ depth * width^3 flops (seconds at width 1024)."""
    gen = torch.Generator().manual_seed(0)
    dims = [d] + [width] * depth + [k]
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=gen) / a ** 0.5)
            lin.bias.zero_()
        layers += [lin, nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval()


def _robustness_property(x0: torch.Tensor, eps: float, label: int, k: int) -> str:
    lines = [f"(declare-const X_{i} Real)" for i in range(x0.numel())]
    lines += [f"(declare-const Y_{j} Real)" for j in range(k)]
    for i, v in enumerate(x0.tolist()):
        lines += [f"(assert (<= X_{i} {min(v + eps, 1.0)!r}))",
                  f"(assert (>= X_{i} {max(v - eps, 0.0)!r}))"]
    lines.append("(assert (or " + " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(k)
                                           if j != label) + "))")
    return "\n".join(lines)


def test_wall_limit_holds_where_every_stage_would_overrun_it() -> None:
    # One CROWN pass here is ~13 GFLOP (its predicted cost more), an exact stage more; the attack
    # (100 steps x 2 restarts on 10 rows) overruns 1.5 s too. The answer still comes back in it.
    model = _wide(1024, 4)
    x0 = torch.rand(64, generator=torch.Generator().manual_seed(1))
    label = int(model(x0.unsqueeze(0)).argmax(1)[0])
    prop = parse_vnnlib(_robustness_property(x0, 0.3, label, 10))
    limit = 1.5
    start = time.perf_counter()
    result = verify_property(model, prop, time_limit=limit,
                             generator=torch.Generator().manual_seed(0))
    elapsed = time.perf_counter() - start
    assert elapsed <= limit, f"answered after {elapsed:.2f} s, limit {limit} s"
    assert result.status in ("sat", "unknown")  # no time for a proof
    if result.status == "unknown":  # the budget, not an error, left stages out
        assert result.report.stats.get("skipped")


def test_spec_apgd_reaches_the_closed_form_minimum_of_a_linear_spec() -> None:
    # For a linear model and an linf ball inside the box, min over the ball of the row
    # c.(Wx + b) + d is c.(W x0 + b) + d - eps ||W^T c||_1 (attained at a corner).
    gen = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 4)).eval()
    x = 0.3 + 0.4 * torch.rand(5, 8, generator=gen)
    c = torch.randn(5, 3, 4, generator=gen)
    with torch.no_grad():  # every row 0.05 at the clean point: the attack has work to do
        d = 0.05 - torch.einsum("nkc,nc->nk", c, model(x))
    spec = Spec.from_matrix(c, d)
    threat = LpBall("linf", 0.1)
    result = SpecAPGD(steps=30, restarts=1).minimize(model, x, threat, spec,
                                                     generator=torch.Generator().manual_seed(0))
    w, b = model[0].weight.detach(), model[0].bias.detach()
    rows = torch.einsum("nkc,ci->nki", c, w)  # (N, K, inputs)
    exact = torch.einsum("nki,ni->nk", rows, x) + c @ b + d - 0.1 * rows.abs().sum(2)
    assert bool(threat.contains(x, result.points).all())
    with torch.no_grad():
        values = spec.apply(model(result.points))
    assert torch.allclose(values, result.values, atol=1e-5)
    # the best point found reaches the minimum of the lowest row, up to float rounding
    assert torch.allclose(result.values.amin(1), exact.amin(1), atol=1e-4)


def test_spec_apgd_stops_at_its_deadline() -> None:
    model = _wide(512, 2)
    x = torch.rand(4, 64, generator=torch.Generator().manual_seed(0))
    spec = Spec.margins(model(x).argmax(1), 10)
    start = time.perf_counter()
    result = SpecAPGD(steps=10_000, restarts=3).minimize(
        model, x, LpBall("linf", 0.05), spec, deadline=start + 0.5)
    assert time.perf_counter() - start < 1.5
    assert result.steps < 10_000


def test_exact_stage_skips_rows_an_earlier_stage_proved() -> None:
    gen = torch.Generator().manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 5)).eval()
    x = torch.rand(1, 4, generator=gen)
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.2)
    state = Bracket(Problem.of(model, x, y, threat, Spec.margins(y, 5)))
    state.lower[0, :2] = 1.0  # rows 0 and 1 "proved" by an earlier stage
    logged: list[int] = []

    def make(seconds: float) -> MILP:
        milp = MILP(time_limit=seconds, early_stop=False, skip_verified=False)
        original = milp._bound

        def spy(network, x, threat, spec):  # type: ignore[no-untyped-def]
            logged.append(spec.num_rows)
            return original(network, x, threat, spec)

        milp._bound = spy  # type: ignore[method-assign]
        return milp

    exact_stage(state, make, "milp", Budget(), optional=True, time_limit=30.0, stages_left=1,
                progress=False)
    assert logged == [2]  # the MILP saw the two open rows only
    rows = [r["row"] for r in state.stats["milp"][0]]
    assert sorted(rows) == [2, 3]  # logged under their own row numbers
    assert bool((state.lower[0, :2] == 1.0).all())  # earlier proofs kept
    full = MILP(time_limit=30, early_stop=False, skip_verified=False)(model, x, y, threat)
    assert torch.allclose(state.lower[0, 2:], full.lower[0, 2:], atol=1e-4)


def test_the_guards_are_seconds_not_a_share_of_long_limits() -> None:
    # the overruns they absorb are a stage's last step; a 5 % guard and a 10 % exact-stage
    # margin left ~44 s of a 300 s VNN-COMP limit idle
    from advrobust.verify.budget import Budget, exact_share

    for limit, most in ((1.5, 0.375), (30.0, 2.0), (300.0, 3.5), (3600.0, 3.5)):
        guard = limit - Budget.of(limit).left()
        assert 0 < guard <= most + 0.05
    assert exact_share(8.0) == pytest.approx(7.2)  # short limits: a tenth kept back, as measured
    assert exact_share(300.0) == pytest.approx(298.5)  # long ones: at most 1.5 s
