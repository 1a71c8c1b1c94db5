"""One-pixel attack: contract, the pixel budget, queries, probability outputs, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advrobust import InvalidInputError, InvalidParameterError, LpBall
from advrobust.attacks import OnePixel
from attacks._catalogue import digits_batch, digits_model, one_thread
from attacks.common import batch_for, check_attack


@pytest.fixture(autouse=True)
def _single_thread() -> object:
    with one_thread():
        yield


def _changed_pixels(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    diff = (x_adv - x).abs()
    per_pixel = diff.sum(1) if x.dim() == 4 else diff
    return (per_pixel.flatten(1) > 0).sum(1)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.5), ("l2", 0.5), ("l1", 1.0)])
def test_contract(norm: str, eps: float, tiny_mlp: nn.Module) -> None:
    x, y = batch_for(tiny_mlp, n=6)
    attack = OnePixel(pixels=2, popsize=10, iterations=3)
    result = check_attack(attack, tiny_mlp, x, y, LpBall(norm, eps))
    assert bool((_changed_pixels(x, result.x_adv) <= 2).all())
    check_attack(attack, tiny_mlp, x, y, LpBall(norm, eps), target=(y + 1) % 3)


@pytest.mark.parametrize("pixels", [1, 3])
def test_changes_at_most_pixels_and_counts_queries(pixels: int) -> None:
    x, y = digits_batch(16)
    popsize, iterations = 40, 10
    result = OnePixel(pixels=pixels, popsize=popsize, iterations=iterations)(
        digits_model(), x, y, LpBall("linf", 1.0), generator=torch.Generator().manual_seed(0))
    assert bool((_changed_pixels(x, result.x_adv) <= pixels).all())
    assert bool(result.success.any())
    queries = result.info["queries_per_sample"]
    assert bool((queries % popsize == 0).all())
    assert bool((queries <= popsize * (iterations + 1)).all())
    # a sample is only dropped when broken: the unbroken ones used the whole budget
    assert bool((queries[~result.success] == popsize * (iterations + 1)).all())
    assert torch.equal(result.exhausted, ~result.success)


def test_colour_pixels_change_all_channels_of_one_position() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 5 * 5, 4)).eval()
    x = torch.rand(8, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    result = OnePixel(pixels=1, popsize=30, iterations=5)(model, x, y, LpBall("linf", 1.0))
    assert bool((_changed_pixels(x, result.x_adv) <= 1).all())


def test_probability_outputs_are_used_as_given() -> None:
    x, y = digits_batch(8)
    softmax_model = nn.Sequential(digits_model(), nn.Softmax(dim=1)).eval()
    attack = OnePixel(pixels=3, popsize=30, iterations=5)
    gen = torch.Generator().manual_seed(0)
    with pytest.warns(UserWarning, match="look like probabilities"):
        probs = attack(softmax_model, x, y, LpBall("linf", 1.0), generator=gen)
    logits = attack(digits_model(), x, y, LpBall("linf", 1.0),
                    generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(probs.x_adv, logits.x_adv)  # same fitness, same evolution


def test_bad_outputs_and_budgets(tiny_mlp: nn.Module) -> None:
    x, y = batch_for(tiny_mlp, n=3)
    with pytest.raises(InvalidParameterError, match="more pixels than an input has \\(16\\)"):
        OnePixel(pixels=17)(tiny_mlp, x, y, LpBall("linf", 1.0))
    nan_model = nn.Sequential(tiny_mlp, _Nan()).eval()
    with pytest.raises(InvalidInputError, match="NaN or inf"):
        OnePixel()(nan_model, x, y, LpBall("linf", 1.0))
    for kwargs, message in [({"pixels": 0}, "'pixels' parameter of OnePixel"),
                            ({"popsize": 3}, "'popsize'"), ({"iterations": -1}, "'iterations'")]:
        with pytest.raises(InvalidParameterError, match=message):
            OnePixel(**kwargs)


class _Nan(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z.clone().index_fill_(1, torch.tensor([0]), float("nan"))
