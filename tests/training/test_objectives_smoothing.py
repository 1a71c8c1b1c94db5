"""Training for randomized smoothing: consistency regularisation and SmoothAdv."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from objectives_helpers import digits, one_thread, own_loss_drop, small_mlp  # noqa: F401
from torch import nn

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


class _Recorder(nn.Module):
    """A fixed linear map that remembers the inputs it was given (float64)."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(11)
        self.weight = torch.randn(classes, dim, generator=gen, dtype=torch.float64)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return x.flatten(1) @ self.weight.T


@pytest.mark.parametrize("m", [2, 4])
def test_consistency_draws_m_independent_noises_per_input(m: int) -> None:
    """Each of the m copies of an input gets its own N(0, sigma^2 I) draw: per copy the noise
    has the right scale, and no two copies share (or correlate in) their noise."""
    sigma, batch = 0.5, 64
    x = torch.rand(batch, 1, 8, 8, dtype=torch.float64)
    y = torch.arange(batch) % 3
    model = _Recorder(64, 3)
    ConsistencyRegularization(sigma=sigma, m=m, seed=0)(model, x, y, 0.0)
    (seen,) = model.seen
    assert seen.shape == (m * batch, 1, 8, 8)
    noise = (seen.view(m, batch, -1) - x.view(1, batch, -1)) / sigma  # (m, B, 64)
    for i in range(m):  # 4,096 N(0, 1) values per copy: std within +-0.05 by a wide margin
        assert abs(float(noise[i].std()) - 1.0) < 0.05
        assert abs(float(noise[i].mean())) < 0.05
        for j in range(i):
            corr = float((noise[i] * noise[j]).mean())  # ~N(0, 1/4096): sd 0.016
            assert abs(corr) < 0.1, (i, j, corr)


@pytest.mark.parametrize("m", [2, 4])
def test_consistency_with_m_copies_equals_its_closed_form(m: int) -> None:
    """On a linear model, recomputed by hand from the m noisy inputs the model saw:
    mean_i CE(z_i, y) + lam * mean_i KL(p_bar || p_i) + eta * H(p_bar), averaged over inputs."""
    batch, lam, eta = 5, 3.0, 0.7
    x = torch.rand(batch, 1, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])
    model = _Recorder(16, 3)
    got = ConsistencyRegularization(sigma=0.8, m=m, lam=lam, eta=eta, seed=5)(model, x, y, 0.0)
    copies = model.seen[0].view(m, batch, 16)
    total = 0.0
    for b in range(batch):
        probs = [torch.softmax(model.weight @ copies[i, b], 0) for i in range(m)]
        p_bar = sum(probs) / m
        ce = sum(-float(p[y[b]].log()) for p in probs) / m
        kl = sum(float((p_bar * (p_bar / p).log()).sum()) for p in probs) / m
        entropy = -float((p_bar * p_bar.log()).sum())
        total += ce + lam * kl + eta * entropy
    assert float(got) == pytest.approx(total / batch, rel=1e-9)
