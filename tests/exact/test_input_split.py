"""Branch and bound on the input box (few inputs): sound against the exact MILP, complete (the
row's minimum to the tolerance without early stop), and handing what it leaves open to the
ReLU splits."""

from __future__ import annotations

import pytest
import torch
from tests.exact.conftest import make_mlp
from torch import Tensor, nn

from advrobust.core import LpBall, Verdict
from advrobust.exact import MILP, BaB
from advrobust.exact._domains import _CLOSE
from advrobust.exact.input_split import input_split
from advrobust.network.ir import from_module


def _splits(result) -> set[str]:  # type: ignore[no-untyped-def]
    return {entry.get("split", "relu") for sample in result.stats["samples"] for entry in sample}


@pytest.mark.parametrize("seed", range(6))
def test_input_split_brackets_the_exact_minimum(seed: int) -> None:
    model = make_mlp(seed, (4, 8, 8, 3))
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 4, generator=gen)
    y = model(x).argmax(1)
    threat = LpBall("linf", float(torch.empty(1).uniform_(0.02, 0.25, generator=gen)))
    exact = MILP(early_stop=False, skip_verified=False, time_limit=30)(model, x, y, threat)
    bab = BaB(early_stop=False, time_limit=20)(model, x, y, threat)
    assert _splits(bab) <= {"input"}
    # sound: below every point's margin (the MILP's points) and the MILP's own bound
    assert bool((bab.lower <= exact.upper + 1e-9).all())
    assert bool((bab.lower <= exact.lower + 1e-5).all())
    # complete: a broken row's minimum to the tolerance, a robust row proved
    broken = exact.upper < -1e-3
    assert bool((bab.lower[broken] >= exact.lower[broken] - 2 * _CLOSE).all())
    assert bool((bab.lower[exact.lower > 1e-3] > 0).all())
    for i, verdict in enumerate(bab.verdict):
        if bool((exact.upper[i] < -1e-3).any()):
            assert verdict is Verdict.FALSIFIED
        elif bool((exact.lower[i] > 1e-3).all()):
            assert verdict is Verdict.VERIFIED


@pytest.mark.parametrize("seed", [0, 5, 6])
def test_a_wide_box_is_proved_by_halving_it(seed: int) -> None:
    """A 1-input network shifted so its minimum on [-1, 1] is 0.05 (a grid of 200,001 points):
    CROWN's bound over the whole box is below 0, the input splits prove it."""
    import advrobust.exact.input_split as isp

    net = make_mlp(seed, (1, 8, 8, 1), torch.float64)
    grid = torch.linspace(-1, 1, 200_001, dtype=torch.float64).reshape(-1, 1)
    with torch.no_grad():
        low = float(net(grid).min())
    ir = from_module(net, (1,))
    lo, hi = -torch.ones(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)
    c = torch.ones(1, 1, dtype=torch.float64)
    d = torch.tensor([0.05 - low], dtype=torch.float64)
    root, _ = isp._bound(isp.as_graph(ir), lo, hi, c, d)
    assert float(root) < -0.4  # the whole box's bound proves nothing
    found = input_split(ir, lo, hi, c, d, deadline=float("inf"))
    assert found.rows[0].status == "verified" and found.open == 0 and found.boxes > 1
    assert _CLOSE < float(found.lower[0]) <= 0.05


def test_rows_left_open_go_to_the_relu_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    import advrobust.exact.bab as bab_module

    model = make_mlp(3, (4, 8, 8, 3))
    x = torch.rand(2, 4, generator=torch.Generator().manual_seed(3))
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.2)
    exact = MILP(early_stop=False, skip_verified=False, time_limit=30)(model, x, y, threat)
    monkeypatch.setattr(bab_module, "_INPUT_SHARE", 0.0)  # its share over before it starts
    bab = BaB(early_stop=False, time_limit=20)(model, x, y, threat)
    entries = [e for sample in bab.stats["samples"] for e in sample]
    assert entries  # CROWN leaves rows open on these samples (else nothing below is checked)
    assert {e["status"] for e in entries if e.get("split") == "input"} == {"time_limit"}
    assert any(e.get("split") is None for e in entries)
    assert bool((bab.lower <= exact.upper + 1e-9).all())
    # no input splitting at all with input_split=0
    plain = BaB(early_stop=False, time_limit=20, input_split=0)(model, x, y, threat)
    assert _splits(plain) <= {"relu"}
    assert bool((plain.lower <= exact.upper + 1e-9).all())


