"""The MILP and LP tightening on graph networks (residual adds, concatenations, subtraction):
exact on piecewise-linear DAGs, a sound relaxation with a warning on sigmoid / tanh ones."""

from __future__ import annotations

import warnings

import pytest
import torch
from tests.relax.dag_nets import RandomDag
from tests.relax.test_dag import _sampled_margins
from torch import nn

from advrobust.core import LpBall, Spec
from advrobust.exact import MILP, lp_tighten_bounds
from advrobust.network import build_graph
from advrobust.relax import CROWN, LPRelaxation
from advrobust.relax.dag import graph_crown_bounds


def _relu_dag(seed: int) -> nn.Module:
    return RandomDag(seed, blocks=3, acts=(nn.ReLU,)).double().eval()


def test_milp_on_relu_dags_is_exact_and_sandwiched() -> None:
    model = _relu_dag(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 5, generator=gen, dtype=torch.float64)
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.15, lo=0.0, hi=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no relaxed node: no warning
        milp = MILP(early_stop=False, skip_verified=False)(model, x, y, threat)
    lp = LPRelaxation()(model, x, y, threat)
    crown = CROWN()(model, x, y, threat).lower
    sampled = _sampled_margins(model, x, threat, Spec.margins(y, 3), gen)
    assert milp.stats["exact"]
    assert bool((lp.lower >= crown).all()) and bool((milp.lower >= lp.lower - 1e-7).all())
    # solved to optimality (up to HiGHS's relative gap): the model-checked witness value meets
    # the bound, and no sampled point of the set beats it
    tol = 1e-3 * (1 + milp.upper.abs())
    assert bool((milp.upper >= milp.lower).all()) and bool((sampled >= milp.upper - tol).all())
    assert bool((milp.upper - milp.lower <= tol).all())
    assert bool((milp.lower > lp.lower + 1e-6).any())  # the binaries mattered somewhere


def test_lp_tightening_on_a_dag_keeps_the_exact_value_and_tightens() -> None:
    model = RandomDag(2, blocks=2, acts=(nn.ReLU,)).double().eval()
    x = torch.rand(1, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.2, lo=0.0, hi=1.0)
    plain = MILP(early_stop=False, skip_verified=False)(model, x, y, threat)
    tight = MILP(early_stop=False, skip_verified=False, lp_tighten=True)(model, x, y, threat)
    torch.testing.assert_close(plain.lower, tight.lower, atol=1e-4, rtol=1e-4)
    graph = build_graph(model, (5,))
    with torch.no_grad():
        bounds = graph_crown_bounds(graph, x, threat, rounding=True)
    new = lp_tighten_bounds(graph, bounds, 0, threat, x)
    widths = [(float((b[1] - b[0]).sum()), float((n[1] - n[0]).sum()))
              for b, n in zip(bounds, new, strict=True)]
    assert all(w_new <= w_old + 1e-9 for w_old, w_new in widths)
    assert any(w_new < w_old - 1e-6 for w_old, w_new in widths)


def test_milp_on_a_sigmoid_dag_warns_and_stays_sound() -> None:
    model = RandomDag(4, blocks=2, acts=(nn.Sigmoid, nn.Tanh, nn.ReLU)).double().eval()
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(2, 5, generator=gen, dtype=torch.float64)
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.2, lo=0.0, hi=1.0)
    with pytest.warns(RuntimeWarning, match="no exact MILP encoding; its LP relaxation"):
        milp = MILP(early_stop=False, skip_verified=False)(model, x, y, threat)
    lp = LPRelaxation()(model, x, y, threat)
    sampled = _sampled_margins(model, x, threat, Spec.margins(y, 3), gen)
    assert not milp.stats["exact"]
    assert bool((sampled >= milp.lower).all()) and bool((milp.lower >= lp.lower - 1e-7).all())
