"""HopSkipJump: contract, queries, progress with iterations, eps ceiling, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from advrobust import InvalidParameterError, InvalidThreatModelError, LpBall
from advrobust.attacks import HopSkipJump
from attacks._catalogue import digits_batch, digits_model, one_thread
from attacks.common import batch_for, check_attack


@pytest.fixture(autouse=True)
def _single_thread() -> object:
    with one_thread():
        yield


def test_contract(tiny_mlp: nn.Module) -> None:
    x, y = batch_for(tiny_mlp, n=6)
    check_attack(HopSkipJump(steps=2, init_num_evals=10), tiny_mlp, x, y, LpBall("l2", 2.0))


def test_iterations_shrink_the_distance_and_queries_are_counted() -> None:
    x, y = digits_batch(12)
    threat = LpBall("l2", 8.0)
    runs = [HopSkipJump(steps=s, init_num_evals=30)(
        digits_model(), x, y, threat, generator=torch.Generator().manual_seed(0)) for s in (0, 4)]
    start, walked = runs
    assert bool(start.success.all()) and bool(walked.success.all())
    assert float(walked.norm.mean()) < 0.8 * float(start.norm.mean())
    with torch.no_grad():
        assert bool((digits_model()(walked.x_adv).argmax(1) != y).all())
    queries = walked.info["queries_per_sample"]
    assert bool((queries > start.info["queries_per_sample"]).all())
    assert bool((queries >= sum(int(30 * math.sqrt(t)) for t in range(1, 5))).all())


def test_eps_ceiling_returns_the_clean_point() -> None:
    x, y = digits_batch(8)
    result = HopSkipJump(steps=2, init_num_evals=20)(digits_model(), x, y, LpBall("l2", 0.05),
                                                     generator=torch.Generator().manual_seed(0))
    assert bool((~result.success).all())
    assert torch.equal(result.x_adv, x) and bool(result.exhausted.all())


def test_bad_configurations_and_threats(tiny_mlp: nn.Module) -> None:
    for kwargs, message in [({"steps": -1}, "'steps' parameter of HopSkipJump"),
                            ({"init_num_evals": 1}, "'init_num_evals'"),
                            ({"max_num_evals": 0}, "'max_num_evals'"),
                            ({"gamma": 0.0}, "'gamma'")]:
        with pytest.raises(InvalidParameterError, match=message):
            HopSkipJump(**kwargs)
    x, y = batch_for(tiny_mlp, n=3)
    with pytest.raises(InvalidThreatModelError, match="norms"):
        HopSkipJump()(tiny_mlp, x, y, LpBall("linf", 0.1))
    with pytest.raises(InvalidThreatModelError, match="bounded input box"):
        HopSkipJump()(tiny_mlp, x, y, LpBall("l2", 1.0, lo=-math.inf, hi=math.inf))
