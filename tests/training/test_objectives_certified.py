"""Certified training (IBP, CROWN-IBP), its eps / beta ramps, and the defense registry."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from objectives_helpers import digits, one_thread, own_loss_drop, small_mlp, train  # noqa: F401
from torch import nn

from advrobust.core import LpBall, Spec
from advrobust.errors import InvalidParameterError, TrainingDivergedError, UnsupportedLayerError
from advrobust.relax import CROWN, IBP
from advrobust.training import fit
from advrobust.training.certified import CROWNIBP, IBPTraining, worst_case_cross_entropy
from advrobust.training.defenses import DEFENSES, build_objective
from advrobust.training.objective import Objective
from advrobust.training.ramps import EpsSchedule, Ramp

THREAT = LpBall("linf", 0.1)


def test_ramp_shape() -> None:
    ramp = Ramp(start=1.0, end=0.0, warmup=0.2, ramp=0.4)
    assert ramp(0.0) == ramp(0.2) == 1.0
    assert math.isclose(ramp(0.4), 0.5)
    assert ramp(0.6) == ramp(1.0) == 0.0
    eps = EpsSchedule(warmup=0.1, ramp=0.5).resolve(0.3, "test")
    values = [eps(p / 20) for p in range(21)]
    assert values[0] == 0.0 and values[-1] == 0.3
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))


@pytest.mark.parametrize("make, match", [
    (lambda: EpsSchedule(start=-0.1), "start"),
    (lambda: EpsSchedule(start=0.2, end=0.1), "end"),
    (lambda: EpsSchedule(warmup=0.7, ramp=0.5), "add up"),
    (lambda: IBPTraining(threat=THREAT, schedule=EpsSchedule(end=0.2)), "at or below"),
    (lambda: IBPTraining(threat=THREAT, schedule=Ramp(start=0.0, end=0.1)), "EpsSchedule"),
    (lambda: CROWNIBP(threat=THREAT, beta_schedule=Ramp(start=2.0, end=0.0)), "beta"),
    (lambda: IBPTraining(threat=THREAT, kappa_schedule=Ramp(start=1.0, end=-1.0)), "kappa"),
])
def test_bad_schedules_raise(make: object, match: str) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        make()  # type: ignore[operator]


def test_worst_case_cross_entropy_at_zero_eps_is_clean_cross_entropy() -> None:
    model = small_mlp(0)
    x, y = digits("test").x[:32], digits("test").y[:32]
    logits = model(x)
    own = logits.gather(1, y.unsqueeze(1))
    margins = (own - logits).scatter(1, y.unsqueeze(1), float("inf"))
    lower = margins.sort(dim=1).values[:, :-1]  # the 9 margins f_y - f_t
    torch.testing.assert_close(worst_case_cross_entropy(lower),
                               nn.functional.cross_entropy(logits, y))


SMALL = LpBall("linf", 0.02)


@pytest.mark.parametrize("objective", [
    IBPTraining(threat=SMALL, schedule=EpsSchedule(ramp=0.0),
                kappa_schedule=Ramp(start=0.5, end=0.5)),
    CROWNIBP(threat=SMALL, schedule=EpsSchedule(ramp=0.0),
             beta_schedule=Ramp(start=0.5, end=0.5), kappa_schedule=Ramp(start=0.0, end=0.0)),
], ids=["ibp", "crown-ibp"])
def test_objective_lowers_its_own_loss(objective: Objective) -> None:
    before, after = own_loss_drop(objective, steps=60)
    assert after < 0.8 * before


def test_ibp_training_certifies_what_standard_training_does_not() -> None:
    test = digits("test")
    ibp = IBPTraining(threat=THREAT, schedule=EpsSchedule(warmup=0.1, ramp=0.5))
    by_ibp, by_crown = {}, {}
    for name, objective in (("standard", None), ("ibp", ibp)):
        model = train(objective, epochs=10)
        by_ibp[name] = float(IBP()(model, test.x, test.y, THREAT).verified.float().mean())
        by_crown[name] = float(CROWN()(model, test.x, test.y, THREAT).verified.float().mean())
    assert by_ibp["standard"] < 0.05
    assert by_ibp["ibp"] > 0.4
    assert by_crown["ibp"] > by_crown["standard"] + 0.25


@pytest.mark.parametrize("cls", [IBPTraining, CROWNIBP])
def test_unsupported_layer_fails_before_training(cls: type) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.GELU(), nn.Linear(10, 10))
    calls = []

    class Spy(cls):  # type: ignore[misc, valid-type]
        def __call__(self, *args: object) -> torch.Tensor:
            calls.append(1)
            return super().__call__(*args)

    with pytest.raises(UnsupportedLayerError, match="GELU"):
        fit(model, digits("train"), objective=Spy(threat=THREAT), epochs=1, progress=False)
    assert not calls


def test_nan_loss_stops_training() -> None:
    class Poisoned(Objective):
        def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     progress: float) -> torch.Tensor:
            return build_objective("tv", eps=0.1)(model, x, y, progress) * float("nan")

    model = small_mlp(0)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TrainingDivergedError):
        fit(model, digits("train"), objective=Poisoned(), epochs=1, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_registry_builds_every_defense(tmp_path: Path) -> None:
    from advrobust.attacks.dictionary import Dictionary, project_atoms, save_dictionary

    atoms = project_atoms(torch.randn((64, 2), generator=torch.Generator().manual_seed(0)))
    path = save_dictionary(tmp_path / "d.npz", Dictionary(atoms=atoms, input_shape=(1, 8, 8)))
    special: dict[str, dict[str, object]] = {
        "standard": {}, "noise": {"sigma": 0.1}, "gaussian": {"sigma": 0.1},
        "consistency": {"sigma": 0.1}, "smoothadv": {"sigma": 0.1},
        "dict-adv": {"dictionary": str(path)},
        "dict-noise": {"dictionary": str(path), "scale": 0.2}}
    for name in DEFENSES:
        params = special.get(name, {"eps": 0.1, "norm": None})
        objective = build_objective(name, **params)
        assert isinstance(objective, Objective)
        if name != "standard":
            assert getattr(objective, "threat", None) in (None, THREAT) or name.startswith("tv") \
                or name == "gloro"  # l2 by default (its only norm)
    assert build_objective("pgd", eps=0.3, steps=7).get_params()["steps"] == 7


@pytest.mark.parametrize("name, params, match", [
    ("madry", {"eps": 0.1}, "Valid defenses: standard, pgd, fgsm, trades, tv, tv-lip, ibp"),
    ("pgd", {"eps": 0.1, "beta": 3.0}, "does not take the parameter"),
    ("ibp", {}, "needs the parameter"),
    ("trades", {"eps": -0.1}, "eps"),
])
def test_registry_bad_input(name: str, params: dict[str, float], match: str) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        build_objective(name, **params)


def test_describe_objective_is_primitive_and_round_trips_the_parameters() -> None:
    import json

    from advrobust.training.defenses import describe_objective

    objective = build_objective("crown-ibp", eps=0.2, warmup=0.0, ramp=0.3)
    described = describe_objective(objective)
    assert json.loads(json.dumps(described)) == described
    assert described["type"] == "CROWNIBP"
    assert described["params"]["threat"] == {"norm": "linf", "eps": 0.2, "lo": 0.0, "hi": 1.0}
    assert described["params"]["schedule"]["params"]["ramp"] == 0.3


class _ResidualMLP(nn.Module):
    """64-32-(residual block of 32)-10: not a Sequential, so the bound passes take the graph IR."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.block, self.out = nn.Linear(64, 32), nn.Linear(32, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x.flatten(1)))
        return self.out(h + torch.relu(self.block(h)))


