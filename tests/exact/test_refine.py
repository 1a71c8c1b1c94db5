"""Refinement of intermediate bounds by branch and bound on the neurons (exact/refine.py): the
refined bounds stay inside the starting ones, contain every reachable value (sampled points and
the exact MILP extremes of each neuron), are tighter where alpha-CROWN is loose, and an internal
inconsistency keeps the old bounds with a warning."""

from __future__ import annotations

import math
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.exact.conftest import assert_agrees_with_milp, make_mlp

import advrobust.exact.bab as bab_inputs
from advrobust.core import LpBall, Spec, Verdict
from advrobust.errors import InvalidParameterError
from advrobust.exact import MILP, BaB
from advrobust.exact import bab as bab_module
from advrobust.exact import refine as refine_module
from advrobust.exact._candidates import Row, decide_by_milp
from advrobust.exact.refine import Refinement, refinable, refine_bounds
from advrobust.network.graph.graph import as_graph
from advrobust.network.ir import Network, from_module
from advrobust.relax.alpha_crown import AlphaResult, alpha_crown
from advrobust.relax.crown import crown_layer_bounds


@pytest.fixture(autouse=True)
def _relu_splits_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """These small networks have few inputs; the tests study the ReLU splits."""
    monkeypatch.setattr(bab_inputs, "INPUT_SPLIT", 0)


