"""A batch's CROWN bounds are each sample's own: the intermediate-bound pass that carries each
sample's own neurons (sparse flags) gives every sample the bounds it gets alone, on chains
(dense rows from the layer's weights) and on DAGs (unit rows on residual sums), whatever the
grouping and padding of the samples."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.exact.conftest import make_mlp
from tests.relax.dag_nets import RandomDag
from torch import nn

import advrobust.relax.dag as dag
from advrobust.core import LpBall
from advrobust.network import build_graph, from_module
from advrobust.relax.crown import crown_layer_bounds


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Force the per-sample pass wherever a batch has two samples or more, in groups of a few
    neurons (padding, several groups per layer, a sample's neurons in pieces); count its
    passes."""
    calls: list[int] = []
    by_sample = dag._refine_by_sample

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return by_sample(*args, **kwargs)

    monkeypatch.setattr(dag, "_UNION_ELEMENTS", 0)
    monkeypatch.setattr(dag, "_PAIR_ELEMENTS", 2 * 16 * 12)  # 12 neurons of 16 wide a group
    # (a sample with more alone, on the graph driver in pieces of ~7 neurons: rows x 7 samples
    # x 2 x a widest node of 16-32 is what the driver's memory allows at once)
    monkeypatch.setattr(dag, "_MAX_ELEMENTS", 2 * 7 * 32)
    monkeypatch.setattr(dag, "_refine_by_sample", spy)
    return calls


def _close(batch: list, alone: list[list], what: str) -> None:
    for i, (lo, hi) in enumerate(batch):
        lo1 = torch.cat([b[i][0] for b in alone])
        hi1 = torch.cat([b[i][1] for b in alone])
        for got, want in ((lo, lo1), (hi, hi1)):
            fin = torch.isfinite(want)
            assert torch.equal(torch.isfinite(got), fin), f"{what} node {i}"
            if bool(fin.any()):
                scale = 1.0 + float(want[fin].abs().max())
                assert float((got[fin] - want[fin]).abs().max()) <= 1e-10 * scale, \
                    f"{what} node {i}"


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.sampled_from([0.02, 0.1, 0.3]))
def test_a_chain_batch_gets_each_sample_s_own_bounds(seed: int, eps: float) -> None:
    with pytest.MonkeyPatch.context() as mp:
        calls = _spy(mp)
        net = make_mlp(seed, (6, 16, 16, 16, 3), torch.float64)
        ir = from_module(net, (6,))
        x = torch.rand(7, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        threat = LpBall("linf", eps, lo=0.0, hi=1.0)
        batch = crown_layer_bounds(ir, x, threat, rounding=True)
        alone = [crown_layer_bounds(ir, x[i:i + 1], threat, rounding=True) for i in range(7)]
        _close(list(batch), [list(b) for b in alone], "chain")
        assert calls  # the per-sample pass ran (else this checked the union pass)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.sampled_from([0.02, 0.1, 0.3]))
def test_a_dag_batch_gets_each_sample_s_own_bounds(seed: int, eps: float) -> None:
    with pytest.MonkeyPatch.context() as mp:
        calls = _spy(mp)
        model = RandomDag(seed, blocks=3, width=16, acts=(nn.ReLU,)).double().eval()
        graph = build_graph(model, (5,))
        x = torch.rand(7, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        threat = LpBall("linf", eps, lo=0.0, hi=1.0)
        batch = dag.graph_crown_bounds(graph, x, threat, rounding=True)
        alone = [dag.graph_crown_bounds(graph, x[i:i + 1], threat, rounding=True)
                 for i in range(7)]
        _close(batch, alone, "dag")
        assert calls


def test_the_pass_is_chosen_by_the_size_of_the_union_pass(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each sample's own neurons where the union's pass would be large, the union where it is
    small; a single sample: always the union (its own)."""
    chosen: list[str] = []
    own, rows = dag._refine_by_sample, dag.refine_rows

    def by_sample(*args, **kwargs):  # type: ignore[no-untyped-def]
        chosen.append("sample")
        return own(*args, **kwargs)

    def union(*args, **kwargs):  # type: ignore[no-untyped-def]
        chosen.append("union")
        return rows(*args, **kwargs)

    monkeypatch.setattr(dag, "_refine_by_sample", by_sample)
    monkeypatch.setattr(dag, "refine_rows", union)
    graph = build_graph(make_mlp(1, (4, 32, 32, 2), torch.float64), (4,))
    far = torch.tensor([[0.0] * 4, [1.0] * 4, [0.0, 1.0] * 2, [1.0, 0.0] * 2], dtype=torch.float64)
    threat = LpBall("linf", 0.01)
    flags = torch.zeros(4, 32, dtype=torch.bool)
    for i in range(4):  # each sample flags its own 4 neurons: 16 together
        flags[i, 4 * i:4 * i + 4] = True
    bounds = dag.graph_interval_bounds(graph, far - 0.01, far + 0.01)
    node = next(i for i in range(1, len(graph.nodes)) if graph.needs_bounds(i)
                and i > 2)  # the second hidden layer's pre-activations
    union_pass = 4 * 16 * 2 * 32  # samples x union x 2 x the widest node
    monkeypatch.setattr(dag, "_UNION_ELEMENTS", union_pass - 1)
    lo, hi = dag.refine_dense(graph, far, threat, bounds, node, flags, 64, rounding=True)
    assert chosen and set(chosen) == {"sample"}
    chosen.clear()
    monkeypatch.setattr(dag, "_UNION_ELEMENTS", union_pass)  # the union's pass is small
    dag.refine_dense(graph, far, threat, bounds, node, flags, 64, rounding=True)
    assert chosen and set(chosen) == {"union"}
    chosen.clear()
    monkeypatch.setattr(dag, "_UNION_ELEMENTS", 0)
    dag.refine_dense(graph, far[:1], threat, [(b[0][:1], b[1][:1]) for b in bounds], node,
                     flags[:1], 64, rounding=True)
    assert chosen and set(chosen) == {"union"}
    # the per-sample pass touched only each sample's own neurons, never widening a bound
    lo0, hi0 = bounds[node]
    assert bool((lo >= lo0).all() & (hi <= hi0).all())
    untouched = ~flags.reshape(lo.shape)
    assert torch.equal(lo[untouched], lo0[untouched]) and torch.equal(hi[untouched],
                                                                      hi0[untouched])
