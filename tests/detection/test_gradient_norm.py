"""The gradient-norm detector: score, calibration, flags, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advrobust.data._dataset import Dataset
from advrobust.detection import GradientNormDetector, gradient_norm_score
from advrobust.errors import InvalidInputError, InvalidParameterError, NotFittedError


def test_score_is_the_norm_of_the_loss_gradient_at_the_predicted_label(
        digits_model: nn.Module, digits_test: Dataset) -> None:
    x = digits_test.x[:10]
    scores = gradient_norm_score(digits_model, x, "l2")
    for i in range(3):
        xi = x[i:i + 1].clone().requires_grad_(True)
        logits = digits_model(xi)
        loss = nn.functional.cross_entropy(logits, logits.argmax(1))
        (g,) = torch.autograd.grad(loss, xi)
        torch.testing.assert_close(scores[i], g.norm(), rtol=1e-5, atol=1e-8)


def test_false_positive_rate_on_held_out_clean_data(digits_model: nn.Module,
                                                     digits_train: Dataset,
                                                     digits_test: Dataset) -> None:
    calibration = digits_train.x[700:]  # not seen in training, like the test images
    for fpr in (0.05, 0.2):
        det = GradientNormDetector(fpr=fpr).fit(digits_model, calibration)
        held_out = float(det.predict(digits_test.x).float().mean())
        assert abs(held_out - fpr) <= 0.03
        on_fit = float(det.predict(calibration).float().mean())
        assert abs(on_fit - fpr) <= 1.0 / len(calibration) + 1e-9


def test_adversarial_examples_score_higher_than_clean(digits_model: nn.Module,
                                                      digits_train: Dataset,
                                                      digits_test: Dataset) -> None:
    from advrobust.attacks import PGD
    from advrobust.core import LpBall

    det = GradientNormDetector().fit(digits_model, digits_train.x)
    x, y = digits_test.x[:100], digits_test.y[:100]
    result = PGD(steps=10)(digits_model, x, y, LpBall("linf", 0.1),
                           generator=torch.Generator().manual_seed(0))
    adv = det.score(result.x_adv[result.success])
    assert adv.median() > det.score(x).median()


def test_model_mode_and_flags_restored(digits_model: nn.Module, digits_test: Dataset) -> None:
    digits_model.train()
    try:
        with pytest.warns(UserWarning, match="training mode"):
            det = GradientNormDetector().fit(digits_model, digits_test.x[:50])
        assert digits_model.training
        assert all(p.requires_grad and p.grad is None for p in digits_model.parameters())
        assert det.threshold_ is not None
    finally:
        digits_model.eval()


def test_used_before_fit_raises(digits_test: Dataset) -> None:
    det = GradientNormDetector()
    for call in (det.score, det.predict):
        with pytest.raises(NotFittedError, match="call fit"):
            call(digits_test.x[:5])


@pytest.mark.parametrize("kwargs", [{"fpr": 0.0}, {"fpr": 1.0}, {"norm": "l3"},
                                    {"batch_size": 0}])
def test_bad_parameters_raise(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidParameterError, match="parameter of GradientNormDetector"):
        GradientNormDetector(**kwargs)  # type: ignore[arg-type]


def test_bad_data_raises(digits_model: nn.Module, digits_test: Dataset) -> None:
    det = GradientNormDetector()
    with pytest.raises(InvalidInputError):
        det.fit(digits_model, digits_test.x[:1])
    bad = digits_test.x[:4].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN"):
        det.fit(digits_model, bad)
