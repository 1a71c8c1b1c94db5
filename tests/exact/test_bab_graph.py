"""beta-CROWN branch and bound on graph networks (residual additions, concatenations): it agrees
with the MILP and with dense sampling, its counterexamples are confirmed by the real module, its
graph pass is the chain pass on a chain, and other nonlinear nodes are refused by name."""

from __future__ import annotations

import pytest
import torch
from tests.relax.dag_nets import RandomDag
from tests.relax.test_dag import _sampled_margins
from torch import Tensor, nn

from advrobust.core import VERIFY_TOLERANCE, LpBall, Spec, Verdict
from advrobust.errors import UnsupportedLayerError
from advrobust.exact import MILP, BaB
from advrobust.exact._beta import BetaBounder
from advrobust.network import build_graph
from advrobust.network.ir import from_module
from advrobust.relax import CROWN
from advrobust.relax.alpha_crown import alpha_crown, check_branchable
from advrobust.relax.dag import graph_crown_bounds
from advrobust.verify import Policy, Problem, run


class _Plane(nn.Module):
    """A 2-D-input residual + concat ReLU network (dense sampling covers its input box)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.a, self.b = nn.Linear(2, 8), nn.Linear(8, 8)
        self.c, self.out = nn.Linear(8, 4), nn.Linear(12, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) / max(1, p.shape[-1]) ** 0.5)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        h = h + torch.relu(self.b(h))
        return self.out(torch.cat([h, torch.relu(self.c(h))], dim=1))


def _in_ball(x: Tensor, w: Tensor, threat: LpBall) -> bool:
    return bool(((w - x).abs() <= threat.eps + 1e-12).all() and (w >= threat.lo).all()
                and (w <= threat.hi).all())


def _check_witnesses(model: nn.Module, result: object, x: Tensor, y: Tensor,
                     threat: LpBall) -> None:
    """Every FALSIFIED sample's witness is a point of the set the real module misclassifies."""
    for s, v in enumerate(result.verdict):  # type: ignore[attr-defined]
        if v is Verdict.FALSIFIED:
            w = result.witness[s:s + 1]  # type: ignore[attr-defined]
            assert _in_ball(x[s:s + 1], w, threat)
            with torch.no_grad():
                out = model(w)[0]
            assert float(out[y[s]]) < float(out.masked_fill(
                torch.arange(3) == y[s], -torch.inf).max())


@pytest.mark.parametrize("seed,eps", [(0, 0.15), (2, 0.15)])
def test_bab_on_relu_dags_agrees_with_the_milp_and_sampling(seed: int, eps: float) -> None:
    model = RandomDag(seed, blocks=3, acts=(nn.ReLU,)).double().eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 5, generator=gen, dtype=torch.float64)
    y = model(x).argmax(1)
    threat = LpBall("linf", eps, lo=0.0, hi=1.0)
    bab = BaB(time_limit=20, early_stop=False)(model, x, y, threat)
    milp = MILP(early_stop=False, skip_verified=False)(model, x, y, threat)
    sampled = _sampled_margins(model, x, threat, Spec.margins(y, 3), gen)
    assert bab.verdict == milp.verdict
    assert Verdict.UNKNOWN not in bab.verdict
    # the sandwich: BaB's lower <= the exact minimum (MILP's model-checked point) and every
    # sampled value; the MILP's lower <= BaB's model-checked points
    tol = 1e-6 * (1 + milp.upper.abs())
    assert bool((bab.lower <= milp.upper + tol).all()) and bool((bab.lower <= sampled).all())
    assert bool((milp.lower <= bab.upper + tol).all())
    _check_witnesses(model, bab, x, y, threat)


