"""Training for randomized smoothing: consistency regularisation and SmoothAdv."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from objectives_helpers import digits, one_thread, own_loss_drop, small_mlp  # noqa: F401

from advrobust.errors import InvalidParameterError
from advrobust.training.smoothing import ConsistencyRegularization, SmoothAdv


@pytest.mark.parametrize("objective", [
    ConsistencyRegularization(sigma=0.25, seed=0), SmoothAdv(sigma=0.25, eps=0.5, seed=0)])
def test_objective_lowers_its_own_loss(objective: object) -> None:
    before, after = own_loss_drop(objective)  # type: ignore[arg-type]
    assert after < 0.8 * before


def test_consistency_at_zero_sigma_is_cross_entropy_plus_entropy() -> None:
    """Identical copies: the KL term vanishes and the loss is CE + eta * H(softmax)."""
    model = small_mlp(0)
    x, y = digits("test").x[:32], digits("test").y[:32]
    logits = model(x)
    p = F.softmax(logits, dim=1)
    entropy = -(p * p.log()).sum(dim=1).mean()
    got = ConsistencyRegularization(sigma=0.0, m=3, lam=7.0, eta=0.3)(model, x, y, 0.0)
    torch.testing.assert_close(got, F.cross_entropy(logits, y) + 0.3 * entropy)


def test_consistency_penalises_disagreement_between_copies() -> None:
    model = small_mlp(0)
    x, y = digits("test").x[:64], digits("test").y[:64]
    plain = ConsistencyRegularization(sigma=0.5, lam=0.0, eta=0.0, seed=3)(model, x, y, 0.0)
    kl = ConsistencyRegularization(sigma=0.5, lam=10.0, eta=0.0, seed=3)(model, x, y, 0.0)
    assert float(kl.detach()) > float(plain.detach())  # same noise: the difference is 10 * KL > 0


def test_smoothadv_attack_stays_in_the_ball_and_raises_the_smoothed_loss() -> None:
    model = small_mlp(0).eval()
    x, y = digits("test").x[:64], digits("test").y[:64]
    objective = SmoothAdv(sigma=0.25, eps=0.5, steps=3, m=2, warmup=0.0, seed=0)
    noise = 0.25 * torch.randn((128, *x.shape[1:]), generator=torch.Generator().manual_seed(1))
    x_adv = objective._attack(model, x, y, noise, 0.5)
    assert float((x_adv - x).flatten(1).norm(dim=1).max()) <= 0.5 + 1e-5
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1

    def smoothed_loss(z: torch.Tensor) -> float:
        probs = F.softmax(model(z.repeat(2, 1, 1, 1) + noise), dim=1).view(2, 64, -1).mean(0)
        return float(-probs.gather(1, y[:, None]).log().mean().detach())

    assert smoothed_loss(x_adv) > smoothed_loss(x)
    assert not model.training


@pytest.mark.parametrize("cls, kwargs", [
    (ConsistencyRegularization, {"sigma": -1.0}),
    (ConsistencyRegularization, {"sigma": 0.1, "m": 1}),
    (ConsistencyRegularization, {"sigma": 0.1, "lam": -1.0}),
    (SmoothAdv, {"sigma": 0.1, "eps": -1}),
    (SmoothAdv, {"sigma": 0.1, "steps": 0}), (SmoothAdv, {"sigma": 0.1, "warmup": 2.0})])
def test_bad_parameters_raise(cls: type, kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidParameterError, match=f"parameter of {cls.__name__}"):
        cls(**kwargs)
