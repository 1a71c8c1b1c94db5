"""VNNLIB unsafe sets that are disjunctions of conjunctions (ACAS Xu's "output 0 is minimal"):
the max-of-constraints head, and every method's answers against a certified ground truth."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advrobust.evaluation.verify import verify_property
from advrobust.network.vnnlib import OutputPolytope, VnnProperty, parse_vnnlib
from advrobust.relax.witness import float64_copy
from advrobust.verify import Problem
from advrobust.verify._vnnlib import DisjunctMargins


def _polytopes(gen: torch.Generator, sizes: list[int], k: int) -> tuple[OutputPolytope, ...]:
    return tuple(OutputPolytope(torch.randn(m, k, generator=gen, dtype=torch.float64),
                                torch.randn(m, generator=gen, dtype=torch.float64))
                 for m in sizes)


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(0, 6), min_size=1, max_size=4), seed=st.integers(0, 999))
def test_head_is_the_max_of_each_disjuncts_constraints(sizes: list[int], seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    k = 3
    prop = VnnProperty(torch.zeros(2), torch.ones(2), _polytopes(gen, sizes, k), k)
    head = float64_copy(DisjunctMargins(nn.Identity(), prop))
    y = torch.randn(50, k, generator=gen, dtype=torch.float64) * 3
    with torch.no_grad():
        got = head(y)
    want = torch.stack([(y @ p.A.T - p.b).amax(1) if p.A.shape[0] else torch.full((50,), -1.0,
                        dtype=torch.float64) for p in prop.unsafe], 1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # a point is unsafe exactly where some output is <= 0
    assert torch.equal(prop.is_unsafe(y), (want <= 0).any(1))


def _line_property(shift: float) -> VnnProperty:
    # y = (x, -x) on [-1, 1]; unsafe: y_0 <= shift and y_1 <= shift, i.e. -shift <= x <= shift
    return parse_vnnlib(
        "(declare-const X_0 Real)(declare-const Y_0 Real)(declare-const Y_1 Real)\n"
        f"(assert (>= X_0 -1))(assert (<= X_0 1))\n"
        f"(assert (and (<= Y_0 {shift!r}) (<= Y_1 {shift!r})))")


def _line_net() -> nn.Module:
    net = nn.Sequential(nn.Linear(1, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        net[0].bias.zero_()
    return net.eval()


@pytest.mark.parametrize("method", ["milp", "bab", "auto"])
def test_a_conjunction_no_single_constraint_refutes_is_proved(method: str) -> None:
    # each constraint alone is reachable (x = -1 or x = 1), together they are not
    res = verify_property(_line_net(), _line_property(-0.1), method=method, time_limit=20)
    assert res.status == "unsat", res.report.stats
    # and its bound is one: max(x + 0.1, 0.1 - x) is 0.1 at x = 0 (the input splits' clipping
    # once cut [-1, 0.1) away and reported the rest's 0.2)
    assert 0 < float(res.report.lower.min()) <= 0.1 + 1e-9
    res = verify_property(_line_net(), _line_property(0.1), method=method, time_limit=20)
    assert res.status == "sat" and res.counterexample is not None
    assert abs(float(res.counterexample[0])) <= 0.1
    assert res.outputs is not None and res.outputs.shape == (2,)  # the model's, not the head's


def test_problem_keeps_the_callers_model_inside_the_head() -> None:
    net = _line_net()
    problem = Problem.from_property(net, _line_property(0.1))
    assert isinstance(problem.model, DisjunctMargins) and problem.model.inner is net
    assert problem.spec.num_rows == 1
    found = problem.confirm_unsafe(torch.tensor([0.05]))
    assert found is not None and torch.allclose(found[1], torch.tensor([0.05, -0.05]))
    assert problem.confirm_unsafe(torch.tensor([0.5])) is None


def _lipschitz(net: nn.Sequential) -> float:
    out = 1.0
    for layer in net:
        if isinstance(layer, nn.Linear):
            out *= float(torch.linalg.matrix_norm(layer.weight.detach().double(), ord=math.inf))
    return out  # linf -> linf, ReLU is 1-Lipschitz


def test_methods_agree_with_a_certified_grid_on_random_conjunctions() -> None:
    # 2 inputs: a 401 x 401 grid decides the truth where the lowest "distance" to an unsafe
    # polytope (min over disjuncts of max over its rows) is beyond the grid's Lipschitz slack
    decided = 0
    for seed in range(8):
        gen = torch.Generator().manual_seed(seed)
        net = nn.Sequential(nn.Linear(2, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(),
                            nn.Linear(8, 4)).eval()
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        twin = copy.deepcopy(net).double()
        lo, hi = torch.tensor([-0.5, -0.5], dtype=torch.float64), torch.tensor([0.5, 0.5],
                                                                               dtype=torch.float64)
        t = torch.linspace(-0.5, 0.5, 401, dtype=torch.float64)
        grid = torch.cartesian_prod(t, t)
        with torch.no_grad():
            out = twin(grid)
        j = seed % 4  # "output j is minimal", shifted to be unsat beyond the grid's slack
        a = torch.zeros(3, 4, dtype=torch.float64)  # on even seeds, sat on odd ones
        a[:, j] = 1.0
        a[torch.arange(3), [i for i in range(4) if i != j]] = -1.0
        rows = (out @ a.T).amax(1)
        slack = 2 * _lipschitz(net) * (0.5 / 400)  # every row is 2L-Lipschitz (linf)
        b = rows.min() - 2 * slack if seed % 2 == 0 else torch.quantile(rows, 0.05)
        prop = VnnProperty(lo, hi, (OutputPolytope(a, b.repeat(3)),), 4)
        value = rows - b  # > 0 outside the polytope
        truth = "sat" if float(value.min()) < 0 else \
            "unsat" if float(value.min()) > slack else None
        for method in ("crown", "milp", "bab", "auto"):
            res = verify_property(net, prop, method=method, time_limit=20,
                                  generator=torch.Generator().manual_seed(0))
            if res.status == "sat":
                x = res.counterexample.double().reshape(1, 2)
                assert bool(prop.contains(x, atol=0.0)[0]) and bool(prop.is_unsafe(twin(x))[0])
            if truth is not None and method != "crown":  # complete: the truth
                assert res.status == truth, (seed, method, res.status)
            assert res.status in (truth, "unknown") if truth else True, (seed, method)
        decided += truth is not None
    assert decided == 8