@pytest.mark.parametrize("seed", [1, 5])
def test_bab_on_a_plane_dag_brackets_the_dense_sampled_minimum(seed: int) -> None:
    model = _Plane(seed).double().eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 2, generator=gen, dtype=torch.float64) * 0.6 + 0.2
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.12, lo=0.0, hi=1.0)
    bab = BaB(time_limit=20, early_stop=False)(model, x, y, threat)
    # dense grid of the box (201 x 201 points): its minimum is >= the true minimum
    t = torch.linspace(-1, 1, 201, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2) * threat.eps
    spec = Spec.margins(y, 3)
    for s in range(4):
        pts = (x[s] + grid).clamp(0, 1)
        with torch.no_grad():
            vals = model(pts) @ spec.C[s].T.double() + spec.d[s].double()
        grid_min = vals.amin(0)
        assert bool((bab.lower[s] <= grid_min + 1e-9).all())
        if bab.verdict[s] is Verdict.VERIFIED:
            assert float(grid_min.min()) > VERIFY_TOLERANCE
        elif float(grid_min.min()) < -1e-3:  # a clear violation: BaB finds one too
            assert bab.verdict[s] is Verdict.FALSIFIED
    assert Verdict.UNKNOWN not in bab.verdict
    _check_witnesses(model, bab, x, y, threat)


def _graph_setup(seed: int) -> tuple[object, Tensor, LpBall, Tensor, Tensor, object]:
    model = RandomDag(seed, blocks=2, acts=(nn.ReLU,)).double().eval()
    graph = build_graph(model, (5,))
    x = torch.rand(1, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y = model(x).argmax(1)
    spec = Spec.margins(y, 3)
    c, d = spec.C.double(), spec.d.double()
    threat = LpBall("linf", 0.2, lo=0.0, hi=1.0)
    with torch.no_grad():
        bounds = graph_crown_bounds(graph, x, threat, rounding=True)
    root = alpha_crown(graph, x, threat, c, d, steps=5, bounds=bounds)
    return graph, x, threat, c, d, root


@pytest.mark.parametrize("seed,tighten", [(3, False), (8, False), (8, True)])
def test_graph_domain_bounds_hold_at_sampled_points_of_the_domain(seed: int,
                                                                   tighten: bool) -> None:
    # (tighten: the ReLU inputs above each domain's splits re-bounded on the domain)
    graph, x, threat, c, d, root = _graph_setup(seed)
    bounder = BetaBounder(graph, x, threat, c[0], d[0], root.bounds, steps=8,  # type: ignore[arg-type]
                          domain_bounds=tighten, inter_alphas=root.inter_alphas)
    keys = bounder.relus
    gen = torch.Generator().manual_seed(seed)
    # every domain splits two unstable neurons of different ReLU nodes, both sides
    cand = [(j, int(n)) for j in keys for n in
            ((root.bounds[bounder.src[j]][0] < 0) & (root.bounds[bounder.src[j]][1] > 0)
             ).flatten().nonzero().flatten()]
    assert len(cand) >= 2
    b = 8
    split = {j: torch.zeros(b, bounder.sizes[k], dtype=torch.int8) for k, j in enumerate(keys)}
    for i in range(b):
        for pick in torch.randperm(len(cand), generator=gen)[:2].tolist():
            j, n = cand[pick]
            split[j][i, n] = 1 if torch.rand(1, generator=gen) < 0.5 else -1
    alpha = {j: root.alphas[j][0, :1].flatten(1).repeat(b, 1) for j in keys}
    beta = {j: torch.zeros_like(v) for j, v in alpha.items()}
    row = torch.arange(b) % c.shape[1]
    with torch.no_grad():
        dom, _ = bounder.bound(split, alpha, beta, row)
    quick = bounder.quick(split, alpha, beta, row)  # beta = 0: alpha-CROWN on the domain
    tight, empty = bounder.tightened(split)
    assert bool((dom.lower >= quick - 1e-9).all())
    # the values of the network at points of the box, with every ReLU input node's value
    pts = x + threat.eps * (torch.rand(20000, 5, generator=gen, dtype=torch.float64) * 2 - 1)
    pts = pts.clamp(0, 1)
    values = [pts]
    with torch.no_grad():
        for node in graph.nodes[1:]:  # type: ignore[attr-defined]
            values.append(node.op.forward(*(values[j] for j in node.inputs)))
    out = values[graph.output]  # type: ignore[attr-defined]
    for i in range(b):
        inside = torch.ones(pts.shape[0], dtype=torch.bool)
        for j in keys:
            z = values[bounder.src[j]].flatten(1)
            s = split[j][i]
            inside &= ((z >= 0) | (s <= 0)).all(1) & ((z <= 0) | (s >= 0)).all(1)
        if bool(inside.any()):
            v = out[inside] @ c[0, int(row[i])] + d[0, int(row[i])]
            assert float(dom.lower[i]) <= float(v.min()) + 1e-9
            for j in keys:  # the domain's node bounds enclose its points
                z = values[bounder.src[j]][inside].flatten(1)
                lo, hi = (v.flatten(1)[i] for v in tight[bounder.src[j]])
                assert bool((z >= lo - 1e-9).all() and (z <= hi + 1e-9).all())


def test_the_graph_pass_is_the_chain_pass_on_a_chain() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                          nn.Linear(8, 3)).double().eval()
    torch.manual_seed(0)
    net = from_module(model, (4,))
    x = torch.rand(1, 4, dtype=torch.float64)
    spec = Spec.margins(model(x).argmax(1), 3)
    threat = LpBall("linf", 0.3, lo=0.0, hi=1.0)
    root = alpha_crown(net, x, threat, spec.C.double(), spec.d.double(), steps=3)
    chain = BetaBounder(net, x, threat, spec.C[0].double(), spec.d[0].double(), root.bounds)
    graph = BetaBounder(net.graph, x, threat, spec.C[0].double(), spec.d[0].double(),
                        root.bounds)
    assert chain.relus == graph.relus and not graph.chain
    b, keys = 4, chain.relus
    gen = torch.Generator().manual_seed(1)
    split = {j: torch.randint(-1, 2, (b, n), generator=gen, dtype=torch.int8)
             for j, n in zip(keys, chain.sizes, strict=True)}
    alpha = {j: torch.rand(b, n, generator=gen, dtype=torch.float64)
             for j, n in zip(keys, chain.sizes, strict=True)}
    beta = {j: torch.rand(b, n, generator=gen, dtype=torch.float64)
            for j, n in zip(keys, chain.sizes, strict=True)}
    row = torch.arange(b) % 2
    # a float64 network ranks split candidates on its float32 copy
    assert chain.fast is not None and graph.fast is not None
    fast, fast_g = chain.quick(split, alpha, beta, row), graph.quick(split, alpha, beta, row)
    chain.fast = graph.fast = None  # now the sound float64 passes
    a, b_ = chain.quick(split, alpha, beta, row), graph.quick(split, alpha, beta, row)
    finite = a.isfinite()
    assert torch.equal(finite, b_.isfinite())
    # the same relaxation; only the rounding allowances differ (root's vs the domain's)
    assert torch.allclose(a[finite], b_[finite], atol=1e-9, rtol=1e-9)
    # the float32 ranking passes are the same relaxation, to float32's precision
    assert torch.allclose(fast[finite], a[finite], atol=1e-4, rtol=1e-4)
    assert torch.allclose(fast_g[finite], a[finite], atol=1e-4, rtol=1e-4)


