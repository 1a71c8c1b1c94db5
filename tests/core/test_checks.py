"""check_batch: malformed batches are refused with an error that names the problem."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advrobust import LpBall
from advrobust.attacks import PGD
from advrobust.core.checks import check_batch
from advrobust.errors import InvalidInputError
from advrobust.relax import CROWN


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


@pytest.mark.parametrize("shape", [(6, 5), (6, 2, 2)])
def test_inputs_of_the_wrong_shape_name_the_shape(shape: tuple[int, ...]) -> None:
    net, x = _net(), torch.rand(shape)
    y = torch.zeros(6, dtype=torch.long)
    with pytest.raises(InvalidInputError, match=r"cannot take 'x' of shape \(6, "):
        check_batch(net, x, y, LpBall("linf", 0.1))
    with pytest.raises(InvalidInputError, match="shape"):
        PGD(steps=2)(net, x, y, LpBall("linf", 0.1))
    with pytest.raises(InvalidInputError, match="shape"):
        CROWN()(net, x, y, LpBall("linf", 0.1))


def test_a_well_shaped_batch_returns_the_clean_outputs() -> None:
    net, x = _net(), torch.rand(3, 4)
    out = check_batch(net, x, torch.zeros(3, dtype=torch.long), LpBall("linf", 0.1))
    assert torch.equal(out, net(x).detach())


def test_the_shape_error_is_still_the_runtime_error_torch_raised() -> None:
    net = _net()
    with pytest.raises(RuntimeError, match="cannot take 'x'"):
        check_batch(net, torch.rand(2, 5), torch.zeros(2, dtype=torch.long), LpBall("linf", 0.1))