@pytest.mark.parametrize(("seed", "elements", "own"), [
    (0, None, False), (1, None, False), (2, None, False), (3, None, False),
    (0, 1, False), (1, 900, False), (2, None, True)])
def test_clipping_keeps_every_point_where_a_live_row_is_low(
        seed: int, elements: int | None, own: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # the clipped box must hold every point of the box where some live row is <= tau (sampled
    # densely, corners included): clipping is what lets a box shrink without a split; with
    # ``elements`` the boxes are bounded one at a time (1) or four at a time (900 = 4.5 boxes
    # of rows +-10 x width 10): each box keeps its own bound and minorant; with ``own`` CROWN's
    # intermediate bounds carry each box's own neurons (the boxes gathered per group)
    import advrobust.exact.input_split as isp
    import advrobust.relax.dag as dag
    from advrobust.exact.input_split import _bound, _clip
    from advrobust.network.graph.graph import as_graph

    if elements is not None:
        monkeypatch.setattr(isp, "_CHUNK_ELEMENTS", elements)
    if own:
        monkeypatch.setattr(dag, "_UNION_ELEMENTS", 0)
        monkeypatch.setattr(dag, "_PAIR_ELEMENTS", 2 * 10 * 30)  # a few boxes a group

    model = make_mlp(seed, (3, 10, 10, 4)).double()
    graph = as_graph(from_module(model, (3,)))
    gen = torch.Generator().manual_seed(seed)
    lo = torch.rand(6, 3, generator=gen, dtype=torch.float64) - 0.5
    hi = lo + 0.6 * torch.rand(6, 3, generator=gen, dtype=torch.float64)
    c = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    with torch.no_grad():  # offsets that leave a few points broken
        mid_out = model((lo + hi) / 2) @ c.T
    d = -mid_out.amin(0)
    raw, coef = _bound(graph, lo, hi, c, d)
    tau = 0.05
    live = raw <= 0  # the rows that may be broken on each box
    new_lo, new_hi = _clip(lo, hi, raw, coef, live, tau)
    assert bool((new_lo >= lo).all()) and bool((new_hi <= hi).all())
    u = torch.rand(6, 4000, 3, generator=gen, dtype=torch.float64)
    u[:, :8] = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=torch.float64)] * 3)
    pts = lo.unsqueeze(1) + (hi - lo).unsqueeze(1) * u
    with torch.no_grad():
        values = model(pts.reshape(-1, 3)).reshape(6, 4000, 4) @ c.T + d
    broken = ((values <= tau) & live.unsqueeze(1)).any(2)
    inside = ((pts >= new_lo.unsqueeze(1)) & (pts <= new_hi.unsqueeze(1))).all(2)
    assert bool(inside[broken].all())
    assert bool(broken.any())  # the check is not vacuous
    assert bool((new_hi - new_lo < hi - lo).any())  # and some box did shrink
    # and the bound is a lower bound at every point
    assert bool((values >= raw.unsqueeze(1) - 1e-9).all())



