"""IBP and CROWN over DAG networks: the sandwich on random DAGs, agreement with the chain passes
on chains, alpha-CROWN, and the errors of chain-only bounders."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.relax.dag_nets import ConvDag, RandomDag
from torch import nn

from advrobust.core import LpBall, Spec
from advrobust.core.result import Verdict
from advrobust.errors import UnsupportedLayerError
from advrobust.exact import BaB
from advrobust.models import build_model
from advrobust.network import build_graph, from_module
from advrobust.relax import CROWN, IBP, LPRelaxation, crown_lower
from advrobust.relax.dag import graph_crown_lower


def _sampled_margins(model: nn.Module, x: torch.Tensor, threat: LpBall, spec: Spec,
                     gen: torch.Generator, m: int = 128) -> torch.Tensor:
    """Min over m sampled points of the set (half of them box corners) per row: (N, K)."""
    n = x.shape[0]
    u = torch.rand((m, n) + tuple(x.shape[1:]), generator=gen, dtype=x.dtype) * 2 - 1
    u[: m // 2] = u[: m // 2].sign()
    pts = threat.project(x.repeat(m, *([1] * (x.dim() - 1))),
                         x.repeat(m, *([1] * (x.dim() - 1))) + threat.eps * u.flatten(0, 1))
    with torch.no_grad():
        out = model(pts).reshape(m, n, -1)
    vals = torch.einsum("nko,mno->mnk", spec.C.to(out), out) + spec.d.to(out)
    return vals.amin(0)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.sampled_from([0.01, 0.05, 0.2]),
       conv=st.booleans())
def test_sandwich_on_random_dags(seed: int, eps: float, conv: bool) -> None:
    model = (ConvDag(seed) if conv else RandomDag(seed)).double().eval()
    gen = torch.Generator().manual_seed(seed)
    shape = (1, 6, 6) if conv else (5,)
    x = torch.rand((4,) + shape, generator=gen, dtype=torch.float64)
    y = model(x).argmax(1)
    threat = LpBall("linf", eps, lo=0.0, hi=1.0)
    spec = Spec.margins(y, 3)
    crown = CROWN()(model, x, y, threat).lower
    ibp = IBP()(model, x, y, threat).lower
    sampled = _sampled_margins(model, x, threat, spec, gen)
    assert bool((sampled >= crown).all()) and bool((sampled >= ibp).all())
    # CROWN (intermediate bounds intersected with intervals) is at least IBP almost always
    assert float((crown >= ibp - 1e-9).double().mean()) >= 0.75


def test_graph_crown_equals_chain_crown_on_a_chain() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                          nn.Linear(8, 3)).double().eval()
    x = torch.rand(3, 6, dtype=torch.float64)
    threat = LpBall("linf", 0.1, lo=0.0, hi=1.0)
    c = Spec.margins(model(x).argmax(1), 3).C
    chain = crown_lower(from_module(model, (6,)), x, threat, c, rounding=True)
    graph = graph_crown_lower(build_graph(model, (6,)), x, threat, c, rounding=True)
    torch.testing.assert_close(graph, chain, rtol=0, atol=1e-12)


def test_alpha_crown_on_a_dag_is_sound_and_not_looser() -> None:
    model = RandomDag(7, blocks=3).double().eval()
    torch.manual_seed(1)
    x = torch.rand(3, 5, dtype=torch.float64)
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.1, lo=0.0, hi=1.0)
    plain = CROWN()(model, x, y, threat)
    alpha = CROWN(alpha=True, steps=5)(model, x, y, threat)
    assert bool((alpha.lower >= plain.lower - 1e-12).all())
    assert bool((alpha.upper >= alpha.lower).all())


def test_a_verdict_on_a_residual_network() -> None:
    model = RandomDag(3).double().eval()
    x = torch.rand(2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)
    res = CROWN()(model, x, y, LpBall("linf", 1e-4, lo=0.0, hi=1.0))
    assert all(v is Verdict.VERIFIED for v in res.verdict)


def test_chain_only_bounders_name_the_node() -> None:
    model = RandomDag(1).eval()
    x = torch.rand(2, 5)
    for bounder in (BaB(),):
        with pytest.raises(UnsupportedLayerError, match=f"{type(bounder).__name__}.*fx node"):
            bounder(model, x, model(x).argmax(1), LpBall("linf", 0.1))


@pytest.mark.parametrize("conv", [False, True])
def test_lp_on_dags_is_between_sampled_margins_and_crown(conv: bool) -> None:
    model = (ConvDag(4) if conv else RandomDag(11, blocks=3)).double().eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.rand((3,) + ((1, 6, 6) if conv else (5,)), generator=gen, dtype=torch.float64)
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.1, lo=0.0, hi=1.0)
    lp = LPRelaxation()(model, x, y, threat)
    crown = CROWN()(model, x, y, threat).lower
    sampled = _sampled_margins(model, x, threat, Spec.margins(y, 3), gen)
    assert bool((sampled >= lp.lower).all()) and bool((lp.lower >= crown).all())
    assert bool((lp.stats["lp"] >= crown - 1e-9).all())  # same bounds: the LP is tighter


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow
            return self.lin(x)
        return -self.lin(x)


def test_untraceable_models_suggest_onnx_export() -> None:
    with pytest.raises(UnsupportedLayerError, match="torch.onnx.export"):
        IBP()(_Branchy(), torch.rand(2, 4), torch.tensor([0, 1]), LpBall("linf", 0.1))


def test_non_sequential_chain_runs_every_bounder() -> None:
    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.a(x)))

    torch.manual_seed(0)
    model = Plain().double().eval()
    x = torch.rand(2, 4, dtype=torch.float64)
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.05, lo=0.0, hi=1.0)
    lp = LPRelaxation()(model, x, y, threat).lower
    crown = CROWN()(model, x, y, threat).lower
    assert bool((lp >= crown - 1e-9).all())


def test_resnet8_is_bounded_soundly_by_ibp_and_crown() -> None:
    model = build_model("resnet8", (3, 8, 8), num_classes=4, seed=0).double().eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.002, lo=0.0, hi=1.0)
    crown = CROWN()(model, x, y, threat)
    ibp = IBP()(model, x, y, threat)
    sampled = _sampled_margins(model, x, threat, Spec.margins(y, 4), gen, m=32)
    assert bool((sampled >= crown.lower).all()) and bool((sampled >= ibp.lower).all())
    assert bool((crown.lower >= ibp.lower).all())  # 8 ReLU layers: IBP is far looser
