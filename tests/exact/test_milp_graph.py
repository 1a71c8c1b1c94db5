"""The MILP and LP tightening on graph networks (residual adds, concatenations, subtraction):
exact on piecewise-linear DAGs, a sound relaxation with a warning on sigmoid / tanh ones."""

from __future__ import annotations

import warnings

import pytest
import torch
from tests.relax.dag_nets import RandomDag
from tests.relax.test_dag import _sampled_margins
from torch import nn

from advrobust.core import LpBall, Spec, Verdict
from advrobust.errors import UnsupportedLayerError
from advrobust.exact import MILP, MinimalDistortion, lp_tighten_bounds
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


def test_lp_tightening_on_a_dag_is_sound_and_tightens() -> None:
    model = RandomDag(2, blocks=2, acts=(nn.ReLU,)).double().eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(1, 5, generator=gen, dtype=torch.float64)
    threat = LpBall("linf", 0.2, lo=0.0, hi=1.0)
    graph = build_graph(model, (5,))
    with torch.no_grad():
        bounds = graph_crown_bounds(graph, x, threat, rounding=True)
    new = lp_tighten_bounds(graph, bounds, 0, threat, x)
    widths = [(float((b[1] - b[0]).sum()), float((n[1] - n[0]).sum()))
              for b, n in zip(bounds, new, strict=True)]
    assert all(w_new <= w_old + 1e-9 for w_old, w_new in widths)
    assert any(w_new < w_old - 1e-6 for w_old, w_new in widths)
    # every node's value at sampled points of the set stays inside its tightened bounds
    u = torch.rand(256, 5, generator=gen, dtype=torch.float64)
    u[:128] = u[:128].round()
    values = [threat.project(x.expand(256, -1), x + threat.eps * (2 * u - 1))]
    with torch.no_grad():
        for node in graph.nodes[1:]:
            assert node.op is not None
            values.append(node.op.forward(*(values[j] for j in node.inputs)))
    for v, (lo, hi) in zip(values, new, strict=True):
        assert bool((v >= lo).all()) and bool((v <= hi).all())


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


def test_minimal_distortion_on_a_relu_dag_separates_robust_from_falsified() -> None:
    model = RandomDag(6, d=3, blocks=2, acts=(nn.ReLU,)).eval()
    x = torch.rand(1, 3, generator=torch.Generator().manual_seed(0)) * 0.6 + 0.2
    y = model(x).argmax(1)
    res = MinimalDistortion(time_limit=20)(model, x, y)
    assert res.status == ("optimal",)
    for i in range(1):
        d = float(res.distance[i])
        assert float(res.lower[i]) == pytest.approx(d, abs=1e-5)
        assert float(res.margin[i]) <= 1e-4
        below = MILP(time_limit=20)(model, x[i:i + 1], y[i:i + 1], LpBall("linf", d * 0.98))
        above = MILP(time_limit=20)(model, x[i:i + 1], y[i:i + 1],
                                    LpBall("linf", d * 1.02 + 1e-3))
        assert below.verdict[0] is not Verdict.FALSIFIED
        assert above.verdict[0] is Verdict.FALSIFIED


def test_minimal_distortion_refuses_a_relaxed_op_naming_it() -> None:
    model = RandomDag(4, blocks=1, acts=(nn.Sigmoid,)).eval()
    x = torch.rand(1, 5)
    with pytest.raises(UnsupportedLayerError, match="MinimalDistortion.*node .*SigmoidOp"):
        MinimalDistortion()(model, x, model(x).argmax(1))
