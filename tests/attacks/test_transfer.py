"""Transfer attacks: success measured on the target, transfer rate per its definition."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advrobust import LpBall
from advrobust.attacks import PGD, Transfer
from advrobust.attacks.transfer import transfer_rate
from advrobust.errors import InvalidParameterError
from attacks.common import batch_for, check_attack


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def test_contract(tiny_mlp: nn.Module) -> None:
    x, y = batch_for(tiny_mlp)
    check_attack(Transfer(_mlp(1), PGD(steps=5)), tiny_mlp, x, y, LpBall("linf", 0.2))


def test_identical_source_and_target_equal_the_direct_attack(tiny_mlp: nn.Module) -> None:
    x, y = batch_for(tiny_mlp, n=32)
    threat = LpBall("linf", 0.3)
    direct = PGD(steps=10)(tiny_mlp, x, y, threat, generator=torch.Generator().manual_seed(0))
    res = Transfer(tiny_mlp, PGD(steps=10))(tiny_mlp, x, y, threat,
                                             generator=torch.Generator().manual_seed(0))
    assert 0 < int(direct.success.sum()) < 32
    assert torch.equal(res.success, direct.success)
    assert res.success_rate == direct.success_rate
    assert res.info["transfer_rate"] == 1.0


def test_transfer_rate_definition_on_another_target(tiny_mlp: nn.Module) -> None:
    source = _mlp(7)
    x, _ = batch_for(tiny_mlp, n=48)
    y = tiny_mlp(x).argmax(1)
    y[:8] = (y[:8] + 1) % 3  # the target gets these wrong at the clean point
    threat = LpBall("linf", 0.4)
    res = Transfer(source, PGD(steps=10))(tiny_mlp, x, y, threat,
                                           generator=torch.Generator().manual_seed(0))
    src = res.info["source_success"]
    assert torch.equal(src, source(res.x_adv).argmax(1) != y)
    hits = src & res.success
    assert res.info["transfer_rate"] == pytest.approx(float(hits.sum()) / float(src.sum()))
    correct = tiny_mlp(x).argmax(1) == y
    assert torch.equal(res.info["target_clean_correct"], correct) and not bool(correct.all())
    assert res.info["transfer_rate_target_correct"] == pytest.approx(
        float((hits & correct).sum()) / float((src & correct).sum()))
    assert transfer_rate(torch.zeros(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool)) \
        is None


def test_bad_parameters() -> None:
    with pytest.raises(InvalidParameterError, match="source_model"):
        Transfer("model", PGD())  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="'attack'"):
        Transfer(_mlp(0), "pgd")  # type: ignore[arg-type]
