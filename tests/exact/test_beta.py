"""alpha-CROWN and beta-CROWN: sound, never looser than what they start from, and BaB with beta
agrees with the MILP and with brute force."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tests.exact.conftest import make_mlp

from advrobust.core import VERIFY_TOLERANCE, LpBall, Spec, Verdict
from advrobust.errors import InvalidParameterError, UnsupportedLayerError
from advrobust.exact import MILP, BaB
from advrobust.exact._beta import BetaBounder
from advrobust.exact._domains import Domains
from advrobust.network.ir import Network, from_module
from advrobust.network.ops import Op
from advrobust.relax.alpha_crown import alpha_crown, check_chain
from advrobust.relax.crown import crown_layer_bounds, crown_lower


def _setup(seed: int, widths: tuple[int, ...], eps: float
           ) -> tuple[Network, torch.Tensor, LpBall, torch.Tensor, torch.Tensor]:
    model = make_mlp(seed, widths).double().requires_grad_(False)
    net = from_module(model, (widths[0],))
    x = torch.rand(1, widths[0], generator=torch.Generator().manual_seed(seed),
                   dtype=torch.float64)
    y = int(net.forward(x).argmax(1))
    spec = Spec.margins(torch.tensor([y]), widths[-1])
    return net, x, LpBall("linf", eps), spec.C.double(), spec.d.double()


def _samples(x: torch.Tensor, threat: LpBall, count: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    lo, hi = threat.input_bounds(x)
    u = torch.rand((count,) + tuple(x.shape[1:]), generator=gen, dtype=x.dtype)
    corners = (torch.rand(u.shape, generator=gen) < 0.5).to(x.dtype)
    u = torch.where(torch.rand(u.shape, generator=gen) < 0.3, corners, u)
    return lo + (hi - lo) * u


def _pre_activations(net: Network, pts: torch.Tensor) -> dict[int, torch.Tensor]:
    out, z = {}, pts
    with torch.no_grad():
        for i, op in enumerate(net.ops):
            if i in net.relu_indices:
                out[i] = z.flatten(1)
            z = op.forward(z)
    return out


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.floats(0.05, 0.15))
def test_alpha_crown_is_sound_and_never_looser_than_crown(seed: int, eps: float) -> None:
    net, x, threat, c, d = _setup(seed, (6, 16, 16, 16, 4), eps)
    crown = crown_lower(net, x, threat, c, d, rounding=True)
    res = alpha_crown(net, x, threat, c, d, steps=8, intermediate=True)
    assert bool((res.lower >= crown - 1e-12).all())  # step 0 is CROWN; the best step is kept
    pts = _samples(x, threat, 2000, seed)
    with torch.no_grad():
        values = net.forward(pts) @ c[0].T + d[0]
    assert bool((res.lower[0] <= values.amin(0)).all())
    ref = crown_layer_bounds(net, x, threat, rounding=True)
    for j, z in _pre_activations(net, pts).items():
        lo, hi = res.bounds[j][0].flatten(1), res.bounds[j][1].flatten(1)
        assert bool((lo <= z).all()) and bool((z <= hi).all())
        assert bool((lo >= ref[j][0].flatten(1)).all()) and bool((hi <= ref[j][1].flatten(1)).all())


def test_optimised_intermediate_bounds_tighten_a_deep_net() -> None:
    net, x, threat, c, d = _setup(7, (8, 24, 24, 24, 24, 3), 0.12)
    last_only = alpha_crown(net, x, threat, c, d, steps=20, intermediate=False)
    full = alpha_crown(net, x, threat, c, d, steps=20, intermediate=True)
    assert bool((full.lower >= last_only.lower - 1e-9).all())
    assert float((full.lower - last_only.lower).sum()) > 0


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 10_000), splits=st.integers(1, 4))
def test_beta_bound_dominates_alpha_on_split_domains_and_is_valid(seed: int, splits: int) -> None:
    net, x, threat, c, d = _setup(seed, (5, 12, 12, 12, 3), 0.15)
    root = alpha_crown(net, x, threat, c, d, steps=5)
    relus = net.relu_indices
    pts = _samples(x, threat, 4000, seed + 1)
    pre = _pre_activations(net, pts)
    # split on neurons unstable at the root, with the signs they take at one sampled point,
    # so that the domain holds points
    split = {j: torch.zeros(1, net.ops[j].in_size, dtype=torch.int8) for j in relus}
    unstable = [(j, int(n)) for j in relus for n in
                ((root.bounds[j][0] < 0) & (root.bounds[j][1] > 0))[0].nonzero().flatten()]
    if not unstable:
        return
    gen = torch.Generator().manual_seed(seed)
    for k in torch.randperm(len(unstable), generator=gen)[:splits].tolist():
        j, n = unstable[k]
        split[j][0, n] = 1 if float(pre[j][0, n]) >= 0 else -1
    inside = torch.ones(pts.shape[0], dtype=torch.bool)
    for j in relus:
        s = split[j][0]
        inside &= ((pre[j] * s >= 0) | (s == 0)).all(1)
    assert bool(inside[0])
    bounder = BetaBounder(net, x, threat, c[0], d[0], root.bounds, steps=10)
    with torch.no_grad():
        values = net.forward(pts[inside]) @ c[0].T + d[0]
    for r in range(c.shape[1]):
        row = torch.tensor([r])
        alpha = {j: root.alphas[j][0, r:r + 1].flatten(1) for j in relus}
        beta = {j: torch.zeros_like(v) for j, v in alpha.items()}
        fast, bounder.fast = bounder.fast, None  # the sound float64 one-pass bound
        start = float(bounder.quick(split, alpha, beta, row)[0])  # alpha-CROWN on the domain
        bounder.fast = fast
        dom, _ = bounder.bound(split, alpha, beta, row)
        got = float(dom.lower[0])
        # beta = 0 is its first step; the steps' values (float32 on a chain) pick the best
        assert got >= start - 1e-5 * (1 + abs(start))
        assert got <= float(values[:, r].min())  # valid on the split domain


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.floats(0.1, 0.4))
def test_bab_with_beta_agrees_with_milp_and_brute_force(seed: int, eps: float) -> None:
    model = make_mlp(seed, (2, 10, 10, 3))
    x = torch.rand(2, 2, generator=torch.Generator().manual_seed(seed))
    y = model(x).argmax(1)
    threat = LpBall("linf", eps)
    exact = MILP(early_stop=False, skip_verified=False)(model, x, y, threat)
    bab = BaB(early_stop=False, time_limit=10, batch_size=16, branching="fsb")(model, x, y,
                                                                              threat)
    grid = torch.linspace(-1, 1, 121)
    square = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    for i in range(2):
        pts = threat.project(x[i:i + 1].expand(square.shape[0], 2),
                             x[i:i + 1] + eps * square)
        spec = Spec.margins(y[i:i + 1], 3)
        brute = (model(pts) @ spec.C[0].T + spec.d[0]).amin(0).double()
        assert bool((bab.lower[i] <= exact.lower[i] + 1e-5).all())
        assert bool((exact.lower[i] <= brute + 1e-5).all())
        m = float(exact.lower[i].min())
        if m > 1e-3:
            assert bab.verdict[i] is Verdict.VERIFIED
        elif m < -1e-3:
            assert bab.verdict[i] is Verdict.FALSIFIED
        if bab.verdict[i] is Verdict.VERIFIED:
            assert float(brute.min()) > VERIFY_TOLERANCE


def test_babsr_and_fsb_both_decide_and_bad_branching_raises() -> None:
    model = make_mlp(3, (10, 16, 16, 4))
    x = torch.rand(4, 10, generator=torch.Generator().manual_seed(3))
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.06)
    a = BaB(time_limit=10, branching="babsr")(model, x, y, threat)
    b = BaB(time_limit=10, branching=2)(model, x, y, threat)
    assert a.verdict == b.verdict
    with pytest.raises(InvalidParameterError, match="branching"):
        BaB(branching="random")


def test_non_chain_ops_are_refused_by_name() -> None:
    class Odd(Op):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    net = Network([Odd((3,), (3,), "odd")], (3,))
    with pytest.raises(UnsupportedLayerError, match="Odd"):
        check_chain(net)


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_batched_pass_matches_the_reference_back_substitution(seed: int) -> None:
    """The beta pass with the batch's relaxations precomputed is the same bound as
    alpha_crown.linear_pass (relaxation, split terms, rounding allowances) on split domains."""
    from advrobust.relax._rounding import add_offset
    from advrobust.relax.alpha_crown import concretize, linear_pass

    net, x, threat, c, d = _setup(seed, (5, 12, 12, 12, 3), 0.2)
    root = alpha_crown(net, x, threat, c, d, steps=2)
    bounder = BetaBounder(net, x, threat, c[0], d[0], root.bounds)
    gen = torch.Generator().manual_seed(seed)
    b = 6
    split, alpha, beta = {}, {}, {}
    for j in net.relu_indices:
        n = net.ops[j].in_size
        split[j] = torch.randint(-1, 2, (b, n), generator=gen).to(torch.int8)
        alpha[j] = torch.rand(b, n, generator=gen, dtype=torch.float64)
        beta[j] = torch.rand(b, n, generator=gen, dtype=torch.float64)
    row = torch.arange(b) % c.shape[1]
    bounds = bounder.clamped(split)
    got, coef = bounder._pass(bounds, split, alpha, beta, row)
    a, const, err = linear_pass(
        net, c[0][row].unsqueeze(1), len(net.ops), bounds,
        {j: v.reshape(b, 1, -1) for j, v in alpha.items()},
        {j: (beta[j] * split[j].double()).reshape(b, 1, -1) for j in net.relu_indices},
        mags=bounder.mags)
    want = add_offset(concretize(threat, x.expand(b, -1), a, const, err)[:, 0], d[0][row])
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    assert torch.allclose(coef, a[:, 0], rtol=1e-12, atol=1e-12)


def _split_at_a_point(net: Network, root_bounds: list, pre: dict[int, torch.Tensor],
                      splits: int, seed: int) -> dict[int, torch.Tensor]:
    """Random splits of root-unstable neurons with the signs they take at sampled point 0."""
    split = {j: torch.zeros(1, net.ops[j].in_size, dtype=torch.int8) for j in net.relu_indices}
    unstable = [(j, int(n)) for j in net.relu_indices for n in
                ((root_bounds[j][0] < 0) & (root_bounds[j][1] > 0))[0].nonzero().flatten()]
    gen = torch.Generator().manual_seed(seed)
    for k in torch.randperm(len(unstable), generator=gen)[:splits].tolist():
        j, n = unstable[k]
        split[j][0, n] = 1 if float(pre[j][0, n]) >= 0 else -1
    return split


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 10_000), splits=st.integers(1, 5))
def test_domain_bounds_are_valid_and_within_the_clamped_root_bounds(seed: int,
                                                                    splits: int) -> None:
    net, x, threat, c, d = _setup(seed, (5, 14, 14, 14, 14, 3), 0.2)
    root = alpha_crown(net, x, threat, c, d, steps=3)
    pts = _samples(x, threat, 3000, seed + 2)
    pre = _pre_activations(net, pts)
    split = _split_at_a_point(net, root.bounds, pre, splits, seed)
    inside = torch.ones(pts.shape[0], dtype=torch.bool)
    for j in net.relu_indices:
        s = split[j][0]
        inside &= ((pre[j] * s >= 0) | (s == 0)).all(1)
    bounder = BetaBounder(net, x, threat, c[0], d[0], root.bounds, domain_bounds=True,
                          inter_alphas=root.inter_alphas)
    clamped = bounder.clamped(split)
    tight, empty = bounder.tightened(split)
    assert not bool(empty[0])  # sampled point 0 lies in the domain
    for j in net.relu_indices:
        lo, hi = tight[j][0].flatten(1), tight[j][1].flatten(1)
        assert bool((lo >= clamped[j][0].flatten(1)).all())
        assert bool((hi <= clamped[j][1].flatten(1)).all())
        z = pre[j][inside]
        assert bool((lo <= z).all()) and bool((z <= hi).all())


def test_domain_bounds_stabilise_neurons_above_a_split_and_find_empty_domains() -> None:
    net, x, threat, c, d = _setup(11, (6, 20, 20, 20, 3), 0.3)
    root = alpha_crown(net, x, threat, c, d, steps=5)
    bounder = BetaBounder(net, x, threat, c[0], d[0], root.bounds, domain_bounds=True,
                          inter_alphas=root.inter_alphas)
    first = net.relu_indices[0]
    unstable = ((root.bounds[first][0] < 0) & (root.bounds[first][1] > 0))[0].nonzero()
    # every first-layer unstable neuron, split both ways: 2u domains of one split each
    u = unstable.numel()
    split = {j: torch.zeros(2 * u, net.ops[j].in_size, dtype=torch.int8)
             for j in net.relu_indices}
    split[first][torch.arange(u), unstable.flatten()] = -1
    split[first][torch.arange(u) + u, unstable.flatten()] = 1
    clamped = bounder.clamped(split)
    tight, _ = bounder.tightened(split)
    width = sum(float((clamped[j][1] - clamped[j][0]).sum()) for j in net.relu_indices[1:])
    narrower = sum(float((tight[j][1] - tight[j][0]).sum()) for j in net.relu_indices[1:])
    assert narrower < width  # the split layer's neurons are exact above it
    # a domain asking z >= 0 of a neuron the root proves dead (upper bound < 0) is empty
    dead = (root.bounds[first][1] <= 0)[0].nonzero()
    if dead.numel():
        one = {j: torch.zeros(1, net.ops[j].in_size, dtype=torch.int8) for j in net.relu_indices}
        one[first][0, dead[0]] = 1
        assert bool(bounder.tightened(one)[1][0])


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_new_split_multipliers_start_children_at_their_parents_bound(seed: int) -> None:
    """Where the parent's bound used a neuron's lower line (coefficient > 0 on its output),
    both children start (no optimisation) at the parent's bound, and stay valid."""
    net, x, threat, c, d = _setup(seed, (5, 12, 12, 12, 3), 0.15)
    root = alpha_crown(net, x, threat, c, d, steps=5)
    bounder = BetaBounder(net, x, threat, c[0], d[0], root.bounds, steps=4)
    relus = net.relu_indices
    row = torch.arange(c.shape[1])
    split = {j: torch.zeros(len(row), net.ops[j].in_size, dtype=torch.int8) for j in relus}
    alpha = {j: root.alphas[j][0].flatten(1) for j in relus}
    beta = {j: torch.zeros_like(v) for j, v in alpha.items()}
    parent, _ = bounder.bound(split, alpha, beta, row, steps=3)
    own = bounder.quick(parent.split, parent.alpha, parent.beta, parent.row)
    checked = 0
    pts = _samples(x, threat, 3000, seed + 3)
    pre = _pre_activations(net, pts)
    with torch.no_grad():
        values = net.forward(pts) @ c[0].T + d[0]
    tried = 0
    for neuron in (parent.score > 0).any(0).nonzero().flatten().tolist():
        ok = parent.score[:, neuron] > 0  # unstable in that domain
        positive = ok & (parent.coef[:, neuron] > 0)
        if tried == 6:
            break
        if not bool(positive.any()):
            continue  # checks the first 6 neurons whose parent bound used their lower line
        tried += 1
        chosen = torch.full((len(parent),), neuron)
        kids = bounder.children(parent, chosen)
        start = bounder.quick(*kids).reshape(2, -1)
        for side in range(2):
            # up to the float32 storage of the parent's coefficients and slopes
            assert bool((start[side][positive] >= own[positive]
                         - 1e-6 * (1 + own[positive].abs())).all())
        checked += int(positive.sum())
        # valid on each child's points
        j, _, col = next(t for t in bounder.locate(torch.tensor([neuron])) if t[1].numel())
        for side, sign in ((0, -1), (1, 1)):
            mine = (pre[j][:, int(col[0])] * sign >= 0)
            if bool(mine.any()):
                low = values[mine].amin(0)[parent.row]
                assert bool((start[side] <= low + 1e-9).all())
    # a network whose parent bound uses no neuron's lower line has nothing to check
    assume(checked > 0)


