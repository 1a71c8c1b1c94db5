"""alpha-CROWN over the op registry's graph pass: random DAGs (residual adds, concatenations,
ReLU / LeakyReLU / sigmoid / tanh), sound at sampled points, never looser than CROWN, and the
same engine on a chain whether it is given as a Network or as its graph."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.relax.dag_nets import RandomDag
from torch import nn

from advrobust.core import LpBall, Spec
from advrobust.errors import UnsupportedLayerError
from advrobust.network import build_graph, from_module
from advrobust.network.graph import Graph
from advrobust.relax.alpha_crown import alpha_crown, check_chain
from advrobust.relax.dag import graph_crown_bounds, graph_crown_lower

EPS = 0.1


def _node_values(graph: Graph, x: torch.Tensor) -> list[torch.Tensor]:
    values = [x]
    for node in graph.nodes[1:]:
        assert node.op is not None
        values.append(node.op.forward(*(values[j] for j in node.inputs)))
    return values


def _setup(seed: int, acts: tuple = ()) -> tuple[Graph, torch.Tensor, LpBall, Spec]:
    kwargs = {"acts": acts} if acts else {}
    model = RandomDag(seed, blocks=3, width=8, **kwargs).double().eval()
    graph = build_graph(model, (5,))
    x = torch.rand(3, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    spec = Spec.margins(model(x).argmax(1), 3)
    return graph, x, LpBall("linf", EPS, lo=0.0, hi=1.0), Spec(spec.C.double(),
                                                                 spec.d.double())


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_alpha_crown_on_random_dags_is_sound_and_never_looser(seed: int) -> None:
    graph, x, ball, spec = _setup(seed)
    with torch.no_grad():
        crown_bounds = graph_crown_bounds(graph, x, ball, rounding=True)
        crown = graph_crown_lower(graph, x, ball, spec.C, spec.d, bounds=crown_bounds,
                                  rounding=True)
    res = alpha_crown(graph, x, ball, spec.C, spec.d, steps=4)
    # step 0 is CROWN (its final sum rounded down a few ulps more); the best step is kept
    assert bool((res.lower >= crown - 1e-12 * (1 + crown.abs())).all())
    gen = torch.Generator().manual_seed(seed + 1)
    u = torch.rand((400,) + x.shape, generator=gen, dtype=torch.float64) * 2 - 1
    u[:200] = u[:200].sign()  # box corners
    pts = (x + EPS * u).clamp(0, 1).flatten(0, 1)
    with torch.no_grad():
        values = _node_values(graph, pts)
    out = values[graph.output].reshape(400, 3, -1)
    margins = (torch.einsum("nko,mno->mnk", spec.C, out) + spec.d).amin(0)
    assert bool((res.lower <= margins).all())
    for i, v in enumerate(values):
        lo, hi = (b.unsqueeze(0).expand((400,) + b.shape).flatten(0, 1) for b in res.bounds[i])
        assert bool((lo <= v).all() and (v <= hi).all()), f"node {i} excludes a point"
        assert bool((res.bounds[i][0] >= crown_bounds[i][0]).all())
        assert bool((res.bounds[i][1] <= crown_bounds[i][1]).all())


def test_optimised_slopes_tighten_relu_and_leaky_dags() -> None:
    """The optimisation itself works on DAGs: some final bounds and some intermediate bounds
    get strictly tighter than CROWN's (ReLU and LeakyReLU slopes through adds / concats)."""
    gains, inner = [], []
    for seed in range(3):
        graph, x, ball, spec = _setup(seed, acts=(nn.ReLU, lambda: nn.LeakyReLU(0.2)))
        with torch.no_grad():
            bounds = graph_crown_bounds(graph, x, ball, rounding=True)
            crown = graph_crown_lower(graph, x, ball, spec.C, spec.d, bounds=bounds,
                                      rounding=True)
        res = alpha_crown(graph, x, ball, spec.C, spec.d, steps=15, bounds=bounds)
        gains.append(float((res.lower - crown).max()))
        inner.append(max(float((res.bounds[i][0] - bounds[i][0]).max())
                         for i in range(1, len(graph.nodes)) if graph.needs_bounds(i)))
        assert res.steps > 0 and res.alphas
    assert max(gains) > 1e-3
    assert max(inner) > 1e-3


def test_a_chain_gets_the_same_bounds_as_a_network_and_as_its_graph() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(),
                          nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3)).double().eval()
    net = from_module(model, (6,))
    x = torch.rand(2, 6, dtype=torch.float64)
    spec = Spec.margins(model(x).argmax(1), 3)
    ball = LpBall("linf", 0.15, lo=0.0, hi=1.0)
    with torch.no_grad():
        bounds = graph_crown_bounds(net.graph, x, ball, rounding=True)
    a = alpha_crown(net, x, ball, spec.C.double(), spec.d.double(), steps=5, bounds=bounds)
    b = alpha_crown(net.graph, x, ball, spec.C.double(), spec.d.double(), steps=5,
                    bounds=bounds)
    assert torch.equal(a.lower, b.lower)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1])
               for p, q in zip(a.bounds, b.bounds, strict=True))
    assert sorted(a.alphas) == net.relu_indices  # keyed by op index, as BaB expects


def test_branch_and_bound_refuses_graphs_and_unsplittable_ops_by_name() -> None:
    graph, *_ = _setup(3)
    with pytest.raises(UnsupportedLayerError, match="chain networks"):
        check_chain(graph)  # type: ignore[arg-type]
    net = from_module(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), (4,))
    assert check_chain(net) == [1]