@pytest.mark.parametrize("seed", [3, 4])
def test_no_coordinate_starves(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The coordinate halved is never narrower than ``_FLOOR / (2 + _REACH)`` of the box's
    widest (the weights are at most ``2 + _REACH`` and at least ``_FLOOR``). Weighed only by
    the worst row's minorant coefficient and gradient, an input the network barely reads (x1
    here, weights 1e-4: its reach is ~0 too) was left wide while the other was halved on and
    on (on seed 3: to 0.3 % of its width; ACAS Xu: ``prop_1`` on N2,2 stalled at -25 with one
    input at 1/2 of its range, one at 1/4000)."""
    import time

    import advrobust.exact.input_split as isp

    net = make_mlp(seed, (2, 32, 32, 32, 1), torch.float64)
    with torch.no_grad():
        net[1].weight[:, 1] *= 1e-4  # net[0] is a Flatten
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-3, 3, 401, dtype=torch.float64)] * 2,
                                      indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        low = float(net(grid).min())
    ratios: list[float] = []
    halves = isp._halves

    def spy(lo, hi, weight):  # type: ignore[no-untyped-def]
        (left_lo, left_hi), right = halves(lo, hi, weight)
        width = (hi - lo).flatten(1)
        chosen = (width * (left_hi != hi).flatten(1)).amax(1)
        ratios.append(float((chosen / width.amax(1)).min()))
        return (left_lo, left_hi), right

    monkeypatch.setattr(isp, "_halves", spy)
    ir = from_module(net, (2,))
    lo, hi = -3 * torch.ones(1, 2, dtype=torch.float64), 3 * torch.ones(1, 2, dtype=torch.float64)
    c = torch.ones(1, 1, dtype=torch.float64)
    d = torch.tensor([-low], dtype=torch.float64)  # the minimum at ~0: a search to the end
    input_split(ir, lo, hi, c, d, time.perf_counter() + 3.0, batch_size=64, max_boxes=20_000,
                early_stop=False)
    assert ratios
    assert min(ratios) >= isp._FLOOR / (2 + isp._REACH)


def test_a_counterexample_on_a_face_is_found_before_any_box_is_bounded() -> None:
    """f(x) = 0.5 - 100 relu(x0 - 0.99) on [0, 1]^3: below 0 only where x0 > 0.995, and flat
    (zero gradient) wherever x0 < 0.99, so a descent from the box's interior stays where it
    starts; the search from the box's faces starts some points at x0 = 1."""
    net = nn.Sequential(nn.Linear(3, 1), nn.ReLU(), nn.Linear(1, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0, 0.0]]))
        net[0].bias.fill_(-0.99)
        net[2].weight.fill_(-100.0)
        net[2].bias.fill_(0.5)
    ir = from_module(net.double(), (3,))
    lo, hi = torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64)
    c, d = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    found = input_split(ir, lo, hi, c, d, deadline=float("inf"))
    row = found.rows[0]
    assert row.status == "falsified" and found.boxes == 0
    assert row.best_point is not None and float(row.best_point[0]) > 0.995
    with torch.no_grad():
        assert float(net.double()(row.best_point.reshape(1, 3))[0, 0]) == row.best_value < 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_row_whose_minimum_is_just_above_the_tolerance_is_proved(seed: int) -> None:
    """The row's minimum is ~3e-4 (the exact MILP's, shifted): above the proof threshold
    ``_CLOSE`` = 2e-4, so the boxes near the minimum are split until their bounds pass it,
    not closed "within the tolerance" of the lowest value found (ACAS Xu property 6's second
    box ended at tolerance so, bound 6e-5 for a lowest value of 2.6e-4)."""
    model = make_mlp(seed, (2, 16, 16, 2), torch.float64)
    x0 = torch.full((1, 2), 0.5, dtype=torch.float64)
    threat = LpBall("linf", 0.5)  # the box [0, 1]^2
    y = model(x0).argmax(1)
    exact = MILP(early_stop=False, skip_verified=False, time_limit=30)(model, x0, y, threat)
    assert float(exact.upper[0, 0] - exact.lower[0, 0]) < 1e-5  # solved (the MIP gaps)
    c = torch.zeros(1, 2, dtype=torch.float64)
    c[0, int(y)], c[0, 1 - int(y)] = 1.0, -1.0
    # the row's minimum in [3e-4 - 1e-5, 3e-4] (the MILP's point is at 3e-4)
    d = torch.tensor([3e-4 - float(exact.upper[0, 0])], dtype=torch.float64)
    ir = from_module(model, (2,))
    found = input_split(ir, torch.zeros(1, 2, dtype=torch.float64),
                        torch.ones(1, 2, dtype=torch.float64), c, d, deadline=float("inf"))
    assert found.rows[0].status == "verified"
    assert _CLOSE < float(found.lower[0]) <= 3e-4 + 1e-12


