"""The gates of the bounders: witnesses are projected and re-checked in float64, internal
inconsistencies become UNKNOWN with a warning naming the check (never a traceback)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from advrobust.core import LpBall, Spec, Verdict, decide_verdicts
from advrobust.network.ir import Network
from advrobust.relax import CROWN, Bounds
from advrobust.relax.base import Bounder
from advrobust.relax.witness import WitnessGate, project_exact


class _Lying(Bounder):
    """A broken bounder: claims a lower bound of 5 and offers given candidates."""

    def __init__(self, *, offset: float = 0.0) -> None:
        self.offset = offset

    def _bound(self, network: Network, x: Tensor, threat: LpBall, spec: Spec) -> Bounds:
        n, k = spec.d.shape
        cand = (x + self.offset).unsqueeze(1)
        return Bounds(torch.full((n, k), 5.0, dtype=x.dtype), candidates=cand)


def _model() -> nn.Sequential:
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        lin.bias.zero_()
    return nn.Sequential(lin).eval()


def test_lower_above_an_evaluated_point_is_unknown_with_a_warning() -> None:
    x = torch.tensor([[0.7, 0.4]])  # margin 0.3 at x: a lower bound of 5 is impossible
    with pytest.warns(RuntimeWarning, match="consistency check failed"):
        res = _Lying()(_model(), x, torch.tensor([0]), LpBall("linf", 0.1))
    assert res.verdict == (Verdict.UNKNOWN,)


def test_proved_and_falsified_is_unknown_with_a_warning() -> None:
    lower = torch.tensor([[1.0], [1.0]])
    values = torch.tensor([[-1.0], [2.0]])
    with pytest.warns(RuntimeWarning, match="both proved and falsified"):
        verdicts = decide_verdicts(lower, values)
    assert verdicts == (Verdict.UNKNOWN, Verdict.VERIFIED)


def test_witness_outside_the_ball_is_projected_before_it_counts() -> None:
    # a candidate far outside the ball: projected onto the ball, its margin is positive
    x = torch.tensor([[0.7, 0.4]])
    res = CROWN()(_model(), x, torch.tensor([0]), LpBall("linf", 0.05))
    assert res.verdict == (Verdict.VERIFIED,)
    threat = LpBall("linf", 0.05)
    gate = WitnessGate(_model())
    spec = Spec.margins(torch.tensor([0]), 2)
    point, values = gate(x, torch.tensor([[0.0, 1.0]]), threat, spec)
    assert float((point - x).abs().max()) <= 0.05 + 1e-7
    assert float(values.min()) > 0  # not a counterexample once inside the set


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_projection_lands_inside_with_zero_tolerance(norm: str) -> None:
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(64, 20, generator=gen)
    threat = LpBall(norm, 0.3)
    far = x0 + torch.randn(64, 20, generator=gen)
    point, inside = project_exact(threat, x0, far)
    assert bool(inside.all())
    assert bool((threat.norm_of(point.double() - x0.double()) <= 0.3).all())