def test_other_nonlinear_nodes_are_refused_by_name_and_the_cascade_falls_back() -> None:
    model = RandomDag(0, blocks=2, acts=(nn.Sigmoid,)).double().eval()
    graph = build_graph(model, (5,))
    with pytest.raises(UnsupportedLayerError, match="Sigmoid"):
        check_branchable(graph)
    x = torch.rand(2, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.05, lo=0.0, hi=1.0)
    with pytest.raises(UnsupportedLayerError, match="node"):
        BaB(time_limit=5)(model, x, y, threat)
    assert not Problem.of(model, x, y, threat).branchable
    relu = RandomDag(0, blocks=2, acts=(nn.ReLU,)).double().eval()
    assert Problem.of(relu, x, relu(x).argmax(1), threat).branchable


def test_auto_on_a_relu_dag_runs_bab_from_the_cached_crown_bounds() -> None:
    model = RandomDag(2, blocks=3, acts=(nn.ReLU,)).double().eval()
    x = torch.rand(3, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.15, lo=0.0, hi=1.0)
    problem = Problem.of(model, x, y, threat)
    layers = problem.ensure_layer_bounds(torch.arange(3), "test")
    assert layers is not None and len(layers) == len(build_graph(model, (5,)))
    for bounder in (CROWN(), BaB(time_limit=20)):  # from the cache: as from their own pass
        cached = bounder(model, x, y, threat, layer_bounds=layers)
        alone = bounder(model, x, y, threat)
        assert torch.allclose(cached.lower, alone.lower, atol=1e-6, rtol=0)
    bracket = run(Problem.of(model, x, y, threat),
                  Policy(method="auto", time_limit=20, generator=torch.Generator().manual_seed(0)))
    milp = MILP(time_limit=20)(model, x, y, threat)
    assert bracket.verdicts() == milp.verdict
    assert "bab" in bracket.stage_seconds and "milp" not in bracket.stage_seconds


