"""The common check over every attack of the registry (``advrobust attack --attack NAME``).

Every name :func:`advrobust.cli.attack.attack_classes` knows must have a fast configuration
here (a new attack without one fails ``test_every_registered_attack_is_covered``); each then
passes :func:`attacks.common.check_attack` (inside the set, success and margins agree with a
batched re-evaluation, deterministic under a seed, model untouched, also on error) and rejects
bad values of each of its constructor parameters with an error naming the parameter.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from advrobust import LpBall
from advrobust.attacks import (
    APGD,
    FGSM,
    JSMA,
    LBFGS,
    PGD,
    APGDTargeted,
    Attack,
    Boundary,
    CarliniWagner,
    DeepFool,
    Dictionary,
    DictionaryAttack,
    Ensemble,
    FABTargeted,
    FixedPerturbation,
    HopSkipJump,
    OnePixel,
    Square,
    Strongest,
    Transfer,
    UniversalPerturbation,
)
from advrobust.cli.attack import attack_classes
from attacks.common import batch_for, check_attack

LINF, L2 = LpBall("linf", 0.2), LpBall("l2", 1.0)


def _surrogate() -> nn.Module:
    gen = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.eval()


def _dictionary() -> Dictionary:
    atoms = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    return Dictionary(atoms=atoms / atoms.norm(dim=0), input_shape=(1, 4, 4))


def _fixed() -> Tensor:
    v = torch.randn(1, 4, 4, generator=torch.Generator().manual_seed(2))
    return v / v.norm() * 0.8


#: A fast configuration and a threat it supports, per registered name.
FAST: dict[str, Callable[[], tuple[Attack, LpBall]]] = {
    "apgd": lambda: (APGD(steps=5), LINF),
    "apgd-t": lambda: (APGDTargeted(steps=3, n_target_classes=2), LINF),
    "boundary": lambda: (Boundary(steps=8), L2),
    "cw": lambda: (CarliniWagner(steps=8, binary_search_steps=2, lr=0.05), L2),
    "deepfool": lambda: (DeepFool(steps=5), L2),
    "dictionary": lambda: (DictionaryAttack(dictionary=_dictionary(), steps=3), L2),
    "ensemble": lambda: (Ensemble([PGD(steps=3), DeepFool(norm="linf", steps=3)]), LINF),
    "fab-t": lambda: (FABTargeted(steps=5, n_target_classes=2), L2),
    "fgsm": lambda: (FGSM(), LINF),
    "hopskipjump": lambda: (HopSkipJump(steps=1, init_num_evals=8, max_num_evals=16), L2),
    "jsma": lambda: (JSMA(theta=1.0, gamma=0.5), LINF),
    "lbfgs": lambda: (LBFGS(search_steps=2, max_iter=5), L2),
    "onepixel": lambda: (OnePixel(popsize=8, iterations=2), LINF),
    "pgd": lambda: (PGD(steps=5), LINF),
    "square": lambda: (Square(queries=15), LINF),
    "strongest": lambda: (Strongest(steps=3, n_target_classes=1, queries=8), LINF),
    "transfer": lambda: (Transfer(_surrogate(), PGD(steps=3)), LINF),
    "universal": lambda: (UniversalPerturbation(max_passes=1, batch_size=6, deepfool_steps=5),
                          L2),
    "universal-apply": lambda: (FixedPerturbation(perturbation=_fixed()), L2),
}


#: Attacks whose results carry no per-sample ``exhausted`` flag, and why.
NO_EXHAUSTED_FLAG = {
    "universal-apply": "adds a fixed perturbation: no budget to run out of",
    "fgsm": "one step; flag not set yet (attacks/gradient.py, the gradient attacks' issue)",
    "dictionary": "flag not set yet (attacks/dictionary, the dictionary issue)",
}


def test_every_registered_attack_is_covered() -> None:
    assert set(FAST) == set(attack_classes())
    for name, make in FAST.items():
        attack, threat = make()
        assert type(attack) is attack_classes()[name]
        assert threat.norm in attack.norms


@pytest.mark.parametrize("name", sorted(FAST))
def test_common_check(name: str, tiny_mlp: nn.Module) -> None:
    attack, threat = FAST[name]()
    x, y = batch_for(tiny_mlp, n=10)
    result = check_attack(attack, tiny_mlp, x, y, threat)
    if name not in NO_EXHAUSTED_FLAG:
        assert result.exhausted is not None, "budget exhaustion must be flagged per sample"
        assert result.exhausted.shape == (10,) and result.exhausted.dtype == torch.bool


def _bad_values(param: inspect.Parameter) -> list[object]:
    """Values the parameter must reject, from the type of its default."""
    default = param.default
    if isinstance(default, bool):
        return ["maybe"]
    if isinstance(default, int):
        return [-1, 2.5]
    if isinstance(default, float):
        return [math.nan, "x"]
    if isinstance(default, str):
        return ["no-such-choice"]
    return []


def _cases() -> list[tuple[str, str, object]]:
    cases = []
    for name, cls in attack_classes().items():
        for pname, param in inspect.signature(cls.__init__).parameters.items():
            if pname == "self" or param.kind is not param.KEYWORD_ONLY:
                continue
            cases += [(name, pname, bad) for bad in _bad_values(param)]
    return cases


@pytest.mark.parametrize(("name", "pname", "bad"), _cases())
def test_bad_parameter_values_raise_naming_the_parameter(name: str, pname: str,
                                                         bad: object) -> None:
    attack, _ = FAST[name]()
    with pytest.raises(ValueError, match=f"'{pname}'"):
        type(attack)(**{**attack.get_params(), pname: bad})


class _Broken(nn.Module):
    """The wrapped model's outputs made unusable as class scores."""

    def __init__(self, inner: nn.Module, kind: str) -> None:
        super().__init__()
        self.inner, self.kind = inner, kind

    def forward(self, x: Tensor) -> Tensor:
        out = self.inner(x)
        if self.kind == "one-column":
            return out[:, :1]
        return out.index_fill(1, torch.tensor([0]), math.nan)


