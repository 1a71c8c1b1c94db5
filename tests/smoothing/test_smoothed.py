"""Randomized smoothing against closed forms: a linear classifier's smoothed probabilities are
``P(f(x + N(0, sigma^2 I)) = 1) = Phi((w.x + b) / (sigma ||w||))`` and its smoothed classifier's
exact robust radius is the distance to the hyperplane ``|w.x + b| / ||w||``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from advrobust.smoothing import (
    ABSTAIN,
    Smoothed,
    SmoothingCertificate,
    max_certifiable_radius,
    min_n_to_certify,
    min_n_to_predict,
)

SIGMA = 0.5
W = torch.tensor([3.0, -4.0])  # ||w|| = 5


def linear_model() -> nn.Module:
    """Logits (0, w.x, -100): class 1 iff w.x > 0; the third class never wins (K = 3)."""
    layer = nn.Linear(2, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.stack([torch.zeros(2), W, torch.zeros(2)]))
        layer.bias.copy_(torch.tensor([0.0, 0.0, -100.0]))
    return layer.eval()


def point_at(distance: float) -> torch.Tensor:
    """A point at signed distance ``distance`` from the hyperplane w.x = 0 (positive: class 1)."""
    return (W / W.norm() * distance)[None]


def true_p_a(distance: float) -> float:
    return 0.5 * (1 + math.erf(abs(distance) / SIGMA / math.sqrt(2)))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_certified_radius_never_exceeds_true_radius_and_failures_stay_below_alpha() -> None:
    """2000 independent CERTIFY runs per point: a failure (wrong class or a radius beyond the
    exact one) happens with probability <= alpha by Clopper-Pearson coverage."""
    alpha, trials = 0.1, 2000
    smoothed = Smoothed(linear_model(), SIGMA)
    for distance in (0.2, 0.6, 1.0):
        x = point_at(distance).repeat(trials, 1)
        cert = smoothed.certify(x, n0=20, n=100, alpha=alpha, batch_size=4096,
                                generator=gen(int(distance * 10)))
        made = ~cert.abstained
        failed = made & ((cert.prediction != 1) | (cert.radius > distance))
        rate = float(failed.double().mean())
        assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials), (distance, rate)
        # the radius tracks the exact one: p_lower is a lower bound close to true p_A
        assert float(cert.radius[made].median()) > 0.5 * distance
        assert cert.radius.max() <= max_certifiable_radius(SIGMA, 100, alpha) + 1e-9


def test_certify_is_tight_on_easy_points_with_large_n() -> None:
    smoothed = Smoothed(linear_model(), SIGMA)
    cert = smoothed.certify(point_at(-0.4), n0=100, n=20_000, alpha=0.001,
                            generator=gen(0))
    assert cert.prediction.tolist() == [0] and not bool(cert.abstained[0])
    assert 0.3 < float(cert.radius[0]) <= 0.4
    assert abs(float(cert.counts[0, 0]) / 20_000 - true_p_a(0.4)) < 0.02
    assert cert.counts.shape == (1, 3) and int(cert.counts.sum()) == 20_000


def test_predict_wrong_answer_rate_below_alpha_and_abstains_on_the_boundary() -> None:
    alpha, trials = 0.05, 1000
    smoothed = Smoothed(linear_model(), SIGMA)
    # on the hyperplane both classes have probability 1/2: PREDICT must (nearly) always abstain
    pred = smoothed.predict(point_at(0.0).repeat(trials, 1), n=200, alpha=alpha,
                            generator=gen(1))
    answered = float((~pred.abstained).double().mean())
    assert answered <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)
    assert bool((pred.prediction[pred.abstained] == ABSTAIN).all())
    # slightly on the class-0 side: answers are class 0, a wrong answer has rate <= alpha
    pred = smoothed.predict(point_at(-0.02).repeat(trials, 1), n=200, alpha=alpha,
                            generator=gen(2))
    wrong = float((pred.prediction == 1).double().mean())
    assert wrong <= alpha
    # far from it: always answered, and correctly
    pred = smoothed.predict(point_at(-1.0).repeat(50, 1), n=200, alpha=alpha, generator=gen(3))
    assert pred.prediction.tolist() == [0] * 50 and float(pred.p_value.max()) <= alpha


def test_certified_points_keep_their_class_on_fresh_samples() -> None:
    """Inside a certified ball, PREDICT with fresh noise never returns another class."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
        x = torch.randn(12, 4)
        directions = torch.randn(12, 4)
    directions = directions / directions.norm(dim=1, keepdim=True)
    smoothed = Smoothed(model, 0.25)
    cert = smoothed.certify(x, n0=100, n=5000, alpha=0.001, generator=gen(4))
    made = ~cert.abstained
    assert int(made.sum()) >= 6
    moved = x + 0.9 * cert.radius.float()[:, None] * directions
    pred = smoothed.predict(moved[made], n=3000, alpha=0.001, generator=gen(5))
    kept = pred.prediction == cert.prediction[made]
    assert bool((kept | pred.abstained).all())
    assert float(kept.double().mean()) >= 0.5