def test_a_linear_region_of_a_graph_is_solved_exactly_by_lp() -> None:
    # Split every unstable ReLU of a DAG to its sign at the clean input: a linear region that
    # holds the clean input. Its LP minimum lies between the domain's beta-CROWN bound and the
    # value at the clean input, and the LP's point is offered as a candidate.
    from advrobust.exact.bab import _RowSearch

    graph, x, threat, c, d, root = _graph_setup(4)
    search = _RowSearch(graph, x, threat, c[0], d[0], BaB(time_limit=10), root)  # type: ignore[arg-type]
    bounder = search.bounder
    values = [x]
    with torch.no_grad():
        for node in graph.nodes[1:]:  # type: ignore[attr-defined]
            values.append(node.op.forward(*(values[j] for j in node.inputs)))
    split, alpha, beta = {}, {}, {}
    for j in bounder.relus:
        lo, hi = (v.flatten(1) for v in root.bounds[bounder.src[j]])
        z = values[bounder.src[j]].flatten(1)
        unstable = (lo < 0) & (hi > 0)
        split[j] = torch.where(unstable, torch.where(z >= 0, 1, -1), 0).to(torch.int8)
        alpha[j] = root.alphas[j][0, :1].flatten(1)
        beta[j] = torch.zeros_like(alpha[j])
    dom = search.bound(split, alpha, beta, torch.tensor([0]))
    assert float(dom.score.amax()) <= 0  # no unstable neuron left: a leaf
    exact = search.solve_leaf(dom, 10.0)
    clean = float(values[graph.output] @ c[0, 0] + d[0, 0])  # type: ignore[attr-defined]
    assert float(dom.lower[0]) - 1e-9 <= exact <= clean + 1e-7
    assert search.leaves == 1 and search.rows[0].best_value <= clean + 1e-9


class _Affine(nn.Module):
    """No ReLU at all (an input scaling and a Linear: a graph through fx)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, 1.0],
                                                [-1.0, 0.5, 2.0]]))
            self.lin.bias.copy_(torch.tensor([0.3, 0.0, -0.2]))

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x * 2.0 - 1.0)


@pytest.mark.parametrize("module", [_Affine, lambda: nn.Sequential(nn.Linear(3, 3))])
def test_a_network_without_relus_is_decided_by_its_one_linear_region(module) -> None:  # type: ignore[no-untyped-def]
    # Nothing to split: BaB crashed (StopIteration) once its root left a row open. The LP of
    # the one region decides each row: its bound and its point bracket the exact minimum of a
    # linear function over the box (a corner, enumerated here).
    torch.manual_seed(0)
    model = module().eval()
    x = torch.full((1, 3), 0.5)
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.4)
    res = BaB(time_limit=10)(model, x, y, threat)
    corners = torch.cartesian_prod(*[torch.tensor([0.1, 0.9])] * 3).double()
    with torch.no_grad():
        spec = Spec.margins(y, 3)
        exact = (model.double()(corners) @ spec.C[0].double().T).amin(0)
    model.float()
    assert torch.all(res.lower[0] <= exact + 1e-9)
    assert torch.all(res.lower[0] >= exact - 1e-6)  # exact up to the solver's tolerance
    if bool((exact < 0).any()):
        assert res.verdict[0] is Verdict.FALSIFIED
