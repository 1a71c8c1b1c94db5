"""alpha-CROWN and beta-CROWN: sound, never looser than what they start from, and BaB with beta
agrees with the MILP and with brute force."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.exact.conftest import make_mlp

from advrobust.core import VERIFY_TOLERANCE, LpBall, Spec, Verdict
from advrobust.errors import InvalidParameterError, UnsupportedLayerError
from advrobust.exact import MILP, BaB
from advrobust.exact._beta import BetaBounder
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
        start = float(bounder.quick(split, alpha, beta, row)[0])  # alpha-CROWN on the domain
        dom, _ = bounder.bound(split, alpha, beta, row)
        got = float(dom.lower[0])
        assert got >= start - 1e-12 * (1 + abs(start))  # beta = 0 is its first step
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