@pytest.mark.parametrize("name", ["boundary", "hopskipjump", "onepixel", "square"])
@pytest.mark.parametrize(("kind", "message"), [("nan", "NaN or inf"),
                                               ("one-column", "at least 2 classes")])
def test_black_box_attacks_reject_outputs_that_are_not_scores(
        name: str, kind: str, message: str, tiny_mlp: nn.Module) -> None:
    from advrobust.errors import InvalidInputError

    attack, threat = FAST[name]()
    x, y = batch_for(tiny_mlp, n=4)
    model = _Broken(tiny_mlp, kind).eval()
    if kind == "one-column":
        y = torch.zeros_like(y)
    with pytest.raises(InvalidInputError, match=message):
        attack(model, x.reshape(4, 1, 4, 4), y, threat)


#: Minimum-norm and l0 attacks: a sample already misclassified needs no perturbation.
MINIMUM_NORM = ["boundary", "cw", "deepfool", "fab-t", "hopskipjump", "jsma", "lbfgs",
                "onepixel"]


@pytest.mark.parametrize("name", MINIMUM_NORM)
def test_already_misclassified_samples_get_norm_zero_success_and_a_warning(
        name: str, tiny_mlp: nn.Module) -> None:
    attack, threat = FAST[name]()
    x, y = batch_for(tiny_mlp, n=8)
    wrong = torch.zeros(8, dtype=torch.bool)
    wrong[[1, 4]] = True
    y = torch.where(wrong, (y + 1) % 3, y)  # labels the model gets wrong at the clean point
    with pytest.warns(UserWarning, match="2 of 8 samples are already misclassified"):
        res = attack(tiny_mlp, x, y, threat, generator=torch.Generator().manual_seed(0))
    assert torch.equal(res.x_adv[wrong], x[wrong])
    assert bool((res.norm[wrong] == 0).all()) and bool(res.success[wrong].all())
    assert torch.equal(res.info["already_adversarial"], wrong)
    if res.exhausted is not None:
        assert not bool(res.exhausted[wrong].any())
