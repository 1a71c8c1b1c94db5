"""LpBall: projection, ascent directions, sampling, membership and validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from advrobust import InvalidInputError, InvalidThreatModelError, LpBall, Norm
from advrobust.core.threat import _project_l1_ball, lp_norm

NORMS = ["linf", "l2", "l1"]
SHAPES = [(1, 3), (4, 7), (3, 1, 4, 4), (2, 3, 2, 2)]
BOXES = [(0.0, 1.0), (-1.0, 2.0), (-math.inf, math.inf), (0.0, math.inf)]


def _point_in_box(shape: tuple[int, ...], lo: float, hi: float, gen: torch.Generator
                  ) -> torch.Tensor:
    lo_f = lo if math.isfinite(lo) else -3.0
    hi_f = hi if math.isfinite(hi) else lo_f + 6.0
    return lo_f + (hi_f - lo_f) * torch.rand(shape, generator=gen)


@settings(max_examples=60, deadline=None)
@given(norm=st.sampled_from(NORMS), shape=st.sampled_from(SHAPES), box=st.sampled_from(BOXES),
       eps=st.one_of(st.just(0.0), st.floats(1e-4, 5.0)), scale=st.floats(0.0, 10.0),
       seed=st.integers(0, 2**31 - 1))
def test_project_lands_in_ball_and_box(norm: str, shape: tuple[int, ...],
                                       box: tuple[float, float], eps: float, scale: float,
                                       seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    threat = LpBall(norm, eps, *box)
    x0 = _point_in_box(shape, *box, gen)
    x = x0 + scale * torch.randn(shape, generator=gen)
    p = threat.project(x0, x)
    assert p.shape == x0.shape
    assert bool(threat.contains(x0, p).all())
    # Up to float32 rounding of x0 + delta (half an ulp per coordinate).
    slack = 1e-6 + torch.finfo(p.dtype).eps * lp_norm(p, threat.norm)
    assert bool((lp_norm(p - x0, threat.norm) <= eps + slack).all())
    if eps == 0:
        assert torch.equal(p, x0)
    # A point already inside the set is left where it is.
    inside = threat.sample(x0, gen)
    torch.testing.assert_close(threat.project(x0, inside), inside, rtol=0, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(shape=st.sampled_from(SHAPES), box=st.sampled_from(BOXES), eps=st.floats(0.0, 2.0),
       seed=st.integers(0, 2**31 - 1))
def test_linf_project_is_the_exact_euclidean_projection(shape: tuple[int, ...],
                                                        box: tuple[float, float], eps: float,
                                                        seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x0 = _point_in_box(shape, *box, gen).double()
    x = x0 + 3 * torch.randn(shape, generator=gen, dtype=torch.float64)
    lower = torch.clamp(x0 - eps, min=box[0])
    upper = torch.clamp(x0 + eps, max=box[1])
    # The set is a box here, whose Euclidean projection is the coordinatewise clamp.
    expected = torch.maximum(torch.minimum(x, upper), lower)
    torch.testing.assert_close(LpBall("linf", eps, *box).project(x0, x), expected)


def _l1_projection_reference(v: np.ndarray, eps: float) -> np.ndarray:
    """argmin ||z - v||^2 s.t. ||z||_1 <= eps, by SLSQP on z = p - q with p, q >= 0."""
    d = v.size

    def objective(w: np.ndarray) -> float:
        return float(np.sum((w[:d] - w[d:] - v) ** 2))

    res = minimize(objective, np.zeros(2 * d), method="SLSQP", bounds=[(0, None)] * (2 * d),
                   constraints=[{"type": "ineq", "fun": lambda w: eps - w.sum()}],
                   options={"ftol": 1e-12, "maxiter": 500})
    return res.x[:d] - res.x[d:]


@settings(max_examples=20, deadline=None)
@given(d=st.integers(1, 5), eps=st.floats(0.05, 2.0), seed=st.integers(0, 2**31 - 1))
def test_l1_projection_matches_a_qp_solver(d: int, eps: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    v = rng.normal(scale=2.0, size=d)
    threat = LpBall("l1", eps, -math.inf, math.inf)
    got = threat.project(torch.zeros(1, d, dtype=torch.float64),
                         torch.from_numpy(v).reshape(1, d))
    np.testing.assert_allclose(got.numpy().ravel(), _l1_projection_reference(v, eps), atol=1e-4)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_unboxed_projection_is_nearest_among_sampled_points(norm: str) -> None:
    gen = torch.Generator().manual_seed(0)
    threat = LpBall(norm, 0.7, -math.inf, math.inf)
    x0 = torch.zeros(64, 6, dtype=torch.float64)
    x = 2 * torch.randn(64, 6, generator=gen, dtype=torch.float64)
    p = threat.project(x0, x)
    for _ in range(10):
        z = threat.sample(x0, gen)
        assert bool(((p - x).norm(dim=1) <= (z - x).norm(dim=1) + 1e-9).all())


@pytest.mark.parametrize("sparsity", [0.0, 0.25])
def test_ascent_directions_have_unit_norm_and_ascend(sparsity: float) -> None:
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(8, 1, 3, 4, generator=gen)
    g[0] = 0.0
    linf = LpBall("linf", 0.1).ascent_direction(g)
    assert torch.equal(linf, g.sign())
    l2 = LpBall("l2", 0.1).ascent_direction(g)
    torch.testing.assert_close(lp_norm(l2[1:], Norm.L2), torch.ones(7))
    torch.testing.assert_close((l2 * g).flatten(1).sum(1)[1:], lp_norm(g[1:], Norm.L2))
    l1 = LpBall("l1", 0.1).ascent_direction(g, l1_sparsity=sparsity)
    torch.testing.assert_close(lp_norm(l1[1:], Norm.L1), torch.ones(7))
    k = max(1, round(sparsity * 12))
    assert ((l1[1:].flatten(1) != 0).sum(1) == k).all()
    top = g.flatten(1).abs().topk(k, dim=1).values.mean(1)
    torch.testing.assert_close((l1 * g).flatten(1).sum(1)[1:], top[1:])
    for direction in (linf, l2, l1):
        assert bool((direction[0] == 0).all())  # zero gradient -> no move


def test_l1_ascent_skips_coordinates_the_box_blocks() -> None:
    threat = LpBall("l1", 1.0)
    g = torch.tensor([[3.0, -2.0, 1.0]])
    x = torch.tensor([[1.0, 0.0, 0.5]])  # coordinate 0 cannot go up, coordinate 1 cannot go down
    torch.testing.assert_close(threat.ascent_direction(g, x), torch.tensor([[0.0, 0.0, 1.0]]))


@pytest.mark.parametrize("norm", NORMS)
def test_sample_is_inside_and_reproducible(norm: str) -> None:
    threat = LpBall(norm, 0.3)
    x0 = torch.rand(16, 1, 5, 5, generator=torch.Generator().manual_seed(2))
    a = threat.sample(x0, torch.Generator().manual_seed(7))
    b = threat.sample(x0, torch.Generator().manual_seed(7))
    c = threat.sample(x0, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert bool(threat.contains(x0, a).all())
    assert bool((a != x0).any())


def test_contains() -> None:
    threat = LpBall("l2", 0.5)
    x0 = torch.full((1, 4), 0.5)
    assert bool(threat.contains(x0, x0).all())
    assert not bool(threat.contains(x0, x0 + 0.3).all())  # l2 norm 0.6 > 0.5
    assert bool(threat.contains(x0, x0 + 0.24).all())  # l2 norm 0.48
    outside_box = x0.clone()
    outside_box[0, 0] = 1.1
    assert not bool(LpBall("linf", 1.0).contains(x0, outside_box).all())
    nan = x0.clone()
    nan[0, 1] = float("nan")
    assert not bool(threat.contains(x0, nan).all())


def test_unbounded_box_is_allowed_and_never_clips() -> None:
    threat = LpBall("linf", 0.1, lo=-math.inf, hi=math.inf)
    x0 = torch.tensor([[-5.0, 0.0, 7.0]])
    threat.check_input(x0)
    p = threat.project(x0, x0 + torch.tensor([[1.0, -1.0, 0.05]]))
    torch.testing.assert_close(p, x0 + torch.tensor([[0.1, -0.1, 0.05]]))
    assert "inf" in str(threat)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"norm": "linf", "eps": -0.1}, r"'eps' parameter of LpBall must be a finite float in \[0"),
    ({"norm": "linf", "eps": float("nan")}, "'eps' parameter of LpBall"),
    ({"norm": "linf", "eps": float("inf")}, "'eps' parameter of LpBall"),
    ({"norm": "l3", "eps": 0.1}, "'norm' parameter of LpBall must be one of .*Got 'l3'"),
    ({"norm": "l2", "eps": 0.1, "lo": 1.0, "hi": 1.0}, "lo < hi. Got lo=1.0, hi=1.0"),
    ({"norm": "l2", "eps": 0.1, "lo": 2.0, "hi": 1.0}, "lo < hi"),
    ({"norm": "l2", "eps": 0.1, "lo": float("nan")},
     r"'lo' parameter of LpBall must be a float \(not NaN\) in \[-inf, inf\]. Got nan"),
    ({"norm": "l2", "eps": 0.1, "hi": "one"}, "'hi' parameter of LpBall .*Got 'one' instead"),
    ({"norm": "l2", "eps": 0.1, "lo": math.inf, "hi": math.inf}, "lo < hi. Got lo=inf"),
    ({"norm": "linf", "eps": True}, "'eps' parameter of LpBall .*Got True instead"),
])
def test_bad_threats_are_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidThreatModelError, match=message):
        LpBall(**kwargs)


def test_norm_aliases_and_duals() -> None:
    assert LpBall("inf", 0.1).norm is Norm.LINF
    assert LpBall(Norm.L1, 0.1).norm is Norm.L1
    assert LpBall("2", 0.1).norm is Norm.L2
    assert [n.dual for n in Norm] == [Norm.L1, Norm.L2, Norm.LINF]
    with pytest.raises(ValueError):  # the built-in type still catches it
        LpBall("linf", -1.0)


def test_check_input_rejects_points_outside_the_box_or_nan() -> None:
    threat = LpBall("linf", 0.1)
    threat.check_input(torch.full((2, 3), 1.0 + 5e-7))  # within the 1e-6 tolerance
    with pytest.raises(InvalidInputError, match=r"outside by up to 0.01"):
        threat.check_input(torch.full((2, 3), 1.01))
    with pytest.raises(InvalidInputError, match="NaN"):
        threat.check_input(torch.tensor([[0.5, float("nan")]]))
    with pytest.raises(InvalidInputError, match="floating-point"):
        threat.check_input(torch.zeros(2, 3, dtype=torch.int64))


@pytest.mark.parametrize("norm", NORMS)
def test_concretize_lower_is_below_values_at_points_of_the_set(norm: str) -> None:
    gen = torch.Generator().manual_seed(3)
    threat = LpBall(norm, 0.4)
    x0 = torch.rand(5, 6, generator=gen, dtype=torch.float64)
    a = torch.randn(5, 2, 6, generator=gen, dtype=torch.float64)
    lower = threat.concretize_lower(a, x0)
    for _ in range(20):
        x = threat.sample(x0, gen)
        assert bool((lower <= torch.einsum("nkd,nd->nk", a, x) + 1e-9).all())


def test_l1_projection_of_far_points_stays_in_the_ball_in_float32() -> None:
    """Rounding in the sorting algorithm's threshold grows with the entries it cuts; a far
    point (here ~30x eps away, the case hypothesis found) must still land inside the ball."""
    worst = 0.0
    for seed in [25, *range(200)]:
        gen = torch.Generator().manual_seed(seed)
        x0 = -1.0 + 3.0 * torch.rand((4, 7), generator=gen)
        x = x0 + 9.0 * torch.randn((4, 7), generator=gen)
        threat = LpBall("l1", 2.0, -1.0, 2.0)
        p = threat.project(x0, x)
        assert bool(threat.contains(x0, p).all()), seed
        delta = _project_l1_ball(x - x0, 2.0)
        worst = max(worst, float(delta.abs().sum(dim=1).max()))
    assert worst <= 2.0


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@pytest.mark.parametrize("shared", [True, False])
def test_concretize_on_an_expanded_centre_equals_the_full_batch(norm: str, shared: bool) -> None:
    # branch and bound hands one centre expanded to its B domains: bounded once, same values
    from advrobust.relax._rounding import abs_dot
    from advrobust.relax.alpha_crown import concretize

    gen = torch.Generator().manual_seed(4)
    threat = LpBall(norm, 0.2, lo=0.0, hi=1.0)
    x = torch.rand(1, 6, generator=gen, dtype=torch.float64).expand(5, 6)
    a = torch.randn(1 if shared else 5, 3, 6, generator=gen, dtype=torch.float64)
    const = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    err = torch.rand(5, 3, generator=gen, dtype=torch.float64)
    got = threat.concretize_lower(a, x)
    want = threat.concretize_lower(a, x.contiguous())
    assert got.shape == (5, 3)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(concretize(threat, x, a, const, err),
                               concretize(threat, x.contiguous(), a, const, err))
    m = torch.rand(1, 6, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(abs_dot(a, m), abs_dot(a, m.expand(5, 6).contiguous())
                               if shared is False else abs_dot(a, m))
