"""Input-gradient regularisers: TV (gradient-norm) and Lipschitz penalties, finite differences."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from objectives_helpers import digits, one_thread, own_loss_drop, small_mlp  # noqa: F401

from advrobust.core.threat import Norm, lp_norm
from advrobust.errors import InvalidParameterError
from advrobust.training.objectives import Standard
from advrobust.training.regularizers import (
    Composite,
    GradientNormPenalty,
    LipschitzPenalty,
    input_gradient_norm,
)


def _autograd_norms(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                    norm: Norm) -> torch.Tensor:
    xr = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(xr), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, xr)
    return lp_norm(g, norm.dual)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), norm=st.sampled_from(["linf", "l2", "l1"]))
def test_finite_difference_norm_matches_autograd(seed: int, norm: str) -> None:
    model = small_mlp(seed % 7).double()
    data = digits("test")
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:16]
    x, y = data.x[idx].double(), data.y[idx]
    exact = _autograd_norms(model, x, y, Norm.parse(norm))
    _, fd = input_gradient_norm(model, x, y, norm, method="finite-difference", h=1e-6)
    _, db = input_gradient_norm(model, x, y, norm, method="double-backprop")
    torch.testing.assert_close(db, exact, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(fd, exact, rtol=2e-2, atol=1e-4)


def test_finite_difference_weight_gradient_matches_double_backprop() -> None:
    data = digits("test")
    x, y = data.x[:32].double(), data.y[:32]
    grads = []
    for dbp in (False, True):
        model = small_mlp(1).double()
        GradientNormPenalty(eps=1.0, norm="l2", h=1e-5, double_backprop=dbp,
                            base=Standard())(model, x, y, 1.0).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    cos = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)
    assert cos > 0.99


def test_penalty_value_is_base_plus_weighted_norm() -> None:
    model = small_mlp(2)
    x, y = digits("test").x[:16], digits("test").y[:16]
    loss, gnorm = input_gradient_norm(model, x, y, "l2", method="double-backprop")
    tv = GradientNormPenalty(eps=0.3, norm="l2", double_backprop=True)(model, x, y, 0.0)
    lip = LipschitzPenalty(lam=0.5, norm="l2", double_backprop=True)(model, x, y, 0.0)
    torch.testing.assert_close(tv, loss.mean() + 0.3 * gnorm.mean())
    torch.testing.assert_close(lip, loss.mean() + 0.5 * gnorm.amax())
    both = Composite(objectives=[Standard(), Standard()], weights=[1.0, 2.0])(model, x, y, 0.0)
    torch.testing.assert_close(both, 3 * loss.mean())


@pytest.mark.parametrize("objective", [
    GradientNormPenalty(eps=0.1),
    GradientNormPenalty(eps=0.1, double_backprop=True),
    LipschitzPenalty(lam=0.1, base=GradientNormPenalty(eps=0.1)),
], ids=["tv", "tv-double-backprop", "tv-lip"])
def test_objective_lowers_its_own_loss(objective: object) -> None:
    before, after = own_loss_drop(objective)  # type: ignore[arg-type]
    assert after < 0.8 * before


def test_penalty_lowers_the_gradient_norm() -> None:
    x, y = digits("train").x[:128], digits("train").y[:128]
    norms = {}
    for eps in (0.0, 2.0):
        torch.manual_seed(0)
        model = small_mlp(0)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        for _ in range(40):
            opt.zero_grad()
            GradientNormPenalty(eps=eps, norm="l2")(model, x, y, 1.0).backward()
            opt.step()
        norms[eps] = float(_autograd_norms(model, x, y, Norm.L2).mean())
    assert norms[2.0] < 0.7 * norms[0.0]


@pytest.mark.parametrize("make", [
    lambda: GradientNormPenalty(eps=-0.1),
    lambda: GradientNormPenalty(eps=0.1, norm="l3"),
    lambda: GradientNormPenalty(eps=0.1, h=0.0),
    lambda: LipschitzPenalty(lam=0.1, base="standard"),
    lambda: Composite(objectives=[]),
    lambda: Composite(objectives=[Standard()], weights=[1.0, 2.0]),
])
def test_bad_parameters_raise(make: object) -> None:
    with pytest.raises(InvalidParameterError, match="parameter of"):
        make()  # type: ignore[operator]
