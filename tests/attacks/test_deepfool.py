"""DeepFool: contract, the closed form on a linear classifier, batching, eps ceiling, bad input."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advrobust import InvalidParameterError, InvalidThreatModelError, LpBall
from advrobust.attacks import PGD, DeepFool
from attacks._catalogue import digits_batch, digits_model, one_thread
from attacks.common import batch_for, check_attack

UNBOUNDED = {"lo": -math.inf, "hi": math.inf}


@pytest.fixture(autouse=True)
def _single_thread() -> object:
    with one_thread():
        yield


@pytest.mark.parametrize(("norm", "eps"), [("l2", 0.5), ("linf", 0.1)])
def test_contract(norm: str, eps: float, tiny_mlp: nn.Module) -> None:
    x, y = batch_for(tiny_mlp, n=8)
    check_attack(DeepFool(norm=norm, steps=10), tiny_mlp, x, y, LpBall(norm, eps))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), norm=st.sampled_from(["l2", "linf"]))
def test_exact_distance_to_a_linear_binary_boundary(seed: int, norm: str) -> None:
    """Two affine logits: DeepFool (no overshoot) lands on the boundary in one step, at the
    distance |w.x + b| / ||w||_q, q the dual norm (2 for l2, 1 for linf)."""
    gen = torch.Generator().manual_seed(seed)
    layer = nn.Linear(5, 2).double().eval()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(2, 5, generator=gen, dtype=torch.float64))
        layer.bias.copy_(torch.randn(2, generator=gen, dtype=torch.float64))
    x = torch.randn(16, 5, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y = layer(x).argmax(1)
        w = layer.weight[1] - layer.weight[0]
        gap = (x @ w + layer.bias[1] - layer.bias[0]).abs()
    dual = w.norm() if norm == "l2" else w.abs().sum()
    result = DeepFool(norm=norm, overshoot=0.0)(layer, x, y, LpBall(norm, 1e3, **UNBOUNDED))
    assert bool(result.success.all())
    torch.testing.assert_close(result.norm, gap / dual + 1e-4 / dual, rtol=1e-6, atol=1e-9)
    assert bool((result.info["iterations"] == 2).all())  # one step, one check


def test_batched_equals_one_sample_at_a_time() -> None:
    x, y = digits_batch(10)
    model, threat = digits_model(), LpBall("l2", 5.0)
    batched = DeepFool()(model, x, y, threat)
    for i in range(0, 10, 3):
        alone = DeepFool()(model, x[i:i + 1], y[i:i + 1], threat)
        torch.testing.assert_close(alone.x_adv[0], batched.x_adv[i], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("norm", "eps"), [("l2", 0.3), ("linf", 0.05)])
def test_breaks_every_sample_pgd_breaks_within_eps(norm: str, eps: float) -> None:
    """Capped at eps, DeepFool's answer is within eps wherever PGD found a success."""
    x, y = digits_batch(40)
    threat = LpBall(norm, eps)
    pgd = PGD(steps=20)(digits_model(), x, y, threat, generator=torch.Generator().manual_seed(0))
    assert int(pgd.success.sum()) >= 3
    deepfool = DeepFool(norm=norm)(digits_model(), x, y, threat)
    assert bool(deepfool.success[pgd.success].all())


def test_eps_ceiling_projects_and_flags() -> None:
    x, y = digits_batch(24)
    free = DeepFool()(digits_model(), x, y, LpBall("l2", 10.0))
    eps = float(free.norm.median())
    capped = DeepFool()(digits_model(), x, y, LpBall("l2", eps))
    assert bool((capped.norm <= eps + 1e-5).all())
    far = free.norm > eps * 1.05
    assert not bool(capped.success[far].any())
    near = free.norm <= eps
    torch.testing.assert_close(capped.x_adv[near], free.x_adv[near])
    assert torch.equal(free.exhausted, ~free.success)


def test_candidates_restrict_the_classes_considered() -> None:
    x, y = digits_batch(24)
    two = DeepFool(candidates=2)(digits_model(), x, y, LpBall("l2", 10.0))
    with torch.no_grad():
        runner_up = digits_model()(x).topk(2, dim=1).indices[:, 1]
        pred = digits_model()(two.x_adv).argmax(1)
    assert bool((pred[two.success] == runner_up[two.success]).all())


def test_already_misclassified_samples_get_norm_zero() -> None:
    x, y = digits_batch(6)
    with pytest.warns(UserWarning, match="6 of 6 samples are already misclassified"):
        result = DeepFool()(digits_model(), x, (y + 3) % 10, LpBall("l2", 1.0))
    assert bool(result.success.all()) and bool((result.norm == 0).all())


def test_bad_configurations_and_threats(tiny_mlp: nn.Module) -> None:
    for kwargs, message in [({"norm": "l1"}, "'norm' parameter of DeepFool"),
                            ({"overshoot": -0.1}, "'overshoot'"),
                            ({"steps": 0}, "'steps'"),
                            ({"candidates": 1}, "'candidates'")]:
        with pytest.raises(InvalidParameterError, match=message):
            DeepFool(**kwargs)
    x, y = batch_for(tiny_mlp, n=4)
    with pytest.raises(InvalidThreatModelError, match="same norm"):
        DeepFool()(tiny_mlp, x, y, LpBall("linf", 0.1))
    with pytest.raises(InvalidThreatModelError, match="untargeted"):
        DeepFool()(tiny_mlp, x, y, LpBall("l2", 0.1), target=(y + 1) % 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DeepFool(steps=2)(tiny_mlp, x, y, LpBall("l2", 0.1))