def test_same_generator_same_result_and_global_rng_untouched() -> None:
    smoothed = Smoothed(linear_model(), SIGMA)
    x = torch.cat([point_at(0.1), point_at(-0.3), point_at(0.7)])
    state = torch.get_rng_state()
    a = smoothed.certify(x, n0=30, n=500, alpha=0.01, batch_size=64, generator=gen(7))
    b = smoothed.certify(x, n0=30, n=500, alpha=0.01, batch_size=64, generator=gen(7))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.counts, b.counts) and torch.equal(a.radius, b.radius)
    c = smoothed.certify(x, n0=30, n=500, alpha=0.01, batch_size=7, generator=gen(8))
    assert c.prediction.tolist() == a.prediction.tolist()
    # batching changes the draws, not the distribution: vote shares agree within 5 sigma
    tol = 5 * math.sqrt(0.25 / 500)
    assert float((a.counts - c.counts).abs().max()) / 500 <= 2 * tol


def test_model_mode_and_flags_restored() -> None:
    model = nn.Sequential(nn.Linear(2, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.warns(UserWarning, match="training mode"):
        Smoothed(model, 0.3).predict(torch.zeros(2, 2), n=50, alpha=0.1, generator=gen(0))
    assert model.training and [p.requires_grad for p in model.parameters()] == flags


def test_result_describes_the_smoothed_classifier_not_a_verdict() -> None:
    cert = Smoothed(linear_model(), SIGMA).certify(point_at(0.5), n0=10, n=100, alpha=0.01,
                                                   generator=gen(0))
    assert "smoothed classifier" in cert.certifies and "not the base model" in cert.certifies
    assert cert.confidence == pytest.approx(0.99)
    assert not hasattr(cert, "verdict")
    both = SmoothingCertificate.concat([cert, cert])
    assert both.prediction.shape == (2,) and both.to_dict()["n"] == 100
    assert both.certified_accuracy(torch.tensor([1, 1]), [0.0, 10.0])[1] == 0.0


def test_min_n_is_the_smallest_that_can_certify_or_answer() -> None:
    for alpha in (0.001, 0.01, 0.05, 0.3):
        n = min_n_to_certify(alpha)
        assert max_certifiable_radius(1.0, n, alpha) > 0
        assert n == 1 or max_certifiable_radius(1.0, n - 1, alpha) == 0
        m = min_n_to_predict(alpha)
        assert 2.0 ** (1 - m) <= alpha and (m == 1 or 2.0 ** (2 - m) > alpha)
    assert min_n_to_certify(0.001) == 10


def test_vectorised_binomial_test_matches_scipy_binomtest() -> None:
    from scipy.stats import binomtest

    from advrobust.smoothing._stats import binomial_p_values

    pairs = [(0, 0), (1, 0), (5, 5), (7, 3), (60, 40), (100, 0), (520, 480), (3, 9), (30, 12)]
    got = binomial_p_values(torch.tensor([a for a, _ in pairs]),
                            torch.tensor([b for _, b in pairs]))
    for (a, b), p in zip(pairs, got.tolist(), strict=True):
        ref = binomtest(a, a + b, 0.5).pvalue if a + b else 1.0
        assert p == pytest.approx(ref, rel=1e-9, abs=1e-300), (a, b)
