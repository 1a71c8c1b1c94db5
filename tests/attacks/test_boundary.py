"""Boundary attack: contract, queries, monotone walk, eps ceiling, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from advrobust import InvalidParameterError, InvalidThreatModelError, LpBall
from advrobust.attacks import Boundary, DeepFool
from attacks._catalogue import digits_batch, digits_model, one_thread
from attacks.common import batch_for, check_attack


@pytest.fixture(autouse=True)
def _single_thread() -> object:
    with one_thread():
        yield


def test_contract(tiny_mlp: nn.Module) -> None:
    x, y = batch_for(tiny_mlp, n=6)
    check_attack(Boundary(steps=20), tiny_mlp, x, y, LpBall("l2", 2.0))


def test_queries_reported_and_successes_adversarial() -> None:
    x, y = digits_batch(12)
    result = Boundary(steps=100)(digits_model(), x, y, LpBall("l2", 8.0),
                                 generator=torch.Generator().manual_seed(0))
    queries = result.info["queries_per_sample"]
    assert bool((queries >= 2 * 100).all()) and bool(result.success.any())
    assert result.queries >= 100  # batched passes: at least one per step
    with torch.no_grad():
        pred = digits_model()(result.x_adv).argmax(1)
    assert bool((pred[result.success] != y[result.success]).all())


def test_walking_longer_never_moves_away() -> None:
    """Same seed: the longer walk extends the shorter one, and only closer points are kept."""
    x, y = digits_batch(12)
    threat = LpBall("l2", 8.0)
    runs = [Boundary(steps=s)(digits_model(), x, y, threat,
                              generator=torch.Generator().manual_seed(0)) for s in (30, 300)]
    short, long = runs
    assert bool(short.success.all()) and bool(long.success.all())
    assert bool((long.norm <= short.norm + 1e-6).all())
    assert float(long.norm.mean()) < 0.9 * float(short.norm.mean())
    free = DeepFool()(digits_model(), x, y, threat)  # the walk stays above the true minimum...
    assert float(long.norm.mean()) < 3 * float(free.norm.mean())  # ...but gets near it


def test_eps_ceiling_returns_the_clean_point() -> None:
    x, y = digits_batch(12)
    result = Boundary(steps=30)(digits_model(), x, y, LpBall("l2", 0.05),
                                generator=torch.Generator().manual_seed(0))
    fail = ~result.success
    assert bool(fail.any())
    assert torch.equal(result.x_adv[fail], x[fail])
    assert torch.equal(result.exhausted, fail)


def test_bad_configurations_and_threats(tiny_mlp: nn.Module) -> None:
    for kwargs, message in [({"steps": -1}, "'steps' parameter of Boundary"),
                            ({"spherical_step": 0.0}, "'spherical_step'"),
                            ({"source_step": -1.0}, "'source_step'"),
                            ({"init": "blended"}, "'init'")]:
        with pytest.raises(InvalidParameterError, match=message):
            Boundary(**kwargs)
    x, y = batch_for(tiny_mlp, n=3)
    with pytest.raises(InvalidThreatModelError, match="norms"):
        Boundary()(tiny_mlp, x, y, LpBall("linf", 0.1))
    with pytest.raises(InvalidThreatModelError, match="bounded input box"):
        Boundary()(tiny_mlp, x, y, LpBall("l2", 1.0, lo=-math.inf, hi=math.inf))


def test_already_misclassified_samples_cost_no_queries() -> None:
    x, y = digits_batch(4)
    wrong = y.clone()
    wrong[:2] = (y[:2] + 1) % 10
    with pytest.warns(UserWarning, match="2 of 4 samples are already misclassified"):
        result = Boundary(steps=10)(digits_model(), x, wrong, LpBall("l2", 8.0),
                                    generator=torch.Generator().manual_seed(0))
    assert bool((result.norm[:2] == 0).all()) and bool(result.success[:2].all())
    assert bool((result.info["queries_per_sample"][:2] == 0).all())
    assert bool((result.info["queries_per_sample"][2:] > 0).all())


def test_start_falls_back_to_other_inputs_of_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    from advrobust.attacks import boundary as boundary_module

    monkeypatch.setattr(boundary_module, "_INIT_TRIALS", 0)  # no uniform noise at all
    x, y = digits_batch(8)
    result = Boundary(steps=5)(digits_model(), x, y, LpBall("l2", 28.0),
                               generator=torch.Generator().manual_seed(0))
    assert not bool(result.info["no_start"].any())
    assert bool(result.success.all())
