"""The campaign's per-sample brackets (the verify driver's, one per eps) hold tight bounds
without a false inconsistency.

A linear classifier's exact linf minimum is attained at a box corner and known in closed form
(float64). Raising the lower bound to that minimum and offering the minimising corner must give
a consistent bracket (FALSIFIED where the minimum is negative, no "lower bound above the
witness's value" warning): float32 evaluation of the witness, or a float64 bound stored in
float32, would put the bound above the value by a few ulps on such weights.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from advrobust.core.result import Verdict
from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall
from advrobust.verify import Bracket, Problem
from advrobust.verify.grid import carry_up


def _grid(model: nn.Module, x: torch.Tensor, spec: Spec, eps: list[float]) -> list[Bracket]:
    y = spec.C[:, 0].argmax(1)  # the margins' label
    problem = Problem.of(model, x, y, LpBall("linf", eps[0]), spec)
    return [Bracket(p) for p in problem.along(eps)]


def _linear(seed: int) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(64, 5)
    with torch.no_grad():  # large, irregular weights: float32 sums lose ~1e-7 relative
        model.weight.copy_(torch.randn(5, 64, generator=g) * 3e3)
        model.bias.copy_(torch.randn(5, generator=g))
    return model.eval()


def test_exact_linear_minimum_is_consistent_and_falsified() -> None:
    g = torch.Generator().manual_seed(0)
    model = _linear(1)
    x = torch.rand(6, 64, generator=g) * 0.8 + 0.1
    y = torch.zeros(6, dtype=torch.long)
    spec = Spec.margins(y, 5)
    eps = 0.05
    (bracket,) = _grid(model, x, spec, [eps])
    # Closed form in float64: row k of C W x + C b + d is minimised at x - eps sign(C W).
    w, b = model.weight.detach().double(), model.bias.detach().double()
    cw = torch.einsum("nko,oi->nki", spec.C.double(), w)                  # (N, K, D)
    lower = (torch.einsum("nki,ni->nk", cw, x.double()) - eps * cw.abs().sum(2)
             + torch.einsum("nko,o->nk", spec.C.double(), b) + spec.d.double())
    # The minimiser of the lowest row of each sample (inside the box: x +- eps in [0.05, 0.95]).
    k = lower.argmin(1)
    corner = (x.double() - eps * cw[torch.arange(6), k].sign()).float()
    idx = torch.arange(6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        bracket.raise_lower(idx, lower, stage="closed-form")
        bracket.offer(idx, corner, "corner")
        verdicts = bracket.verdicts()
    assert bracket.lower.dtype == torch.float64 and bracket.values.dtype == torch.float64
    # The bound never exceeds the witness's value (to float64 rounding of a 64-term sum).
    assert bool((bracket.lower <= bracket.values + 1e-9 * (1 + bracket.values.abs())).all())
    for i, v in enumerate(verdicts):
        assert (v is Verdict.FALSIFIED) == (float(lower[i].min()) < 0)
    assert any(v is Verdict.FALSIFIED for v in verdicts)


def test_offered_point_outside_the_ball_is_projected_inside() -> None:
    model = _linear(2)
    x = torch.full((2, 64), 0.5)
    spec = Spec.margins(torch.zeros(2, dtype=torch.long), 5)
    brackets = _grid(model, x, spec, [0.01, 0.1])
    brackets[0].offer(torch.arange(2), x + 0.3, "far")  # outside both balls
    carry_up(brackets, 0)  # a point of the eps-0.01 set lies in the eps-0.1 set
    twin = copy.deepcopy(model).double()
    for bracket in brackets:
        # Kept only as its projection onto the eps-0.01 set, valued by the float64 model there.
        assert float((bracket.witness - x).abs().max()) <= 0.01
        logits = twin(bracket.witness.double())
        values = torch.einsum("nko,no->nk", spec.C.double(), logits)
        assert torch.allclose(bracket.values, values, rtol=1e-12, atol=1e-9)
        assert bracket.found_by == ["far", "far"]
