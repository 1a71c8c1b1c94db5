"""FAB-T: contract, the box-constrained projection in closed form, linear models, strongest."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advrobust import InvalidParameterError, LpBall
from advrobust.attacks import APGD, FABTargeted, strongest
from advrobust.attacks.fab import project_on_hyperplane
from attacks._catalogue import digits_batch, digits_model, one_thread
from attacks.common import batch_for, check_attack


@pytest.fixture(autouse=True)
def _single_thread() -> object:
    with one_thread():
        yield


@pytest.mark.parametrize(("norm", "eps"), [("l2", 1.0), ("linf", 0.2)])
def test_contract(norm: str, eps: float, tiny_mlp: nn.Module) -> None:
    x, y = batch_for(tiny_mlp, n=8)
    check_attack(FABTargeted(steps=10, n_target_classes=2), tiny_mlp, x, y, LpBall(norm, eps))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), norm=st.sampled_from(["l2", "linf"]))
def test_projection_reaches_the_hyperplane_minimally(seed: int, norm: str) -> None:
    """Without a box the minimal step is closed-form: c g / |g|_2^2 (l2), c sign(g) / |g|_1
    (linf); with a box the step stays inside it and still reaches the hyperplane when it can,
    never shorter than the closed form."""
    gen = torch.Generator().manual_seed(seed)
    g, z = torch.randn(4, 6, generator=gen), torch.rand(4, 6, generator=gen)
    c = torch.randn(4, generator=gen) * 0.3
    free = LpBall(norm, 1.0, lo=-math.inf, hi=math.inf)
    d = project_on_hyperplane(g, c, z, free)
    closed = (c.unsqueeze(1) * g / g.pow(2).sum(1, keepdim=True) if norm == "l2"
              else c.unsqueeze(1) * g.sign() / g.abs().sum(1, keepdim=True))
    torch.testing.assert_close(d, closed, rtol=1e-4, atol=1e-5)
    boxed = LpBall(norm, 1.0)
    db = project_on_hyperplane(g, c, z, boxed)
    assert bool(((z + db >= -1e-6) & (z + db <= 1 + 1e-6)).all())
    reachable = (g * (torch.where(c.unsqueeze(1) * g > 0, 1 - z, -z))).sum(1).abs() >= c.abs()
    torch.testing.assert_close((g * db).sum(1)[reachable], c[reachable], rtol=1e-3, atol=1e-4)
    assert bool((free.norm_of(db) >= free.norm_of(d) - 1e-5).all())


def test_linear_model_distance_within_the_overshoot() -> None:
    """On a two-class affine model the minimal l2 / linf distance is |margin| / |w|_dual; FAB
    lands within its 5% overshoot of it, never below it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 2)).eval()
    x = torch.rand(10, 6, generator=torch.Generator().manual_seed(1)) * 0.2 + 0.4
    with torch.no_grad():
        y = model(x).argmax(1)
        w = model[1].weight[1] - model[1].weight[0]
        gap = (model(x)[:, 1] - model(x)[:, 0]).abs()
    for norm, dual in (("l2", w.norm()), ("linf", w.abs().sum())):
        res = FABTargeted(steps=20, n_target_classes=1)(model, x, y,
                                                        LpBall(norm, 100.0, lo=-50, hi=50))
        exact = gap / dual
        assert bool(res.success.all())
        assert bool((res.norm >= exact * (1 - 1e-4)).all())
        assert bool((res.norm <= exact * 1.06).all())


def test_breaks_what_apgd_breaks_on_digits() -> None:
    x, y = digits_batch(16)
    threat = LpBall("l2", 1.0)
    apgd = APGD(steps=20)(digits_model(), x, y, threat, generator=torch.Generator().manual_seed(0))
    fab = FABTargeted(steps=20, n_target_classes=2)(digits_model(), x, y, threat)
    assert int(apgd.success.sum()) >= 8
    assert float(fab.success[apgd.success].float().mean()) >= 0.9
    assert bool((fab.success | fab.exhausted).all())


def test_strongest_with_fab_runs_the_full_cascade() -> None:
    x, y = digits_batch(12)
    threat = LpBall("linf", 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ens = strongest(threat, steps=5, n_target_classes=2, queries=20, fab=True)
        res = ens(digits_model(), x, y, threat, generator=torch.Generator().manual_seed(0))
    assert list(res.info["timings"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert bool((res.success | ~res.success).all()) and res.x_adv.shape == x.shape
    assert "fab-t" not in strongest(threat, steps=5, n_target_classes=2, queries=20)(
        digits_model(), x, y, threat, generator=torch.Generator().manual_seed(0)).info["timings"]


def test_bad_configurations() -> None:
    for kwargs, message in [({"steps": 0}, "'steps' parameter of FABTargeted"),
                            ({"n_target_classes": 0}, "'n_target_classes'"),
                            ({"alpha_max": 2.0}, "'alpha_max'"),
                            ({"eta": 0.5}, "'eta'"),
                            ({"beta": -0.1}, "'beta'")]:
        with pytest.raises(InvalidParameterError, match=message):
            FABTargeted(**kwargs)
    with pytest.raises(InvalidParameterError, match="'fab'"):
        strongest(LpBall("linf", 0.1), fab=1)  # type: ignore[arg-type]