@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.floats(0.1, 0.3))
def test_bab_with_domain_bounds_agrees_with_milp(seed: int, eps: float) -> None:
    model = make_mlp(seed, (3, 10, 10, 10, 3))
    x = torch.rand(2, 3, generator=torch.Generator().manual_seed(seed))
    y = model(x).argmax(1)
    threat = LpBall("linf", eps)
    exact = MILP(early_stop=False, skip_verified=False)(model, x, y, threat)
    bab = BaB(early_stop=False, time_limit=10, batch_size=8, domain_bounds=True)(
        model, x, y, threat)
    for i in range(2):
        assert bool((bab.lower[i] <= exact.lower[i] + 1e-5).all())
        m = float(exact.lower[i].min())
        if m > 1e-3:
            assert bab.verdict[i] is Verdict.VERIFIED
        elif m < -1e-3:
            assert bab.verdict[i] is Verdict.FALSIFIED


def _root_domains(seed: int) -> tuple[BetaBounder, Domains]:
    """A bounder on a small deep MLP and its root domains (one per spec row), bounded."""
    net, x, threat, c, d = _setup(seed, (5, 12, 12, 12, 3), 0.2)
    root = alpha_crown(net, x, threat, c, d, steps=3)
    bounder = BetaBounder(net, x, threat, c[0], d[0], root.bounds, steps=2)
    row = torch.arange(c.shape[1])
    split = {j: torch.zeros(len(row), net.ops[j].in_size, dtype=torch.int8)
             for j in net.relu_indices}
    alpha = {j: root.alphas[j][0].flatten(1) for j in net.relu_indices}
    beta = {j: torch.zeros_like(v) for j, v in alpha.items()}
    return bounder, bounder.bound(split, alpha, beta, row, steps=2)[0]


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_more_fsb_candidates_never_pick_a_split_worse_by_the_ranking_pass(seed: int) -> None:
    """Filtered smart branching keeps the top-k BaBSR candidates with the best worse child
    (one pass each): the top-k sets are nested, so the worse child of its pick can only rise
    with k (the default is 20), and k = 1 is BaBSR's own pick."""
    bounder, parent = _root_domains(seed)
    assume(bool((parent.score > 0).any()))

    def worse_child(neuron: torch.Tensor) -> torch.Tensor:
        kids = bounder.children(parent, neuron, warm=False)
        return bounder.quick(*kids).reshape(2, -1).amin(0)

    assert torch.equal(bounder.choose(parent, 1), parent.score.argmax(1))
    previous = worse_child(bounder.choose(parent, 1))
    for k in (3, 20):
        now = worse_child(bounder.choose(parent, k))
        # the ranking pass is float32: a near-tie may round either way
        assert bool((now >= previous - 1e-5 * (1 + previous.abs())).all())
        previous = now


