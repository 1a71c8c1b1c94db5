"""Margins, the course's targeted objectives, and the eval-mode context manager."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from advrobust.core.modes import eval_mode
from advrobust.core.spec import (
    Spec,
    TargetedLoss,
    cross_entropy_loss,
    margin,
    margin_loss,
    targeted_loss,
    targeted_margin,
)

LOGITS = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, -1.0]])
Y = torch.tensor([0, 2])


def test_margin_and_losses_closed_forms() -> None:
    torch.testing.assert_close(margin(LOGITS, Y), torch.tensor([1.0, -6.0]))
    torch.testing.assert_close(margin_loss(LOGITS, Y), torch.tensor([-1.0, 6.0]))
    torch.testing.assert_close(targeted_margin(LOGITS, Y, torch.tensor([1, 1])),
                               torch.tensor([2.0, -6.0]))
    expected_ce = -torch.log_softmax(LOGITS, dim=1)[[0, 1], Y]
    torch.testing.assert_close(cross_entropy_loss(LOGITS, Y), expected_ce)


def test_spec_margins_rows_reproduce_the_margin() -> None:
    spec = Spec.margins(Y, 3)
    torch.testing.assert_close(spec.apply(LOGITS).amin(dim=1), margin(LOGITS, Y))


def test_course_targeted_objectives() -> None:
    target = torch.tensor([1, 0])
    torch.testing.assert_close(targeted_loss(LOGITS, Y, target, TargetedLoss.TARGET_VS_TRUE),
                               torch.tensor([-2.0, 1.0]))  # f_t - f_y
    torch.testing.assert_close(targeted_loss(LOGITS, Y, target, TargetedLoss.TARGET_VS_ALL),
                               torch.tensor([1.0 - 5.0, 0.0 - 4.0]))  # f_t - sum of the others


def test_eval_mode_restores_modes_and_flags_on_error() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1)).train()
    model[1].eval()
    model[0].bias.requires_grad_(False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match="inside"), eval_mode(model, who="test"):
            assert not model.training and not model[0].weight.requires_grad
            raise RuntimeError("inside")
    assert sum("training mode" in str(w.message) for w in caught) == 1
    assert model.training and not model[1].training
    assert model[0].weight.requires_grad and not model[0].bias.requires_grad
