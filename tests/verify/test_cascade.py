"""The one cascade driver: each method through it decides as the method alone does, every entry
point runs it, and it keeps to its budget."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch
from torch import nn

import advrobust.verify.cascade as cascade_module
from _tiny_nets import relu_mlp
from advrobust.core.result import Verdict
from advrobust.core.threat import LpBall
from advrobust.evaluation.verify import verify_dataset, verify_property
from advrobust.exact import MILP, BaB
from advrobust.network.vnnlib import parse_vnnlib
from advrobust.relax import CROWN, IBP, LPRelaxation
from advrobust.verify import Bracket, Budget, Policy, Problem, run

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(seed: int, d: int = 5, h: int = 10, k: int = 3) -> nn.Sequential:
    return relu_mlp(seed, d, h, k)


def _case(seed: int, eps: float = 0.3) -> tuple[nn.Module, torch.Tensor, torch.Tensor, LpBall]:
    model = _net(seed)
    x = torch.rand(3, 5, generator=torch.Generator().manual_seed(seed + 7))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y, LpBall("linf", eps)


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("method,alone", [("ibp", IBP()), ("crown", CROWN()),
                                          ("lp", LPRelaxation(time_limit=20))])
def test_a_relaxation_through_the_driver_gives_its_own_bounds(seed: int, method: str,
                                                              alone: Any) -> None:
    model, x, y, threat = _case(seed)
    bracket = run(Problem.of(model, x, y, threat), Policy(method=method, time_limit=20))
    own = alone(model, x, y, threat)
    assert torch.allclose(bracket.lower, own.lower, atol=1e-9, rtol=0)
    assert bracket.verdicts() == own.verdict


@pytest.mark.parametrize("seed,eps,method,alone", [(0, 0.3, "milp", MILP(time_limit=20)),
                                                   (4, 0.3, "milp", MILP(time_limit=20)),
                                                   (4, 0.15, "bab", BaB(time_limit=20))])
def test_an_exact_method_through_the_driver_decides_as_it_does_alone(
        seed: int, eps: float, method: str, alone: Any) -> None:
    # Sandwich: CROWN alone <= the driver's lower bound, and the driver (CROWN, then the
    # exact method from CROWN's cached bounds) reaches the verdicts of the method alone.
    model, x, y, threat = _case(seed, eps)
    bracket = run(Problem.of(model, x, y, threat), Policy(method=method, time_limit=20))
    own = alone(model, x, y, threat)
    crown = CROWN()(model, x, y, threat)
    assert bool((bracket.lower.amin(1) >= crown.lower.amin(1) - 1e-9).all())
    assert bracket.verdicts() == own.verdict
    assert Verdict.UNKNOWN not in own.verdict  # tiny nets: decided, so the check has teeth


def test_the_auto_cascade_agrees_with_the_milp() -> None:
    model, x, y, threat = _case(4)
    bracket = run(Problem.of(model, x, y, threat),
                  Policy(method="auto", time_limit=20, generator=torch.Generator().manual_seed(0)))
    assert bracket.verdicts() == MILP(time_limit=20)(model, x, y, threat).verdict


def test_every_entry_point_runs_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Problem] = []
    real = cascade_module.run

    def spy(problem: Problem, policy: Policy, budget: Budget | None = None) -> Bracket:
        seen.append(problem)
        return real(problem, policy, budget)

    monkeypatch.setattr(cascade_module, "run", spy)
    model, x, y, threat = _case(0)
    report = verify_dataset(model, x, y, threat, method="crown", progress=False)
    assert len(seen) == 1 and seen[0].x.shape == x.shape and report.n == 3
    lines = [f"(declare-const X_{i} Real)" for i in range(5)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(3)]
    for i, v in enumerate(x[0].tolist()):
        lines += [f"(assert (<= X_{i} {v + 0.01!r}))", f"(assert (>= X_{i} {v - 0.01!r}))"]
    label = int(y[0])
    lines.append("(assert (or " + " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(3)
                                           if j != label) + "))")
    prop = parse_vnnlib("\n".join(lines))
    result = verify_property(model, prop, method="crown", time_limit=10)
    assert len(seen) == 2 and result.status in ("unsat", "unknown")
    assert seen[1].box is not None and torch.equal(seen[1].box[0], prop.lower)


def test_an_exhausted_budget_skips_every_stage_and_proves_nothing() -> None:
    model, x, y, threat = _case(0)
    start = time.perf_counter()
    bracket = run(Problem.of(model, x, y, threat), Policy(method="auto", time_limit=20),
                  Budget(deadline=time.perf_counter() - 1.0))
    assert time.perf_counter() - start < 5.0
    skipped = bracket.stats["skipped"]
    assert {s.split(":")[0] for s in skipped} == {"crown", "attack", "bab"}
    assert Verdict.VERIFIED not in bracket.verdicts()
    assert bool(torch.isinf(bracket.lower).all())


def test_a_wall_limit_is_kept_by_the_driver() -> None:
    # a net whose CROWN pass and attack both overrun 0.8 s: stages are skipped or cut short
    # (two samples: the attack-cost prediction once failed on N > 1 with a wall limit)
    gen = torch.Generator().manual_seed(0)
    dims = [64, 768, 768, 768, 10]
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=gen) / a ** 0.5)
        layers += [lin, nn.ReLU()]
    model = nn.Sequential(*layers[:-1]).eval()
    x = torch.rand(2, 64, generator=gen)
    with torch.no_grad():
        y = model(x).argmax(1)
    start = time.perf_counter()
    report = verify_dataset(model, x, y, LpBall("linf", 0.3), wall_limit=0.8, progress=False,
                            generator=torch.Generator().manual_seed(0))
    assert time.perf_counter() - start <= 0.8
    assert report.verified == 0  # no time for a proof at this eps


def test_the_certify_policy_is_at_least_as_tight_as_each_of_its_bounds() -> None:
    from advrobust.verify._bounders import CrownIBP

    model, x, y, threat = _case(1, 0.1)  # one sample proved by each of the three bounds
    bracket = run(Problem.of(model, x, y, threat), Policy(method="certify", batch_size=2))
    assert sorted(bracket.decided_by) == ["crown", "crown-ibp", "ibp"]
    verified = [v is Verdict.VERIFIED for v in bracket.verdicts()]
    for bounder in (IBP(), CrownIBP(), CROWN()):
        alone = bounder(model, x, y, threat)
        assert all(v or not a for v, a in zip(verified, alone.verified.tolist(), strict=True))
    # a proof credits the first (cheapest) bound that gave it
    ibp = IBP()(model, x, y, threat).verified.tolist()
    assert [by == "ibp" for by in bracket.decided_by] == ibp
    points = threat.sample(x.repeat(50, 1), torch.Generator().manual_seed(0))
    with torch.no_grad():
        values = Problem.of(model, x, y, threat).spec.C.repeat(50, 1, 1) \
            @ model(points).unsqueeze(2)
    lowest = values.squeeze(2).reshape(50, 3, -1).amin(0)
    assert bool((bracket.lower <= lowest.double() + 1e-6).all())  # sound


def test_the_driver_runs_the_model_in_eval_mode_and_restores_it() -> None:
    model, x, y, threat = _case(0, 0.05)
    model = nn.Sequential(*model, nn.Dropout(0.5)).eval()  # dropout: no bound would hold
    problem = Problem.of(model, x, y, threat)
    model.train()
    with pytest.warns(UserWarning, match="training mode"):
        bracket = run(problem, Policy(method="crown"))
    assert model.training and all(m.training for m in model.modules())
    assert bracket.verdicts() == CROWN()(model.eval(), x, y, threat).verdict