def test_the_reach_of_a_coordinate_is_its_spread_of_the_first_layer() -> None:
    """Closed form: on an MLP the reach is the first layer's column sums of ``|W|`` (scaled
    to 1), and through the unit-cube map of a VNNLIB box that is no cube, those sums times the
    box's widths: the coordinate the network reads over the widest range weighs most."""
    from advrobust.exact.input_split import _reach
    from advrobust.network.graph.graph import as_graph
    from advrobust.network.vnnlib import parse_vnnlib
    from advrobust.verify import Problem

    net = make_mlp(7, (3, 8, 8, 2), torch.float64)
    weight = net[1].weight.detach()  # net[0] is a Flatten
    sums = weight.abs().sum(0)
    lo, hi = -torch.ones(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64)
    reach = _reach(as_graph(from_module(net, (3,))), lo, hi)
    assert reach.shape == (1, 3)
    assert torch.allclose(reach[0], sums / sums.max(), rtol=1e-9)
    # the same network on the box [0, 0.1] x [0, 1] x [0, 3], posed as a VNNLIB property
    widths = torch.tensor([0.1, 1.0, 3.0], dtype=torch.float64)
    text = "\n".join([f"(declare-const X_{i} Real)" for i in range(3)]
                     + ["(declare-const Y_0 Real)", "(declare-const Y_1 Real)"]
                     + [f"(assert (>= X_{i} 0.0))" for i in range(3)]
                     + [f"(assert (<= X_{i} {float(w)}))" for i, w in enumerate(widths)]
                     + ["(assert (>= Y_1 Y_0))"])
    problem = Problem.from_property(net.float(), parse_vnnlib(text))
    cube_lo, cube_hi = problem.threat.input_bounds(problem.x.double())
    mapped = _reach(as_graph(problem.network), cube_lo, cube_hi)
    spread = sums * widths
    assert torch.allclose(mapped[0], spread / spread.max(), rtol=1e-5)
    # a ReLU on the input itself: the input is the first bounded node, all alike; no ReLU at
    # all: nothing is bounded, all alike
    for model in (nn.Sequential(nn.ReLU(), nn.Linear(3, 2)), nn.Sequential(nn.Linear(3, 2))):
        graph = as_graph(from_module(model.double(), (3,)))
        assert torch.equal(_reach(graph, lo, 3 * hi), torch.ones(1, 3, dtype=torch.float64))


def test_the_halved_coordinate_follows_the_reach_where_it_dominates(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With the reach's weight made overwhelming every box is halved along the coordinate of
    the largest reach times width (the term is wired into the choice, oriented as the first
    layer's spread): on [-1, 1]^3 the one with the largest column sum of ``|W|`` first."""
    import time

    import advrobust.exact.input_split as isp

    net = make_mlp(11, (3, 16, 16, 1), torch.float64)
    sums = net[1].weight.detach().abs().sum(0)
    chosen: list[Tensor] = []
    expected: list[Tensor] = []
    halves = isp._halves

    def spy(lo, hi, weight):  # type: ignore[no-untyped-def]
        (left_lo, left_hi), right = halves(lo, hi, weight)
        chosen.append((left_hi != hi).flatten(1).int().argmax(1))
        expected.append(((hi - lo).flatten(1) * sums).argmax(1))
        return (left_lo, left_hi), right

    monkeypatch.setattr(isp, "_REACH", 1e9)
    monkeypatch.setattr(isp, "_halves", spy)
    ir = from_module(net, (3,))
    lo, hi = -torch.ones(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64)
    c = torch.ones(1, 1, dtype=torch.float64)
    with torch.no_grad():
        low = float(net(lo + (hi - lo) * torch.rand(20_000, 3, dtype=torch.float64)).min())
    d = torch.tensor([-low], dtype=torch.float64)  # near the minimum: boxes get halved
    input_split(ir, lo, hi, c, d, time.perf_counter() + 2.0, batch_size=32, max_boxes=2_000,
                early_stop=False)
    assert chosen and int(chosen[0][0]) == int(sums.argmax())
    assert all(torch.equal(a, b) for a, b in zip(chosen, expected, strict=True))
