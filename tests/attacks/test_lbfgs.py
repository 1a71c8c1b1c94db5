"""L-BFGS (Szegedy et al.): contract, search over c, threats, already-broken samples."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from advrobust import InvalidParameterError, InvalidThreatModelError, LpBall
from advrobust.attacks import LBFGS
from attacks._catalogue import digits_batch, digits_model, one_thread
from attacks.common import batch_for, check_attack


@pytest.fixture(autouse=True)
def _single_thread() -> object:
    with one_thread():
        yield


@pytest.mark.parametrize(("norm", "eps"), [("l2", 1.0), ("linf", 0.2)])
def test_contract(norm: str, eps: float, tiny_mlp: nn.Module) -> None:
    x, y = batch_for(tiny_mlp, n=6)
    attack = LBFGS(search_steps=2, max_iter=4)
    check_attack(attack, tiny_mlp, x, y, LpBall(norm, eps))
    check_attack(attack, tiny_mlp, x, y, LpBall(norm, eps), target=(y + 1) % 3)


def test_targeted_reaches_targets_and_the_search_only_improves() -> None:
    """The search's first round is the one-round run: per sample it can only get closer."""
    x, y = digits_batch(12)
    target = (y + 1) % 10
    threat = LpBall("l2", 8.0)
    one = LBFGS(search_steps=1, max_iter=15)(digits_model(), x, y, threat, target=target)
    many = LBFGS(search_steps=3, max_iter=15)(digits_model(), x, y, threat, target=target)
    assert int(one.success.sum()) >= 8
    assert bool((many.success | ~one.success).all())
    both = one.success & many.success
    assert bool((many.norm[both] <= one.norm[both] + 1e-6).all())
    assert float(many.norm[both].mean()) < float(one.norm[both].mean())


def test_untargeted_aims_at_the_runner_up() -> None:
    x, y = digits_batch(8)
    result = LBFGS(search_steps=2, max_iter=30)(digits_model(), x, y, LpBall("l2", 8.0))
    with torch.no_grad():
        runner_up = digits_model()(x).topk(2, dim=1).indices[:, 1]
    assert torch.equal(result.info["aimed_at"], runner_up)
    assert result.success_rate >= 0.75


def test_linf_bounds_keep_every_iterate_feasible() -> None:
    x, y = digits_batch(8)
    threat = LpBall("linf", 0.05)
    result = LBFGS(search_steps=2, max_iter=30)(digits_model(), x, y, threat)
    assert bool((result.norm <= 0.05 + 1e-6).all())
    assert torch.equal(result.exhausted, ~result.success)


def test_already_classified_as_target() -> None:
    x, y = digits_batch(4)
    with torch.no_grad():
        pred = digits_model()(x).argmax(1)
    with pytest.warns(UserWarning, match="already classified as their target"):
        result = LBFGS(max_iter=5)(digits_model(), x, (y + 1) % 10, LpBall("l2", 1.0),
                                   target=pred)
    assert bool((result.norm == 0).all()) and bool(result.success.all())


def test_bad_configurations(tiny_mlp: nn.Module) -> None:
    for kwargs, message in [({"c_init": 0.0}, "'c_init' parameter of LBFGS"),
                            ({"c_init": math.nan}, "'c_init'"),
                            ({"search_steps": 0}, "'search_steps'"),
                            ({"max_iter": 0}, "'max_iter'")]:
        with pytest.raises(InvalidParameterError, match=message):
            LBFGS(**kwargs)
    x, y = batch_for(tiny_mlp, n=4)
    with pytest.raises(InvalidThreatModelError, match="norms"):
        LBFGS()(tiny_mlp, x, y, LpBall("l1", 1.0))
