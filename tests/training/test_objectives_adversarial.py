"""Adversarial-training objectives: PGD (Madry), fast FGSM (Wong et al.), TRADES."""

from __future__ import annotations

import pytest
import torch
from objectives_helpers import digits, one_thread, own_loss_drop, small_mlp, train  # noqa: F401

from advrobust.attacks import PGD
from advrobust.core import LpBall
from advrobust.errors import InvalidParameterError
from advrobust.training.adversarial import TRADES, AdversarialPGD, FastFGSM
from advrobust.training.ramps import EpsSchedule, Ramp

THREAT = LpBall("linf", 0.1)


@pytest.mark.parametrize("objective", [
    AdversarialPGD(threat=THREAT, steps=5, seed=0),
    FastFGSM(threat=THREAT, seed=0),
    TRADES(threat=THREAT, beta=3.0, steps=5, seed=0),
], ids=["pgd", "fast-fgsm", "trades"])
def test_objective_lowers_its_own_loss(objective: object) -> None:
    before, after = own_loss_drop(objective)  # type: ignore[arg-type]
    assert after < 0.8 * before


@pytest.mark.parametrize("objective", [
    AdversarialPGD(threat=THREAT, steps=3, seed=0),
    FastFGSM(threat=THREAT, seed=0),
    TRADES(threat=THREAT, steps=3, seed=0),
], ids=["pgd", "fast-fgsm", "trades"])
def test_points_inside_the_set_and_model_untouched(objective: object) -> None:
    model = small_mlp().train()
    model[1].eval()  # a mixed-mode model: every module's mode must come back as it was
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    x, y = digits("test").x[:20], digits("test").y[:20]
    if isinstance(objective, TRADES):
        x_adv = objective.adversarial_examples(model, x)
    else:
        x_adv = objective.adversarial_examples(model, x, y)  # type: ignore[attr-defined]
    assert bool(THREAT.contains(x, x_adv).all())
    assert (x_adv - x).abs().amax() > 0.5 * THREAT.eps
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


def test_same_seed_same_examples() -> None:
    model = small_mlp()
    x, y = digits("test").x[:20], digits("test").y[:20]
    a = FastFGSM(threat=THREAT, seed=3).adversarial_examples(model, x, y)
    b = FastFGSM(threat=THREAT, seed=3).adversarial_examples(model, x, y)
    assert torch.equal(a, b)


def test_pgd_training_beats_standard_under_pgd() -> None:
    test = digits("test")
    threat = LpBall("linf", 0.1)
    attack = PGD(steps=20)
    gen = torch.Generator().manual_seed(0)
    robust = {}
    for name, objective in (("standard", None),
                            ("pgd", AdversarialPGD(threat=threat, steps=5, seed=0))):
        model = train(objective, epochs=8)
        result = attack(model, test.x, test.y, threat, generator=gen)
        robust[name] = float((~result.success).float().mean())
    assert robust["pgd"] > robust["standard"] + 0.2


@pytest.mark.parametrize("make", [
    lambda: AdversarialPGD(threat=THREAT, steps=0),
    lambda: AdversarialPGD(threat=0.1),
    lambda: FastFGSM(threat=THREAT, alpha=-1.0),
    lambda: TRADES(threat=THREAT, beta=-1.0),
    lambda: TRADES(threat=THREAT, seed=-2),
])
def test_bad_parameters_raise(make: object) -> None:
    with pytest.raises(InvalidParameterError, match="parameter of"):
        make()  # type: ignore[operator]


@pytest.mark.parametrize(("make", "match"), [
    (lambda cls: cls(threat=THREAT, schedule=EpsSchedule(end=2 * THREAT.eps)), "at or below"),
    (lambda cls: cls(threat=THREAT, schedule=EpsSchedule(start=-0.1)), "'start'"),
    (lambda cls: cls(threat=THREAT, schedule=EpsSchedule(warmup=0.6, ramp=0.6)), "add up"),
    (lambda cls: cls(threat=THREAT, schedule=Ramp(start=0.0, end=0.1)), "EpsSchedule"),
])
@pytest.mark.parametrize("cls", [AdversarialPGD, FastFGSM, TRADES])
def test_bad_eps_schedules_raise(make: object, match: str, cls: type) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        make(cls)  # type: ignore[operator]


def test_eps_schedule_ramps_the_attack_radius() -> None:
    objective = AdversarialPGD(threat=THREAT, steps=3, seed=0,
                               schedule=EpsSchedule(warmup=0.2, ramp=0.4))
    model = small_mlp(0)
    x, y = digits("train").x[:16], digits("train").y[:16]
    for progress, eps in ((0.1, 0.0), (0.4, THREAT.eps / 2), (0.9, THREAT.eps)):
        dist = (objective.adversarial_examples(model, x, y, progress) - x).abs().amax()
        assert float(dist) <= eps + 1e-6
        assert eps == 0 or float(dist) > 0.9 * eps  # PGD reaches the ramped radius
