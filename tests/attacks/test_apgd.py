"""APGD / APGD-T (Croce & Hein 2020): contract, checkpoints, closed forms, and APGD >= PGD."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from advrobust import LpBall
from advrobust.attacks import APGD, PGD, APGDTargeted
from advrobust.attacks.apgd import apgd_checkpoints, dlr_targeted_loss
from advrobust.errors import InvalidInputError, InvalidParameterError, InvalidThreatModelError
from attacks._catalogue import digits_batch, digits_model
from attacks.common import batch_for, check_attack


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
@pytest.mark.parametrize("attack", [APGD(steps=8), APGD(loss="dlr", steps=8, restarts=2),
                                    APGDTargeted(steps=6, n_target_classes=2)],
                         ids=["ce", "dlr", "targeted"])
def test_contract(tiny_mlp: nn.Module, attack: APGD, norm: str, eps: float) -> None:
    x, y = batch_for(tiny_mlp)
    check_attack(attack, tiny_mlp, x, y, LpBall(norm, eps))


def test_contract_with_target(tiny_mlp: nn.Module) -> None:
    x, y = batch_for(tiny_mlp)
    target = (y + 1) % 3
    for attack in (APGD(steps=5), APGDTargeted(steps=5)):
        res = check_attack(attack, tiny_mlp, x, y, LpBall("linf", 0.2), target=target)
        assert torch.equal(res.exhausted, ~res.success)


def test_checkpoints_follow_the_paper() -> None:
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (p_{j+1} = p_j + max(p_j - p_{j-1} - .03, .06))
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(1) == [1]


def test_dlr_targeted_closed_form() -> None:
    logits = torch.tensor([[5.0, 3.0, 1.0, 0.0, -1.0]])
    y, t = torch.tensor([0]), torch.tensor([2])
    expected = -(5.0 - 1.0) / (5.0 - (1.0 + 0.0) / 2)
    torch.testing.assert_close(dlr_targeted_loss(logits, y, t), torch.tensor([expected]))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_reaches_the_linear_optimum(norm: str) -> None:
    """For an affine two-class model and no input box the worst margin is the closed form
    ``m - eps ||w_y - w_t||_q``: APGD must reach it (its step-size halving converges)."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    x = torch.rand(10, 1, 4, 4)
    y = model(x).argmax(1)
    eps = 0.05 if norm == "linf" else 0.3
    threat = LpBall(norm, eps, -math.inf, math.inf)
    w, logits = model[1].weight.detach(), model(x).detach()
    diff = w[y] - w[1 - y]
    dual = diff.abs().sum(-1) if norm == "linf" else diff.norm(dim=-1)
    optimum = logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, (1 - y)[:, None]).squeeze(
        1) - eps * dual
    res = APGD(steps=40)(model, x, y, threat, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(res.margin, optimum, atol=1e-4, rtol=1e-4)


def test_no_worse_than_pgd_with_equal_budget() -> None:
    model = digits_model()
    x, y = digits_batch(64)
    threat = LpBall("linf", 0.08)
    gen = torch.Generator().manual_seed(0)
    apgd = APGD(steps=50)(model, x, y, threat, generator=gen)
    pgd = PGD(steps=50)(model, x, y, threat, generator=torch.Generator().manual_seed(0))
    assert apgd.success.sum() >= pgd.success.sum()
    assert float(apgd.margin.mean()) <= float(pgd.margin.mean()) + 1e-6
    assert 0 < int(apgd.success.sum()) < 64  # the budget is neither trivial nor hopeless


def test_targeted_variant_breaks_at_least_as_often_as_ce_on_digits() -> None:
    model = digits_model()
    x, y = digits_batch(48)
    threat = LpBall("l2", 0.6)
    ce = APGD(steps=30)(model, x, y, threat, generator=torch.Generator().manual_seed(0))
    t = APGDTargeted(steps=30, n_target_classes=3)(model, x, y, threat,
                                                   generator=torch.Generator().manual_seed(0))
    assert int(t.success.sum()) >= int(ce.success.sum()) - 2
    assert bool((t.margin[t.success] < 0).all())


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"loss": "hinge"}, {"rho": 1.5},
                                    {"restarts": 0}, {"random_start": 1}])
def test_bad_parameters_raise(kwargs: dict) -> None:
    with pytest.raises(InvalidParameterError, match="parameter of APGD"):
        APGD(**kwargs)
    with pytest.raises(InvalidParameterError):
        APGDTargeted(n_target_classes=0)


def test_unsupported_norm_and_two_class_dlr(tiny_mlp: nn.Module) -> None:
    x, y = batch_for(tiny_mlp)
    with pytest.raises(InvalidThreatModelError, match="l1"):
        APGD()(tiny_mlp, x, y, LpBall("l1", 1.0))
    two = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    with pytest.raises(InvalidInputError, match=">= 3 classes"):
        APGD(loss="dlr")(two, x, torch.zeros(12, dtype=torch.int64), LpBall("linf", 0.1))
