"""Square Attack (Andriushchenko et al. 2020): contract, black-box use, budget, schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from advrobust import LpBall
from advrobust.attacks import Square
from advrobust.attacks.square import square_fraction
from advrobust.errors import InvalidInputError, InvalidParameterError, InvalidThreatModelError
from attacks.common import batch_for, check_attack


class _NoBackward(torch.autograd.Function):
    """Identity whose backward fails: proves an attack never asks for gradients."""

    @staticmethod
    def forward(ctx: object, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> Tensor:  # type: ignore[override]
        raise AssertionError("a black-box attack took a gradient")


class _GradFree(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(_NoBackward.apply(x))


def _linear(seed: int = 0, side: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(side * side, 4)).eval()


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_contract(tiny_mlp: nn.Module, norm: str, eps: float) -> None:
    x, y = batch_for(tiny_mlp)
    res = check_attack(Square(queries=30), tiny_mlp, x, y, LpBall(norm, eps))
    assert res.info["black_box"] is True
    check_attack(Square(queries=20, restarts=2), tiny_mlp, x, y, LpBall(norm, eps),
                 target=(y + 1) % 3)


@pytest.mark.parametrize("shape", [(1, 8, 8), (64,)])
@pytest.mark.parametrize("norm,eps", [("linf", 0.15), ("l2", 1.5)])
def test_breaks_an_easy_linear_model_within_budget(norm: str, eps: float,
                                                   shape: tuple[int, ...]) -> None:
    """On an affine model whose closed-form optimum is clearly adversarial, random search
    succeeds on every such sample, using no gradient and at most ``queries`` queries each;
    also on inputs that are not images (flat features, searched as a 1 x D strip)."""
    model = _linear()
    x, y = batch_for(model, n=32, shape=shape, seed=1)
    threat = LpBall(norm, eps)
    budget = 400
    res = Square(queries=budget)(_GradFree(model).eval(), x, y, threat,
                                 generator=torch.Generator().manual_seed(0))
    w = model[1].weight.detach()
    logits = model(x).detach()
    dual = (w[y].unsqueeze(1) - w.unsqueeze(0))
    dual = dual.abs().sum(-1) if norm == "linf" else dual.norm(dim=-1)
    # Without the box the optimum is m_t - eps ||w_y - w_t||_q; the box halves at most ~the
    # attainable decrease, so samples below -margin by a factor 2 are clearly breakable.
    gaps = logits.gather(1, y[:, None]) - logits - 0.5 * eps * dual
    gaps[torch.arange(32), y] = math.inf
    easy = gaps.amin(1) < 0
    assert int(easy.sum()) >= 8
    assert bool(res.success[easy].all())
    spent = res.info["queries_per_sample"]
    assert int(spent.max()) <= budget and int(spent.min()) >= 1
    assert torch.equal(res.exhausted, ~res.success)
    assert bool((spent[res.exhausted] == budget).all())


def test_restarts_only_on_unbroken_and_budget_scales(tiny_mlp: nn.Module) -> None:
    x, y = batch_for(tiny_mlp, n=16)
    res = Square(queries=15, restarts=3)(tiny_mlp, x, y, LpBall("linf", 0.05),
                                         generator=torch.Generator().manual_seed(1))
    spent = res.info["queries_per_sample"]
    assert int(spent.max()) <= 45
    assert bool((spent[res.exhausted] == 45).all())


def test_p_schedule_halves_at_the_paper_checkpoints() -> None:
    budget = 10_000
    values = [square_fraction(0.8, it, budget)
              for it in (0, 10, 11, 50, 51, 200, 201, 500, 501, 8000, 8001, 9999)]
    assert values == [0.8, 0.8, 0.4, 0.4, 0.2, 0.2, 0.1, 0.1, 0.05, 0.8 / 256, 0.8 / 512,
                      0.8 / 512]
    # rescaled to a smaller budget: the same fractions of the run
    assert square_fraction(0.8, 100, 1000) == square_fraction(0.8, 1000, 10_000)


def test_bad_input_and_parameters(tiny_mlp: nn.Module) -> None:
    for kwargs in ({"queries": 0}, {"p_init": 0.0}, {"p_init": 1.5}, {"restarts": 0}):
        with pytest.raises(InvalidParameterError, match="parameter of Square"):
            Square(**kwargs)
    flat = nn.Linear(16, 3).eval()
    x = torch.rand(16)
    with pytest.raises(InvalidInputError, match=r"\(N, ...\)"):
        Square(queries=5)(flat, x, flat(x).argmax(), LpBall("linf", 0.1))
    x, y = batch_for(tiny_mlp)
    with pytest.raises(InvalidThreatModelError):
        Square()(tiny_mlp, x, y, LpBall("l1", 1.0))
