"""Ensemble cascade and strongest(): worst case kept per sample, broken_by, timings."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advrobust import LpBall
from advrobust.attacks import APGD, PGD, APGDTargeted, Ensemble, Square, Strongest, strongest
from advrobust.errors import InvalidParameterError, InvalidThreatModelError
from attacks._catalogue import digits_batch, digits_model
from attacks.common import batch_for, check_attack


def _members() -> list:
    # Deterministic members, so a standalone run reproduces what the ensemble saw.
    return [PGD(steps=5, random_start=False), APGD(steps=10, random_start=False),
            APGD(loss="dlr", steps=10, random_start=False)]


def test_contract(tiny_mlp: nn.Module) -> None:
    x, y = batch_for(tiny_mlp)
    ens = Ensemble([APGD(steps=5), Square(queries=20)])
    res = check_attack(ens, tiny_mlp, x, y, LpBall("linf", 0.1))
    assert set(res.info["timings"]) == {"apgd-ce", "square"}
    check_attack(Ensemble([APGD(steps=5), APGD(steps=3)], cascade=False), tiny_mlp, x, y,
                 LpBall("l2", 0.3))
    res = check_attack(Strongest(steps=4, n_target_classes=1, queries=10), tiny_mlp, x, y,
                       LpBall("linf", 0.2))
    assert list(res.info["timings"]) == ["apgd-ce", "apgd-t", "square"]


def test_margin_no_larger_than_any_member() -> None:
    model = digits_model()
    x, y = digits_batch(40)
    threat = LpBall("linf", 0.06)
    ens = Ensemble(_members(), cascade=False)(model, x, y, threat)
    for member in _members():
        alone = member(model, x, y, threat)
        assert bool((ens.margin <= alone.margin + 1e-6).all())
    assert bool((ens.success == (ens.margin < 0)).all())


def test_cascade_records_who_broke_each_sample() -> None:
    model = digits_model()
    x, y = digits_batch(40)
    threat = LpBall("linf", 0.06)
    ens = Ensemble(_members())
    res = ens(model, x, y, threat)
    names = ens.names
    assert names == ["pgd", "apgd-ce", "apgd-dlr"]
    by = res.info["broken_by"]
    assert [b is None for b in by] == (~res.success).tolist()
    remaining = torch.ones(40, dtype=torch.bool)
    for name, member in zip(names, _members(), strict=True):
        idx = remaining.nonzero().flatten()
        alone = member(model, x[idx], y[idx], threat)
        claimed = torch.tensor([by[i] == name for i in idx.tolist()])
        assert torch.equal(claimed, alone.success), name
        remaining[idx[alone.success]] = False
    assert res.info["member_queries"]["pgd"] > 0
    assert all(t >= 0 for t in res.info["timings"].values())
    assert sum(b is not None for b in by) > 0


def test_clean_misclassified_samples_are_marked(tiny_mlp: nn.Module) -> None:
    x, y = batch_for(tiny_mlp, n=8)
    y = y.clone()
    y[0] = (y[0] + 1) % 3
    res = Ensemble([APGD(steps=3)])(tiny_mlp, x, y, LpBall("linf", 0.01))
    assert res.info["broken_by"][0] == "clean" and bool(res.success[0])


def test_strongest_is_the_autoattack_set_minus_fab() -> None:
    ens = strongest(LpBall("linf", 0.3))
    assert isinstance(ens, Strongest) and ens.get_params() == {
        "steps": 100, "n_target_classes": 9, "queries": 5000, "fab": False}
    assert ens.names == ["apgd-ce", "apgd-t", "square"]
    full = strongest(LpBall("linf", 0.3), fab=True)
    assert full.names == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert full.attacks[2].steps == 100 and full.attacks[2].n_target_classes == 9
    assert isinstance(ens.attacks[1], APGDTargeted) and ens.attacks[1].n_target_classes == 9
    assert ens.attacks[2].queries == 5000
    with pytest.raises(InvalidThreatModelError, match="linf and l2"):
        strongest(LpBall("l1", 1.0))


def test_bad_members_raise(tiny_mlp: nn.Module) -> None:
    with pytest.raises(InvalidParameterError, match="non-empty sequence"):
        Ensemble([])
    with pytest.raises(InvalidParameterError, match="Attack objects"):
        Ensemble([APGD(), "pgd"])  # type: ignore[list-item]
    x, y = batch_for(tiny_mlp)
    with pytest.raises(InvalidThreatModelError, match="apgd-ce"):
        Ensemble([PGD(steps=2), APGD()])(tiny_mlp, x, y, LpBall("l1", 1.0))


def test_strongest_runs_on_a_non_image_model_with_a_residual_add() -> None:
    """Tabular inputs (N, D) and a custom module: the whole cascade (Square included) runs."""

    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.a(x))
            return self.c(h + torch.relu(self.b(h)))

    torch.manual_seed(0)
    model = Res().eval()
    x, y = batch_for(model, n=6, shape=(4,))
    threat = LpBall("linf", 0.3)
    res = strongest(threat)(model, x, y, threat, generator=torch.Generator().manual_seed(0))
    assert res.x_adv.shape == x.shape
    assert float((res.x_adv - x).abs().max()) <= 0.3 + 1e-6
