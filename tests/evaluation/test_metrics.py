"""Metrics of attack runs and the batched runner."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from advrobust import AttackResult, InvalidInputError, LpBall
from advrobust.attacks import FGSM, PGD
from advrobust.core.spec import margin
from advrobust.evaluation import (
    clean_accuracy,
    evaluate_attack,
    fooling_rate,
    mean_norm,
    median_norm,
    merge_results,
    predict,
    rmse,
    robust_accuracy,
    summarize_attack,
)


def result_of(margins: list[float], norms: list[float], success: list[bool] | None = None,
              queries: int = 3) -> AttackResult:
    m = torch.tensor(margins)
    return AttackResult(x_adv=torch.zeros(len(margins), 2), success=(
        m < 0 if success is None else torch.tensor(success)), margin=m,
        norm=torch.tensor(norms), queries=queries)


def batch(model: nn.Module, n: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:3] = (y[:3] + 1) % 3  # a few clean mistakes
    return x, y


def test_clean_accuracy_and_predict(tiny_mlp: nn.Module) -> None:
    x, y = batch(tiny_mlp)
    with torch.no_grad():
        pred = tiny_mlp(x).argmax(1)
    assert torch.equal(predict(tiny_mlp, x, batch_size=7), pred)
    assert clean_accuracy(tiny_mlp, x, y, batch_size=3) == pytest.approx(17 / 20)


def test_robust_accuracy_needs_clean_and_adversarial_correctness() -> None:
    r = result_of([1.0, -1.0, 2.0, 0.5], [0.1, 0.1, 0.1, 0.1])
    assert robust_accuracy(r) == pytest.approx(3 / 4)
    assert robust_accuracy(r, torch.tensor([True, True, False, True])) == pytest.approx(2 / 4)


def test_fooling_rate() -> None:
    assert fooling_rate(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 2, 2, 0])) == 0.5


def test_rmse_is_the_mean_relative_squared_perturbation() -> None:
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    x_adv = x + torch.tensor([[0.5, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.3, 0.0, 0.0, 0.0]])
    # 0.25 / 4 and 1 / 4; the all-zero row has no defined ratio and is left out.
    assert rmse(x, x_adv) == pytest.approx((0.25 / 4 + 1 / 4) / 2)
    assert rmse(x, x_adv, mask=torch.tensor([True, False, True])) == pytest.approx(0.25 / 4)
    assert math.isnan(rmse(x, x_adv, mask=torch.tensor([False, False, True])))


def test_norm_statistics_of_successful_samples() -> None:
    r = result_of([-1.0, 1.0, -2.0, -0.5], [0.3, 9.0, 0.1, 0.2])
    assert mean_norm(r) == pytest.approx(0.2)
    assert median_norm(r) == pytest.approx(0.2)
    none = result_of([1.0, 1.0], [0.3, 0.2])
    assert math.isnan(mean_norm(none)) and math.isnan(median_norm(none))


def test_summarize_attack_is_consistent(tiny_mlp: nn.Module) -> None:
    x, y = batch(tiny_mlp, n=30)
    r = PGD(steps=5)(tiny_mlp, x, y, LpBall("linf", 0.2),
                     generator=torch.Generator().manual_seed(0))
    s = summarize_attack(tiny_mlp, x, y, r)
    adv_pred = predict(tiny_mlp, r.x_adv)
    clean_pred = predict(tiny_mlp, x)
    assert s["n"] == 30 and s["queries"] == r.queries
    assert s["clean_accuracy"] == pytest.approx(27 / 30)
    assert s["robust_accuracy"] == pytest.approx(
        float(((adv_pred == y) & (clean_pred == y)).float().mean()))
    assert s["robust_accuracy"] <= s["clean_accuracy"]
    assert s["fooling_rate"] == pytest.approx(float((adv_pred != clean_pred).float().mean()))
    assert s["attack_success_rate"] == pytest.approx(float((adv_pred != y).float().mean()))
    assert s["max_norm"] <= 0.2 + 1e-6


def test_merge_results_concatenates_and_adds_queries() -> None:
    a = AttackResult(torch.zeros(2, 3), torch.tensor([True, False]), torch.tensor([-1.0, 1.0]),
                     torch.tensor([0.1, 0.2]), 5, target=torch.tensor([1, 2]),
                     info={"step_size": 0.1, "per_sample": torch.tensor([1, 2])})
    b = AttackResult(torch.ones(1, 3), torch.tensor([True]), torch.tensor([-2.0]),
                     torch.tensor([0.3]), 4, target=torch.tensor([0]),
                     info={"step_size": 0.1, "per_sample": torch.tensor([3])})
    m = merge_results([a, b])
    assert m.queries == 9 and m.x_adv.shape == (3, 3)
    assert torch.equal(m.target, torch.tensor([1, 2, 0]))
    assert torch.equal(m.info["per_sample"], torch.tensor([1, 2, 3]))
    assert m.info["step_size"] == [0.1, 0.1] and m.exhausted is None
    with pytest.raises(InvalidInputError, match="at least one"):
        merge_results([])


def test_evaluate_attack_in_batches_equals_one_call(tiny_mlp: nn.Module) -> None:
    x, y = batch(tiny_mlp, n=13)
    threat = LpBall("l2", 0.4)
    whole = FGSM()(tiny_mlp, x, y, threat)
    run = evaluate_attack(tiny_mlp, FGSM(), (x, y), threat, batch_size=5, progress=True)
    # Equal up to the float rounding of different batch sizes.
    torch.testing.assert_close(run.result.x_adv, whole.x_adv)
    torch.testing.assert_close(run.result.margin, whole.margin)
    assert run.result.queries == 3 * 3 and run.seconds > 0
    assert run.summary(tiny_mlp)["seconds"] == run.seconds


def test_evaluate_attack_targeted_and_seeded(tiny_mlp: nn.Module) -> None:
    x, y = batch(tiny_mlp, n=12)
    keep = y != 0
    x, y = x[keep], y[keep]

    def go() -> AttackResult:
        return evaluate_attack(tiny_mlp, PGD(steps=3), {"x": x, "y": y}, LpBall("linf", 0.3),
                               batch_size=4, target=0,
                               generator=torch.Generator().manual_seed(1)).result

    first, second = go(), go()
    assert torch.equal(first.x_adv, second.x_adv)
    assert torch.equal(first.target, torch.zeros_like(y))
    with torch.no_grad():
        torch.testing.assert_close(first.margin, margin(tiny_mlp(first.x_adv), y))


def test_evaluate_attack_rejects_unknown_data(tiny_mlp: nn.Module) -> None:
    with pytest.raises(InvalidInputError, match="'data' must be an advrobust Dataset"):
        evaluate_attack(tiny_mlp, FGSM(), [1, 2, 3], LpBall("linf", 0.1))