@pytest.mark.parametrize("cls", [IBPTraining, CROWNIBP])
def test_certified_training_runs_on_a_residual_network(cls: type) -> None:
    model = _ResidualMLP()
    data = digits("train")
    x, y = data.x[:64], data.y[:64]
    objective = cls(threat=SMALL, schedule=EpsSchedule(ramp=0.0),
                    kappa_schedule=Ramp(start=0.0, end=0.0))
    loss = objective(model, x, y, 1.0)
    loss.backward()
    # the bound reaches every weight, the residual branch included
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.parameters())
    # it is the verifiers' bound (float64 with rounding allowances there, float32 here)
    ir = objective._ir(model, tuple(x.shape[1:]))
    spec_lower = objective._lower(ir, x[:8], Spec.margins(y[:8], 10), SMALL, 1.0).detach()
    bounder = IBP() if cls is IBPTraining else CROWN()
    verified = bounder(model.double().eval(), x[:8].double(), y[:8], SMALL).lower
    model.float().train()
    if cls is IBPTraining:  # the same interval pass
        torch.testing.assert_close(spec_lower.double(), verified, atol=1e-4, rtol=1e-4)
    else:  # CROWN-IBP's intermediate bounds are IBP's: never tighter than CROWN's
        assert bool((spec_lower.double() <= verified + 1e-4).all())
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    before = float(loss.detach())
    for _ in range(20):
        opt.zero_grad()
        objective(model, x, y, 1.0).backward()
        opt.step()
    assert float(objective(model, x, y, 1.0).detach()) < 0.8 * before