def _split_once(seed: int) -> tuple[BetaBounder, Domains, torch.Tensor, torch.Tensor]:
    """:func:`_root_domains` split once on BaBSR's pick and bounded, its candidates ranked
    by BaBSR (every neuron with a positive score somewhere: all three ReLU layers take
    part) and those scores."""
    bounder, parent = _root_domains(seed)
    parent, _ = bounder.bound(*bounder.children(parent, parent.score.argmax(1)), steps=2)
    scores, cand = parent.score.topk(int((parent.score > 0).sum(1).max()), dim=1)
    return bounder, parent, cand, scores


def _assert_ranked_like_each_childs_own_bounds(bounder: BetaBounder, parent: Domains,
                                              cand: torch.Tensor, scores: torch.Tensor,
                                              got: torch.Tensor) -> None:
    for i in range(cand.shape[1]):
        want = bounder.quick(*bounder.children(parent, cand[:, i], warm=False)).reshape(2, -1)
        real = scores[:, i] > 0  # an unstable neuron (stable ones are never picked)
        assert torch.allclose(got[:, i][:, real], want[:, real], rtol=1e-5, atol=1e-5)


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_the_ranking_pass_matches_bounding_each_child_from_its_own_bounds(seed: int) -> None:
    """Filtered smart branching's children take their parent's ReLU relaxations with the split
    neuron fixed; that is the relaxation of each child's own split-clamped bounds."""
    bounder, parent, cand, scores = _split_once(seed)
    assert bounder.fast is not None  # a chain: the float32 path is the one under test
    assume(bool((scores > 0).any()))
    got = bounder.ranking(parent, cand)
    _assert_ranked_like_each_childs_own_bounds(bounder, parent, cand, scores, got)


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_ranking_from_the_parents_pass_in_parts_matches_each_childs_own_bounds(
        seed: int) -> None:
    """With the parents' pass in parts (``_base``) a split's children start their passes
    below the split's layer: the parent's coefficients there plus the split neuron's changed
    term through the affine map into its layer. On every layer that gives each child's own
    one-pass bound, and no child takes a pass from the output."""
    bounder, parent, cand, scores = _split_once(seed)
    assume(bool((scores > 0).any()))
    parents = bounder._parent_relus(parent)
    base = bounder._base(parent, parents)
    assert base is not None
    assert all(bounder._below(p) is not None for p in range(len(bounder.relus)))

    def from_the_output(*args: object, **kwargs: object) -> None:
        raise AssertionError("a child's pass started at the output")

    bounder._pass = from_the_output  # type: ignore[method-assign]
    try:
        got = bounder.ranking(parent, cand, parents, base)
    finally:
        del bounder._pass
    _assert_ranked_like_each_childs_own_bounds(bounder, parent, cand, scores, got)


def test_ranking_without_the_maps_into_the_layers_takes_each_childs_pass(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the affine map into a layer is too large to keep, its candidates' children take
    their own passes from the output: the same values."""
    import advrobust.exact._branching as branching

    monkeypatch.setattr(branching, "_BELOW_MOST", 0)
    bounder, parent, cand, scores = _split_once(1)
    parents = bounder._parent_relus(parent)
    base = bounder._base(parent, parents)
    assert all(bounder._below(p) is None for p in range(len(bounder.relus)))
    calls = []
    full = bounder._pass

    def counted(*args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(1)
        return full(*args, **kwargs)  # type: ignore[arg-type]

    bounder._pass = counted  # type: ignore[method-assign]
    try:
        got = bounder.ranking(parent, cand, parents, base)
    finally:
        del bounder._pass
    assert calls
    _assert_ranked_like_each_childs_own_bounds(bounder, parent, cand, scores, got)
