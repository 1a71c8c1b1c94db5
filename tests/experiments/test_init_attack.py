"""Adversarial examples at random initialisation (Bubeck et al. 2021): closed forms, the trend
in d, reproducibility and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from advrobust.errors import InvalidParameterError
from advrobust.experiments import init_attack, parse_width, theory


@pytest.fixture(scope="module")
def relu_run() -> object:
    return init_attack(d=(2, 32), k="4d", activations=("relu", "softplus"), trials=200,
                       step=3.0, grid=64, seed=0)


def test_flip_rate_increases_with_d_at_fixed_step(relu_run: object) -> None:
    # at d=2 the network is far from linear over a step of norm 3 (~0.75 measured), at d=32
    # nearly linear (~0.98): a gap of ~10 standard errors, asserted with a margin of 0.1
    low, high = relu_run.row("relu", 2), relu_run.row("relu", 32)  # type: ignore[attr-defined]
    assert high.flip_rate >= low.flip_rate + 0.1
    assert high.flip_rate >= 0.9


def test_relu_moments_match_the_closed_forms(relu_run: object) -> None:
    row = relu_run.row("relu", 32)  # type: ignore[attr-defined]
    # E||grad f||^2 = 1/2 exactly for ReLU; E f^2 = E relu(g)^2 = 1/2 (SE ~0.05 over 200 draws)
    assert abs(float((row.grad_norm ** 2).mean()) - 0.5) < 0.05
    assert abs(float((row.f ** 2).mean()) - 0.5) < 0.2
    assert theory("relu", 32).grad_sq == pytest.approx(0.5)


def test_line_search_finds_the_closed_form_crossing() -> None:
    # f(t) = relu(2 - t) - relu(0.5 + t) = 1.5 - 2t: the sign changes at t = 0.75
    from advrobust.experiments._random_net import ACTIVATIONS
    from advrobust.experiments.init_attack import _needed_step

    psi = ACTIVATIONS["relu"][0]
    a = torch.tensor([[1.0, -1.0]], dtype=torch.float64) * math.sqrt(2)
    p = torch.tensor([[2.0, 0.5]], dtype=torch.float64)
    q = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    f0 = torch.tensor([1.5], dtype=torch.float64)
    assert float(_needed_step(psi, a, p, q, f0, 3.0, 16)[0]) == pytest.approx(0.75, abs=1e-9)
    assert math.isinf(float(_needed_step(psi, a, p, q, f0, 0.5, 16)[0]))


def test_needed_step_close_to_linearisation_at_large_d(relu_run: object) -> None:
    row = relu_run.row("relu", 32)  # type: ignore[attr-defined]
    assert bool(torch.isfinite(row.needed_step).all())
    ratio = (row.needed_step / row.linear_step).median()
    assert 0.8 < float(ratio) < 1.25


def test_smooth_activation_theory_and_pairing(relu_run: object) -> None:
    soft = relu_run.row("softplus", 32)  # type: ignore[attr-defined]
    th = theory("softplus", 32)
    assert abs(float(soft.grad_norm.mean()) - math.sqrt(th.grad_sq)) < 0.05
    assert soft.theory.linear_flip_rate(3.0) == pytest.approx(th.linear_flip_rate(3.0))


def test_seed_reproducibility() -> None:
    a = init_attack(d=8, k=16, activations="gelu", trials=20, step=1.0, grid=16, seed=3)
    b = init_attack(d=8, k=16, activations="gelu", trials=20, step=1.0, grid=16, seed=3)
    c = init_attack(d=8, k=16, activations="gelu", trials=20, step=1.0, grid=16, seed=4)
    assert torch.equal(a.rows[0].f, b.rows[0].f)
    assert torch.equal(a.rows[0].needed_step, b.rows[0].needed_step)
    assert not torch.equal(a.rows[0].f, c.rows[0].f)


def test_parse_width() -> None:
    assert parse_width("4d", 100) == 400
    assert parse_width("d", 7) == 7
    assert parse_width("0.5d", 10) == 5
    assert parse_width(12, 100) == 12
    assert parse_width("12", 100) == 12


@pytest.mark.parametrize("kwargs, word", [
    ({"d": 0}, "'d'"), ({"k": 0}, "'k'"), ({"k": "0.1d", "d": 4}, "'k'"), ({"k": "xd"}, "'k'"),
    ({"activations": "tanh"}, "relu"), ({"trials": 0}, "'trials'"), ({"step": 0.0}, "'step'"),
    ({"step": 2.0, "max_step": 1.0}, "'max_step'"),
])
def test_bad_input(kwargs: dict[str, object], word: str) -> None:
    with pytest.raises(InvalidParameterError, match=word):
        init_attack(**{"d": 4, "trials": 2, **kwargs})  # type: ignore[arg-type]