def _setup(seed: int, eps: float) -> tuple[Network, torch.Tensor, LpBall, Spec, AlphaResult]:
    model = make_mlp(seed, (6, 24, 24, 24, 3), torch.float64)
    network = from_module(model, (6,))
    x0 = torch.rand(1, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    threat = LpBall("linf", eps)
    y = int(model(x0).argmax(1))
    c = torch.zeros(1, 2, 3, dtype=torch.float64)
    for r, t in enumerate(j for j in range(3) if j != y):
        c[0, r, y], c[0, r, t] = 1.0, -1.0
    spec = Spec(c, torch.zeros(1, 2, dtype=torch.float64))
    bounds = crown_layer_bounds(network, x0, threat, rounding=True)
    root = alpha_crown(network, x0, threat, spec.C, spec.d, steps=10, bounds=bounds)
    return network, x0, threat, spec, root


def _refine(network: Network, x0: torch.Tensor, threat: LpBall, spec: Spec,
            root: AlphaResult, seconds: float = 4.0) -> refine_module.Refinement:
    return refine_bounds(network, x0, threat, spec.C, spec.d, root, BaB(),
                         deadline=time.perf_counter() + seconds, alpha_steps=10)


@pytest.mark.parametrize("seed", [0, 1])
def test_refined_bounds_are_sound_and_inside_the_start(seed: int) -> None:
    network, x0, threat, spec, root = _setup(seed, 0.15)
    refined = _refine(network, x0, threat, spec, root)
    assert refined.layers, "nothing was refined: the test needs unstable deeper neurons"
    lo_in, hi_in = threat.input_bounds(x0)
    gen = torch.Generator().manual_seed(seed + 10)
    pts = lo_in + (hi_in - lo_in) * torch.rand(20000, 6, generator=gen, dtype=torch.float64)
    pts = torch.cat([pts, torch.where(torch.rand(4000, 6, generator=gen) < 0.5, lo_in, hi_in)])
    z = pts
    for k, op in enumerate(network.ops):
        lo, hi = refined.alpha.bounds[k]
        lo0, hi0 = root.bounds[k]
        assert bool((lo >= lo0).all()) and bool((hi <= hi0).all())  # never looser
        assert bool((z >= lo - 1e-9).all()) and bool((z <= hi + 1e-9).all())  # sound
        z = op.forward(z)
    # the property's rows: refinement's alpha-CROWN bound is a lower bound at every point
    values = spec.apply(network.forward(pts))
    assert bool((refined.alpha.lower[0] <= values.min(0).values + 1e-9).all())


def test_refined_bounds_bracket_the_exact_extremes_and_tighten() -> None:
    network, x0, threat, spec, root = _setup(0, 0.15)
    refined = _refine(network, x0, threat, spec, root, seconds=6.0)
    k = refinable(network)[0]
    lo0, hi0 = (b.reshape(-1) for b in root.bounds[k])
    lo, hi = (b.reshape(-1) for b in refined.alpha.bounds[k])
    unstable = ((lo0 < 0) & (hi0 > 0)).nonzero().flatten()[:6]
    assert unstable.numel() >= 3
    cut = Network(network.ops[:k], network.input_shape, network.module)
    rows = torch.zeros(1, 2 * unstable.numel(), lo.numel(), dtype=torch.float64)
    for r, i in enumerate(unstable.tolist()):
        rows[0, 2 * r, i], rows[0, 2 * r + 1, i] = 1.0, -1.0
    exact = MILP(time_limit=30, early_stop=False, skip_verified=False)._bound(
        cut, x0, threat, Spec(rows, torch.zeros(rows.shape[:2], dtype=torch.float64)))
    low, high = exact.lower[0, 0::2], -exact.lower[0, 1::2]  # the solver's (gap) bounds
    # the values the solver's points reach: the refined bounds must contain them
    reached = cut.forward(exact.candidates[0]).reshape(rows.shape[1], -1)
    reach_lo = reached[0::2].gather(1, unstable.unsqueeze(1)).squeeze(1)
    reach_hi = reached[1::2].gather(1, unstable.unsqueeze(1)).squeeze(1)
    assert bool((reach_lo <= low + 1e-3).all()) and bool((reach_hi >= high - 1e-3).all())
    assert bool((lo[unstable] <= reach_lo + 1e-9).all())
    assert bool((hi[unstable] >= reach_hi - 1e-9).all())
    # where alpha-CROWN left a gap to the exact extremes, refinement closes a good part of it
    gap = (low - lo0[unstable]) + (hi0[unstable] - high)
    closed = (lo[unstable] - lo0[unstable]) + (hi0[unstable] - hi[unstable])
    assert float(gap.sum()) > 0.05
    assert float(closed.sum()) >= 0.3 * float(gap.sum())


@pytest.mark.parametrize("bad", [100.0, float("nan")])
def test_an_inconsistent_search_keeps_the_old_bounds_with_a_warning(
        monkeypatch: pytest.MonkeyPatch, bad: float) -> None:
    network, x0, threat, spec, root = _setup(0, 0.15)
    real = BaB._bound

    def wrong(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        out = real(self, *args, **kwargs)
        # a "proof" far above what points of the set reach, or not a number at all
        out.lower = out.lower + bad
        return out

    monkeypatch.setattr(BaB, "_bound", wrong)
    with pytest.warns(RuntimeWarning, match="internal check failed"):
        refined = _refine(network, x0, threat, spec, root, seconds=2.0)
    assert not refined.layers
    for (lo, hi), (lo0, hi0) in zip(refined.alpha.bounds, root.bounds, strict=True):
        assert torch.equal(lo, lo0) and torch.equal(hi, hi0)


def test_bab_with_refinement_agrees_with_the_milp(monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_mlp(5, (8, 20, 20, 20, 4))
    x = torch.rand(5, 8, generator=torch.Generator().manual_seed(5))
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.1)
    exact = MILP(early_stop=False, skip_verified=False)(model, x, y, threat)
    # no probing search: every sample with an open row goes through refinement
    monkeypatch.setattr(bab_module, "_PROBE", 0.0)
    monkeypatch.setattr(bab_module, "_PROBE_LAST", 0.0)
    out = BaB(time_limit=10, refine=0.7)(model, x, y, threat)
    assert out.stats["refinements"], "no sample was refined: the test needs open rows"
    for s, refined in out.stats["refinements"].items():
        assert refined.layers and out.stats["root_bounds"][s] is refined.alpha.bounds
    assert_agrees_with_milp(out, exact)


def _small_cnn(seed: int, scale: float) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 2), nn.ReLU(),
                          nn.Flatten(), nn.Linear(18, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model


def test_bab_on_a_cnn_refines_its_dense_layers_only_and_agrees_with_the_milp(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the conv ReLU's feature map is small (18 neurons) but not flat: refining it crashed
    model = _small_cnn(3, 3.0)  # at eps 0.2 CROWN leaves rows open that the MILP proves
    network = from_module(model, (1, 6, 6))
    conv_relu, dense_relu = network.relu_indices[1:]
    assert refinable(network) == [dense_relu] and conv_relu not in refinable(network)
    x = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.2)
    exact = MILP(early_stop=False, skip_verified=False)(model, x, y, threat)
    monkeypatch.setattr(bab_module, "_PROBE", 0.0)
    monkeypatch.setattr(bab_module, "_PROBE_LAST", 0.0)
    out = BaB(time_limit=3, refine=0.7, early_stop=False)(model, x, y, threat)
    assert out.stats["refinements"], "no sample was refined: the test needs open rows"
    assert_agrees_with_milp(out, exact)


def test_graphs_and_single_relu_layers_are_not_refined_and_bad_shares_raise() -> None:
    deep = from_module(make_mlp(0, (6, 8, 8, 3)), (6,))
    assert refinable(deep) == deep.relu_indices[1:] and len(refinable(deep)) == 1
    assert refinable(from_module(make_mlp(0, (6, 8, 3)), (6,))) == []
    assert refinable(as_graph(deep)) == []
    wide = from_module(make_mlp(0, (6, 8, 1100, 3)), (6,))  # a layer over _MAX_NEURONS
    assert refinable(wide) == []
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(InvalidParameterError, match="refine"):
            BaB(refine=bad)


def test_rounds_refine_only_the_rows_left_open(monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_mlp(5, (8, 20, 20, 20, 4))
    x = torch.rand(3, 8, generator=torch.Generator().manual_seed(5))
    calls: list[int] = []
    real = bab_module.refine_bounds

    def spy(network, x0, threat, c, d, root, bab, **kwargs):  # type: ignore[no-untyped-def]
        assert root.lower.shape == c.shape[:2]  # the root's rows are the rows refined
        calls.append(c.shape[1])
        return real(network, x0, threat, c, d, root, bab, **kwargs)

    monkeypatch.setattr(bab_module, "refine_bounds", spy)
    monkeypatch.setattr(bab_module, "_PROBE", 0.0)
    monkeypatch.setattr(bab_module, "_PROBE_LAST", 0.0)
    monkeypatch.setattr(bab_module, "_ROUNDS", 2)
    out = BaB(time_limit=6, refine=0.5)(model, x, model(x).argmax(1), LpBall("linf", 0.1))
    assert calls, "nothing was refined: the test needs open rows"
    assert len(calls) <= 2 * 3  # at most two rounds per sample
    refined = out.stats["refinements"]
    for s, log in enumerate(out.stats["samples"]):
        passes = len(refined[s].layers) if s in refined else 0
        assert all(r["refine_passes"] == passes for r in log)
        # every pass was over a refinable node, and the samples refined are those with calls
        assert s not in refined or {p["node"] for p in refined[s].layers} <= set(
            refine_module.refinable(from_module(model, (8,))))
    assert len(refined) <= len(calls)


@pytest.mark.parametrize(("seed", "eps"), [(0, 0.15), (1, 0.15), (2, 0.3)])
def test_the_milp_try_decides_rows_as_the_exact_milp_does(seed: int, eps: float) -> None:
    network, x0, threat, spec, root = _setup(seed, eps)
    exact = MILP(early_stop=False, skip_verified=False)._bound(
        network, x0, threat, spec, layer_bounds=root.bounds)
    states = [Row() for _ in range(spec.num_rows)]
    order = list(range(spec.num_rows))
    tried = decide_by_milp(network, x0, threat, spec.C[0], spec.d[0], root.bounds, order,
                           states, time.perf_counter() + 60)
    assert list(tried) == order  # each row decided: none ends the try
    lo_in, hi_in = threat.input_bounds(x0)
    for r, bound in tried.items():
        minimum = float(exact.lower[0, r])
        assert bound <= minimum + 1e-6  # a lower bound of the exact minimum
        if minimum > 1e-3:
            assert bound > 0.0 and states[r].best_value >= minimum - 1e-6
        if minimum < -1e-3:  # a counterexample, re-evaluated through the network
            point = states[r].best_point
            assert point is not None and states[r].best_value < 0
            assert bool((point >= lo_in[0]).all()) and bool((point <= hi_in[0]).all())
            with torch.no_grad():
                value = float(spec.apply(network.forward(point.unsqueeze(0)))[0, r])
            assert value == pytest.approx(states[r].best_value, abs=1e-12)
    # no time left: nothing is tried
    assert decide_by_milp(network, x0, threat, spec.C[0], spec.d[0], root.bounds, order,
                          [Row() for _ in order], time.perf_counter() - 1.0) == {}


def test_bab_tries_the_milp_on_refined_bounds_and_agrees(
        monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_mlp(5, (8, 20, 20, 20, 4))
    x = torch.rand(5, 8, generator=torch.Generator().manual_seed(5))
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.1)
    exact = MILP(early_stop=False, skip_verified=False)(model, x, y, threat)
    calls: list[list[int]] = []
    real = bab_module.decide_by_milp

    def spy(network, x0, threat, c, d, bounds, order, states, until):  # type: ignore[no-untyped-def]
        calls.append(list(order))
        return real(network, x0, threat, c, d, bounds, order, states, until)

    def unrefined(network, x0, threat, c, d, root, bab, **kwargs):  # type: ignore[no-untyped-def]
        # a "refinement" that keeps the root: the rows open at the root go to the MILP
        return refine_module.Refinement(root, layers=[{"node": 0}])

    monkeypatch.setattr(bab_module, "decide_by_milp", spy)
    monkeypatch.setattr(bab_module, "refine_bounds", unrefined)
    monkeypatch.setattr(bab_module, "_PROBE", 0.0)
    monkeypatch.setattr(bab_module, "_PROBE_LAST", 0.0)
    out = BaB(time_limit=10, refine=0.5, milp=0.9)(model, x, y, threat)
    assert any(calls), "the MILP was never tried: the test needs rows open at the root"
    assert bool((out.lower <= exact.lower + 1e-5).all())
    tried = 0
    for i in range(5):
        assert out.verdict[i] in (exact.verdict[i], Verdict.UNKNOWN)
        for row in out.stats["samples"][i]:
            if "milp" in row:
                tried += 1
                if row["status"] == "verified":
                    assert row["lower"] > 0
                    assert float(exact.lower[i, row["row"]]) >= row["lower"] - 1e-6
    assert tried >= 1  # the rows it tried log the MILP's status
    assert sum(v is e for v, e in zip(out.verdict, exact.verdict, strict=True)) == 5
    for bad in (-0.1, 1.5):
        with pytest.raises(InvalidParameterError, match="milp"):
            BaB(milp=bad)


def test_the_search_finishes_a_row_with_the_same_milp() -> None:
    # BaB's fallback when linear regions keep coming: the MILP on the root's bounds
    from advrobust.exact._search import RowSearch

    network, x0, threat, spec, root = _setup(1, 0.15)
    exact = MILP(early_stop=False, skip_verified=False)._bound(
        network, x0, threat, spec, layer_bounds=root.bounds)
    search = RowSearch(network, x0, threat, spec.C, spec.d, BaB(), root)
    for r in range(spec.num_rows):
        bound = search.finish_with_milp(r, time.perf_counter() + 60)
        minimum = float(exact.lower[0, r])
        assert bound <= minimum + 1e-6 and "milp" in search.rows[r].log
        assert (bound > 0) if minimum > 1e-3 else (search.rows[r].best_value < 0)
    assert search.finish_with_milp(0, time.perf_counter() - 1.0) == float("-inf")


@pytest.mark.parametrize("twin", [True, False])
def test_the_descents_offer_points_of_the_set_at_the_networks_own_values(
        monkeypatch: pytest.MonkeyPatch, twin: bool) -> None:
    """The search's signed-gradient descents step on the float32 copy of a chain (``twin``)
    or on the network itself; either way every point they offer lies in the set and carries
    the value the float64 network computes there."""
    from advrobust.exact import _candidates
    from advrobust.exact._search import RowSearch

    network, x0, threat, spec, root = _setup(1, 0.15)
    stepped: list[torch.dtype] = []  # what the twin's ops computed in
    real = _candidates.float32_chain

    class Seen:
        def __init__(self, op: object) -> None:
            self.op = op

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            stepped.append(z.dtype)
            return self.op.forward(z)  # type: ignore[attr-defined, no-any-return]

    def copy(net: Network) -> list | None:
        ops = real(net)
        assert ops is not None  # a chain with a float32 copy
        return [Seen(op) for op in ops] if twin else None

    monkeypatch.setattr(_candidates, "float32_chain", copy)
    search = RowSearch(network, x0, threat, spec.C, spec.d, BaB(), root)
    low, up = threat.input_bounds(x0)
    rows = torch.arange(spec.num_rows)
    starts = low + (up - low) * torch.rand((spec.num_rows,) + tuple(x0.shape[1:]),
                                           generator=torch.Generator().manual_seed(0),
                                           dtype=x0.dtype)
    search._descend(starts, rows, low, up)
    assert (stepped and set(stepped) == {torch.float32}) if twin else not stepped
    for r, row in enumerate(search.rows):
        point = row.best_point
        assert point is not None and point.dtype == x0.dtype
        assert bool(((point >= low[0]) & (point <= up[0])).all())
        value = float((network.forward(point[None]) * spec.C[0, r]).sum() + spec.d[0, r])
        assert row.best_value == pytest.approx(value, rel=1e-12, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from([-2.0, 0.0, 0.5, 1.0, math.inf,
                                                              math.nan])),
                min_size=1, max_size=30))
def test_each_rows_lowest_value_is_picked_first_on_ties(pairs: list[tuple[int, float]]) -> None:
    """Per row present: the position of its lowest value, the first on ties, NaN lowest."""
    from advrobust.exact._candidates import _lowest_per_row

    row = torch.tensor([r for r, _ in pairs])
    values = torch.tensor([v for _, v in pairs], dtype=torch.float64)
    rows, pick = _lowest_per_row(values, row)
    assert rows.tolist() == sorted({r for r, _ in pairs})
    for r, k in zip(rows.tolist(), pick.tolist(), strict=True):
        mine = [i for i, (q, _) in enumerate(pairs) if q == r]
        key = [-math.inf if math.isnan(pairs[i][1]) else pairs[i][1] for i in mine]
        assert k == mine[key.index(min(key))]


@pytest.mark.parametrize("twin", [True, False])
def test_each_row_is_offered_its_lowest_corner_at_the_networks_own_value(
        monkeypatch: pytest.MonkeyPatch, twin: bool) -> None:
    """The domains' corners: each row gets the corner of its domains where the network is
    lowest (chosen in float32 with the copy: lowest up to float32 rounding), offered with
    the float64 network's value there; no other row gets one."""
    from advrobust.exact import _candidates
    from advrobust.exact._search import RowSearch

    network, x0, threat, spec, root = _setup(1, 0.15)
    if not twin:
        monkeypatch.setattr(_candidates, "float32_chain", lambda net: None)
    gen = torch.Generator().manual_seed(1)
    low, up = threat.input_bounds(x0)
    for row in (torch.tensor([1, 0, 1, 1, 0, 1, 1]), torch.tensor([1, 1, 1])):
        search = RowSearch(network, x0, threat, spec.C, spec.d, BaB(attack_steps=0), root)
        coef = torch.randn((row.numel(),) + tuple(x0.shape[1:]), generator=gen,
                           dtype=x0.dtype)
        search._offer_corners(coef, row)
        corners = torch.where(coef >= 0, low, up)
        values = (network.forward(corners) * spec.C[0, row]).sum(1) + spec.d[0, row]
        for r, state in enumerate(search.rows):
            mine = (row == r).nonzero().flatten()
            if not mine.numel():
                assert state.best_point is None
                continue
            point = state.best_point
            assert point is not None and point.dtype == x0.dtype
            assert bool((corners[mine] == point).all(1).any())  # one of the row's own corners
            value = float((network.forward(point[None]) * spec.C[0, r]).sum() + spec.d[0, r])
            assert state.best_value == pytest.approx(value, rel=1e-12, abs=1e-12)
            slack = (1e-4 if twin else 1e-12) * (1 + float(values[mine].abs().max()))
            assert value <= float(values[mine].min()) + slack


@pytest.mark.parametrize("module", [True, False])
def test_the_threshold_attack_reports_values_the_network_takes_inside_the_set(
        module: bool) -> None:
    """The attack's steps run on the float32 copy when the network has a module (else in
    float64); what it reports are float64 values at points of the box, inside the exact
    extremes of each neuron (the exact MILP's)."""
    network, x0, threat, _, _ = _setup(0, 0.15)
    k = refinable(network)[0]
    cut = Network(network.ops[:k], network.input_shape, network.module if module else None)
    assert (refine_module.float32_chain(cut) is not None) == module
    idx = torch.arange(6)
    lo, hi, points = refine_module._attack(cut, x0, threat, idx)
    lo_in, hi_in = threat.input_bounds(x0)
    assert points.dtype == torch.float64 and points.shape == (12, 6)
    assert bool(((points >= lo_in) & (points <= hi_in)).all())
    z = cut.forward(points)
    assert torch.equal(lo, z[torch.arange(6), idx]) and torch.equal(hi, z[6 + torch.arange(6), idx])
    assert bool((lo <= hi).all())
    rows = torch.zeros(1, 12, z.shape[1], dtype=torch.float64)
    rows[0, torch.arange(6), idx], rows[0, 6 + torch.arange(6), idx] = 1.0, -1.0
    exact = MILP(time_limit=30, early_stop=False, skip_verified=False)._bound(
        cut, x0, threat, Spec(rows, torch.zeros(1, 12, dtype=torch.float64)))
    assert bool((lo >= exact.lower[0, :6] - 1e-6).all())
    assert bool((hi <= -exact.lower[0, 6:] + 1e-6).all())


class _Stop(Exception):
    pass


def test_a_long_time_limit_does_not_delay_the_first_refinement(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The first round spans at most ``_ROUND_SECONDS``: with a 600-s limit the first
    refinement gets half of that round, not half of the 600 s (the refined root arrived at
    ~175 s of 300 where a 30-s limit had it at ~15 s)."""
    model = make_mlp(5, (8, 20, 20, 20, 4))
    x = torch.rand(3, 8, generator=torch.Generator().manual_seed(5))
    seen: list[tuple[float, float]] = []
    start = time.perf_counter()

    def spy(network, x0, threat, c, d, root, bab, *, deadline, **kwargs):  # type: ignore[no-untyped-def]
        now = time.perf_counter()
        seen.append((now - start, deadline - now))
        raise _Stop

    monkeypatch.setattr(bab_module, "refine_bounds", spy)
    monkeypatch.setattr(bab_module, "_ROUND_SECONDS", 2.0)
    monkeypatch.setattr(bab_module, "_PROBE", 0.0)  # refine at once (the search would decide)
    monkeypatch.setattr(bab_module, "_PROBE_LAST", 0.0)
    with pytest.raises(_Stop):
        BaB(time_limit=600, refine=0.5)(model, x, model(x).argmax(1), LpBall("linf", 0.1))
    (began, length), = seen
    assert began < 60.0  # after the root alone
    assert 0.0 < length <= 0.5 * 2.0 + 1e-6  # half of what is left of the 2-s round


def test_a_round_is_never_shorter_than_the_one_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another round starts only if it can span as long as the last one (its span: the time
    left, at most ``_ROUND_SECONDS`` x ``_ROUND_GROWTH`` to its number): a refinement's gain
    grows faster than its time, so the seconds of a short last round go to the search."""
    monkeypatch.setattr(bab_module, "_ROUND_SECONDS", 2.0)
    monkeypatch.setattr(bab_module, "_ROUND_GROWTH", 3.0)
    another = bab_module._another_round
    assert another(0, 2.0, 10.0, 100.0)  # the second round may span 6 s
    assert another(0, 2.0, 10.0, 12.0)  # 2 s left: as long as the first
    assert not another(0, 2.0, 10.0, 11.9)  # 1.9 s left: shorter
    assert another(1, 6.0, 20.0, 26.0) and not another(1, 6.0, 20.0, 25.5)
    # the growth caps the next round, not the deadline: 18 s at most after a round of 20 s
    assert not another(1, 20.0, 0.0, 1000.0)



@pytest.mark.parametrize(("widths", "eps", "share"), [((8, 20, 20, 20, 4), 0.1, 0.85),
                                                       ((8, 40, 40, 4), 0.3, 0.5)])
def test_the_default_refinement_share_follows_the_refined_layers(
        monkeypatch: pytest.MonkeyPatch, widths: tuple[int, ...], eps: float,
        share: float) -> None:
    """``refine=None``: 0.85 of the round left after the probe where more than one layer is
    refined (their gains compound), 0.5 where one is (the search after it needs the time)."""
    model = make_mlp(5, widths)
    x = torch.rand(3, 8, generator=torch.Generator().manual_seed(5))
    network = from_module(model, (8,))
    assert (len(refinable(network)) > 1) == (share > 0.5)
    seen: list[float] = []

    def spy(network, x0, threat, c, d, root, bab, *, deadline, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(deadline - time.perf_counter())
        raise _Stop

    monkeypatch.setattr(bab_module, "refine_bounds", spy)
    monkeypatch.setattr(bab_module, "_ROUND_SECONDS", 4.0)
    monkeypatch.setattr(bab_module, "_PROBE", 0.0)
    monkeypatch.setattr(bab_module, "_PROBE_LAST", 0.0)
    with pytest.raises(_Stop):
        BaB(time_limit=600)(model, x, model(x).argmax(1), LpBall("linf", eps))
    (length,) = seen
    # the round's 4 s less what its start took: well above the other share's 4 x 0.5
    assert 4.0 * (share - 0.25) < length <= 4.0 * share + 1e-6


def _chain(seed: int, hidden: int, target: int) -> tuple[
        Network, torch.Tensor, LpBall, torch.Tensor, torch.Tensor, AlphaResult]:
    """A chain of ``hidden`` refinable layers (16 neurons each), a sample, the row ``f_0 -
    f_target`` and its alpha-CROWN root (two steps)."""
    model = make_mlp(seed, (6,) + (16,) * (hidden + 1) + (3,), torch.float64)
    network = from_module(model, (6,))
    x0 = torch.rand(1, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    threat = LpBall("linf", 0.1)
    c = torch.zeros(1, 1, 3, dtype=torch.float64)
    c[0, 0, 0], c[0, 0, target] = 1.0, -1.0
    d = torch.zeros(1, 1, dtype=torch.float64)
    root = alpha_crown(network, x0, threat, c, d, steps=2,
                       bounds=crown_layer_bounds(network, x0, threat, rounding=True))
    return network, x0, threat, c, d, root


@pytest.mark.parametrize("used", [1.0, 0.1])
@pytest.mark.parametrize("hidden", [3, 4])
def test_on_deep_chains_the_first_refined_layers_get_the_larger_shares(
        monkeypatch: pytest.MonkeyPatch, used: float, hidden: int) -> None:
    """Where more than ``_FRONT_ABOVE`` (3) layers are refined, each one's share of the time is
    ``_FRONT`` times the next one's (a layer's refined bounds tighten every layer above it, so
    the first ones' gains compound); with 3 the shares are equal. A layer that ends early
    leaves its time to the layers after it. Seen on a clock the layers move."""
    network, x0, threat, c, d, root = _chain(3, hidden, 1)
    assert len(refinable(network)) == hidden
    clock = [100.0]
    spans: list[float] = []

    def layer(network, x0, threat, bounds, k, bab, until, result, **kw):  # type: ignore[no-untyped-def]
        spans.append(until - clock[0])
        clock[0] += used * (until - clock[0])

    monkeypatch.setattr(refine_module, "time", type("Clock", (), {
        "perf_counter": staticmethod(lambda: clock[0])}))
    monkeypatch.setattr(refine_module, "_refine_layer", layer)
    out = refine_bounds(network, x0, threat, c, d, root, BaB(), deadline=130.0 + root.seconds)
    assert out.alpha is root and not out.layers  # nothing refined: the root comes back
    assert refine_module._FRONT_ABOVE == 3 and refine_module._FRONT > 1.0
    front = refine_module._FRONT if hidden > 3 else 1.0
    assert len(spans) == hidden
    full = 30.0 / sum(front ** -i for i in range(hidden))
    if used == 1.0:  # the whole 30 s, each layer's span ``front`` times the next one's
        assert sum(spans) == pytest.approx(30.0)
        assert spans == pytest.approx([full / front ** i for i in range(hidden)])
    else:  # what the first layers leave goes to the later ones
        assert spans[0] == pytest.approx(full)
        assert all(b > a / front for a, b in zip(spans, spans[1:], strict=False))


@pytest.mark.parametrize("hidden", [3, 5])
def test_an_only_refinement_of_a_deep_chain_leaves_out_its_last_layer_and_the_descents(
        monkeypatch: pytest.MonkeyPatch, hidden: int) -> None:
    """``only=True`` (a sample's only refinement) refines every refinable layer but the last on
    a deep chain (more than ``_FRONT_ABOVE`` refinable layers; the shares of the rest still
    front-loaded), its searches without descents; on a shallower chain, and with
    ``only=False``, every layer is refined, with descents."""
    network, x0, threat, c, d, root = _chain(4, hidden, 2)
    nodes = refinable(network)
    assert len(nodes) == hidden
    clock = [100.0]

    def run(only: bool) -> tuple[list[int], list[float], set[bool]]:
        seen: list[int] = []
        spans: list[float] = []
        descents: set[bool] = set()

        def layer(network, x0, threat, bounds, k, bab, until, result, descend,  # type: ignore[no-untyped-def]
                  weights, short):
            # the property's weights go with the last ReLU layer only
            assert (weights is not None) == (k == network.relu_indices[-1])
            assert short == only  # the only refinement's search settings (every layer)
            seen.append(k)
            spans.append(until - clock[0])
            descents.add(descend)
            clock[0] = until

        monkeypatch.setattr(refine_module, "_refine_layer", layer)
        refine_bounds(network, x0, threat, c, d, root, BaB(), only=only,
                      deadline=clock[0] + 30.0 + root.seconds)
        return seen, spans, descents

    monkeypatch.setattr(refine_module, "time", type("Clock", (), {
        "perf_counter": staticmethod(lambda: clock[0])}))
    assert run(False)[0] == nodes and run(False)[2] == {True}
    seen, spans, descents = run(True)
    deep = hidden > refine_module._FRONT_ABOVE
    assert seen == (nodes[:-1] if deep else nodes)
    assert descents == {not deep}
    front = refine_module._FRONT if deep else 1.0
    assert spans == pytest.approx([spans[0] / front ** i for i in range(len(seen))])


@pytest.mark.parametrize("branching", ["fsb", "babsr", 7])
def test_an_only_refinement_searches_with_fewer_steps_and_more_candidates(
        monkeypatch: pytest.MonkeyPatch, branching: str | int) -> None:
    """The neurons' searches of a sample's only refinement take at most ``_ONLY_BETA_STEPS``
    Adam steps per batch and rank ``_ONLY_FSB_K`` candidates where the caller ranks FSB's
    default (a caller's other branching is kept), and the last layer's passes search
    ``_ONLY_LAST_SHARE`` of its neurons; in other rounds the caller's settings and
    ``_LAST_SHARE``."""
    network, x0, threat, c, d, root = _chain(4, 2, 2)
    k = refinable(network)[0]
    seen: list[tuple[int, int, float]] = []

    def node(network, x0, threat, bounds, k, inner, weights, workers,  # type: ignore[no-untyped-def]
             share):
        seen.append((inner.beta_steps, inner._fsb_k, share))
        return None  # nothing to refine: the layer ends

    monkeypatch.setattr(refine_module, "_refine_node", node)
    bab = BaB(beta_steps=5, branching=branching)
    caller_k = bab._fsb_k
    for short in (False, True):
        refine_module._refine_layer(network, x0, threat, root.bounds, k, bab,
                                    time.perf_counter() + 60.0, Refinement(root), short=short)
    only_k = refine_module._ONLY_FSB_K if branching == "fsb" else caller_k
    assert seen == [(5, caller_k, refine_module._LAST_SHARE),
                    (refine_module._ONLY_BETA_STEPS, only_k, refine_module._ONLY_LAST_SHARE)]


@pytest.mark.parametrize("round_seconds", [0.3, 10.0])
def test_only_a_round_no_other_can_follow_is_an_only_refinement(
        monkeypatch: pytest.MonkeyPatch, round_seconds: float) -> None:
    """BaB asks for ``only=True`` when its first round spans the whole time limit (no round
    after it could be as long), for ``only=False`` in every round when others can follow (a
    refinement stub that tightens nothing keeps the rows open)."""
    model = make_mlp(5, (8, 20, 20, 20, 4))
    x = torch.rand(3, 8, generator=torch.Generator().manual_seed(5))
    flags: dict[float, list[bool]] = {}

    def stub(network, x0, threat, c, d, root, bab, **kwargs):  # type: ignore[no-untyped-def]
        flags.setdefault(float(x0.sum()), []).append(kwargs["only"])
        return refine_module.Refinement(root, layers=[{"node": 0}])

    monkeypatch.setattr(bab_module, "refine_bounds", stub)
    monkeypatch.setattr(bab_module, "_PROBE", 0.0)
    monkeypatch.setattr(bab_module, "_PROBE_LAST", 0.0)
    monkeypatch.setattr(bab_module, "_ROUNDS", 3)
    monkeypatch.setattr(bab_module, "_ROUND_SECONDS", round_seconds)
    monkeypatch.setattr(bab_module, "_ROUND_GROWTH", 1.0)
    BaB(time_limit=1.5, refine=0.5, milp=0.0)(model, x, model(x).argmax(1),
                                               LpBall("linf", 0.1))
    assert flags, "nothing was refined: the test needs open rows"
    if round_seconds > 1.5:  # one round spans the whole limit
        assert all(seq == [True] for seq in flags.values())
    else:
        assert any(len(seq) >= 2 for seq in flags.values()), "no second round: needs open rows"
        assert not any(any(seq) for seq in flags.values())


@pytest.mark.parametrize(("round_seconds", "refine"), [(10.0, None), (0.3, None), (10.0, 0.5)])
def test_an_only_round_probes_a_tenth_and_refines_for_most_of_the_rest(
        monkeypatch: pytest.MonkeyPatch, round_seconds: float, refine: float | None) -> None:
    """Where no round after the first could be as long (the sample's only refinement), the
    probe search has ``_PROBE_LAST`` of the span and the refinement (a chain with more than
    one refinable layer, default shares) ``_REFINE_DEEP_ONLY`` of the rest; in rounds that
    others follow ``_PROBE`` and ``_REFINE_DEEP``; a share the caller sets is kept; a later
    round that no round could follow as long (the last) probes for ``_PROBE_LAST`` too. Seen
    on a clock that the stub search and refinement move to their deadlines."""
    from advrobust.exact._candidates import Row

    model = make_mlp(5, (8, 20, 20, 20, 4))
    x = torch.rand(1, 8, generator=torch.Generator().manual_seed(5))
    clock = [1000.0]
    probes: list[float] = []
    shares: list[float] = []

    class Search:
        def __init__(self, network, x0, threat, c, d, bab, root):  # type: ignore[no-untyped-def]
            self.n, self.leaves = c.shape[0], 0

        def run(self, deadline, stop_on_counterexample):  # type: ignore[no-untyped-def]
            probes.append(deadline - clock[0])
            clock[0] = deadline
            return torch.full((self.n,), -1.0, dtype=torch.float64), [Row() for _ in
                                                                       range(self.n)]

    def stub(network, x0, threat, c, d, root, bab, *, deadline, **kwargs):  # type: ignore[no-untyped-def]
        shares.append(deadline - clock[0])
        clock[0] = deadline
        return refine_module.Refinement(root, layers=[{"node": 0}])

    monkeypatch.setattr(bab_module, "time", type("Clock", (), {
        "perf_counter": staticmethod(lambda: clock[0])}))
    monkeypatch.setattr(bab_module, "_RowSearch", Search)
    monkeypatch.setattr(bab_module, "refine_bounds", stub)
    monkeypatch.setattr(bab_module, "_ROUND_SECONDS", round_seconds)
    network = from_module(model, (8,))
    assert len(refinable(network)) > 1
    BaB(time_limit=1.5, refine=refine, milp=0.0)(model, x, model(x).argmax(1),
                                                 LpBall("linf", 0.1))
    span = min(1.5, round_seconds)
    only = round_seconds > 1.5
    probe = bab_module._PROBE_LAST if only else bab_module._PROBE
    share = refine if refine is not None else \
        bab_module._REFINE_DEEP_ONLY if only else bab_module._REFINE_DEEP
    assert bab_module._PROBE_LAST < bab_module._PROBE
    assert bab_module._REFINE_DEEP_ONLY > bab_module._REFINE_DEEP
    assert probes[0] == pytest.approx(probe * span)
    assert shares[0] == pytest.approx(share * (1 - probe) * span)
    assert len(shares) == 1 if only else len(shares) >= 2
    if not only:
        # round 2 spans 3 x 0.3 = 0.9 s and ends 0.34 s before the limit: it is the last
        assert len(probes) == 3 and probes[1] == pytest.approx(bab_module._PROBE_LAST * 0.9)
        assert shares[1] == pytest.approx(
            (refine if refine is not None else bab_module._REFINE_DEEP)
            * (1 - bab_module._PROBE_LAST) * 0.9)


@pytest.mark.parametrize("descend", [True, False])
def test_without_descents_the_neurons_searches_take_no_gradient_steps(
        monkeypatch: pytest.MonkeyPatch, descend: bool) -> None:
    """``_refine_layer(descend=False)``: the searches offer their bounds' box corners but take
    no signed-gradient steps from them; with ``descend`` they do (the spy sees them)."""
    from advrobust.exact import _candidates

    network, x0, threat, spec, root = _setup(0, 0.15)
    calls = [0]
    real = _candidates.Candidates._descend

    def count(self, *args):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return real(self, *args)

    monkeypatch.setattr(_candidates.Candidates, "_descend", count)
    bounds = [(lo.clone(), hi.clone()) for lo, hi in root.bounds]
    result = refine_module.Refinement(root)
    k = refinable(network)[-1]
    refine_module._refine_layer(network, x0, threat, bounds, k, BaB(),
                                time.perf_counter() + 1.5, result, descend=descend)
    assert result.layers, "nothing was refined: the test needs unstable neurons"
    assert (calls[0] > 0) == descend


def test_the_last_layers_weights_are_the_rows_through_the_affine_maps_after_it() -> None:
    """The property's coefficients on the last ReLU's outputs: ``c`` through the affine ops
    after it, here the last linear layer's weight (and the gradient of ``c . f`` with respect
    to that ReLU's output)."""
    network, _, _, c, _, _ = _chain(5, 2, 2)
    model = network.module
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    got = refine_module._last_layer_weights(network, c[0])
    assert got.shape == (1, last.in_features)
    assert torch.allclose(got, c[0] @ last.weight, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("share", [refine_module._LAST_SHARE, refine_module._ONLY_LAST_SHARE])
@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 40), rows=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_the_costliest_neurons_are_the_top_share_by_their_rows_babsr_score(
        m: int, rows: int, seed: int, share: float) -> None:
    """``_costliest`` keeps ``ceil(share m)`` of the ``m`` unstable neurons (at least one),
    ascending, and none it leaves out costs any row more than one it keeps (the upper line's
    intercept times the row's coefficient magnitude)."""
    gen = torch.Generator().manual_seed(seed)
    n = m + 5
    lo = -torch.rand(n, generator=gen, dtype=torch.float64) - 0.01
    hi = torch.rand(n, generator=gen, dtype=torch.float64) + 0.01
    unstable = torch.randperm(n, generator=gen)[:m].sort().values
    weights = torch.randn(rows, n, generator=gen, dtype=torch.float64)
    kept = refine_module._costliest(weights, lo, hi, unstable, share)
    assert kept.numel() == max(1, math.ceil(share * m))
    assert kept.tolist() == sorted(kept.tolist())
    assert set(kept.tolist()) <= set(unstable.tolist())
    cost = (weights.abs() * (-hi * lo / (hi - lo))).amax(0)
    left = sorted(set(unstable.tolist()) - set(kept.tolist()))
    if left:
        assert float(cost[left].max()) <= float(cost[kept].min())


def test_a_pass_over_the_last_layer_searches_its_costliest_neurons_and_stays_sound(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Refining the last ReLU layer searches only the costliest unstable neurons (two rows
    each), the others keep their bounds, and every refined bound holds at sampled points of
    the set; the other layers search all their unstable neurons. (An only refinement's
    ``_ONLY_LAST_SHARE`` reaching ``_costliest``: the only-refinement settings test.)"""
    network, x0, threat, c, d, root = _chain(2, 2, 1)
    searched: dict[int, list[int]] = {}
    real = refine_module._costliest

    def spy(weights, lo, hi, unstable, share):  # type: ignore[no-untyped-def]
        kept = real(weights, lo, hi, unstable, share)
        searched.setdefault(int(lo.numel()), []).append(kept.numel())
        return kept

    monkeypatch.setattr(refine_module, "_costliest", spy)
    before = [(lo.clone(), hi.clone()) for lo, hi in root.bounds]
    out = refine_bounds(network, x0, threat, c, d, root, BaB(), deadline=time.perf_counter() + 4)
    last = network.relu_indices[-1]
    passes = {int(p["node"]) for p in out.layers}
    assert last in passes and len(passes) == 2
    for p in out.layers:
        share = 1.0 if p["node"] != last else refine_module._LAST_SHARE
        assert p["searched"] == max(1, math.ceil(share * p["unstable"]))
        assert p["rows"] == 2 * p["searched"]
    assert searched  # the last layer went through _costliest
    lo_in, hi_in = threat.input_bounds(x0)
    gen = torch.Generator().manual_seed(3)
    pts = lo_in + (hi_in - lo_in) * torch.rand((4000, 6), generator=gen, dtype=x0.dtype)
    z = pts
    for i, op in enumerate(network.ops):
        lo, hi = out.alpha.bounds[i]
        assert bool((z >= lo - 1e-9).all() and (z <= hi + 1e-9).all())
        assert bool((lo >= before[i][0] - 1e-12).all() and (hi <= before[i][1] + 1e-12).all())
        z = op.forward(z)


def test_a_last_layer_refined_alone_searches_all_its_unstable_neurons(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the last ReLU layer is the only refinable one it has the refinement's whole time:
    no property weights reach it (every unstable neuron is searched), while with other layers
    before it the weights come with it."""
    given_: dict[int, list[bool]] = {}

    def layer(network, x0, threat, bounds, k, bab, until, result, descend,  # type: ignore[no-untyped-def]
              weights, short):
        given_.setdefault(len(refinable(network)), []).append(weights is not None)

    monkeypatch.setattr(refine_module, "_refine_layer", layer)
    for hidden in (1, 2):
        network, x0, threat, c, d, root = _chain(4, hidden, 2)
        refine_bounds(network, x0, threat, c, d, root, BaB(), deadline=time.perf_counter() + 5)
    assert given_ == {1: [False], 2: [False, True]}
    # a last ReLU layer too wide to refine: its weights are not even built (an identity of
    # its width squared)
    monkeypatch.setattr(refine_module, "_MAX_NEURONS", 20)
    monkeypatch.setattr(refine_module, "_last_layer_weights", lambda *a: pytest.fail("built"))
    model = make_mlp(4, (6, 16, 16, 16, 40, 3), torch.float64)
    network = from_module(model, (6,))
    assert len(refinable(network)) == 2 and network.relu_indices[-1] not in refinable(network)
    x0 = torch.rand(1, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    c = torch.zeros(1, 1, 3, dtype=torch.float64)
    c[0, 0, 0], c[0, 0, 1] = 1.0, -1.0
    d = torch.zeros(1, 1, dtype=torch.float64)
    threat = LpBall("linf", 0.1)
    root = alpha_crown(network, x0, threat, c, d, steps=2,
                       bounds=crown_layer_bounds(network, x0, threat, rounding=True))
    refine_bounds(network, x0, threat, c, d, root, BaB(), deadline=time.perf_counter() + 5)
    assert given_[2] == [False, True, False, False]
