"""Attacks: feasible points of the threat set, i.e. upper bounds on the worst-case margin.

Every attack is an :class:`Attack` subclass with a ``cli_name`` (the name ``advrobust attack
--attack NAME`` uses), called as ``attack(model, x, y, threat, target=None, generator=None)``
and returning an :class:`~advrobust.core.result.AttackResult`.
"""

from advrobust.attacks._universal_io import (
    load_universal,
    plot_universal,
    run_universal,
    save_universal,
)
from advrobust.attacks.apgd import APGD, APGDTargeted
from advrobust.attacks.base import Attack, AttackOutput, Oracle
from advrobust.attacks.boundary import Boundary
from advrobust.attacks.cw import CarliniWagner
from advrobust.attacks.deepfool import DeepFool
from advrobust.attacks.dictionary import (
    ADiL,
    Dictionary,
    DictionaryAttack,
    SADiL,
    load_dictionary,
    save_dictionary,
)
from advrobust.attacks.ensemble import Ensemble, Strongest, strongest
from advrobust.attacks.fab import FABTargeted
from advrobust.attacks.gradient import FGSM, PGD, fgsm, pgd
from advrobust.attacks.hopskipjump import HopSkipJump
from advrobust.attacks.jsma import JSMA
from advrobust.attacks.lbfgs import LBFGS
from advrobust.attacks.onepixel import OnePixel
from advrobust.attacks.square import Square
from advrobust.attacks.transfer import Transfer
from advrobust.attacks.universal import (
    FixedPerturbation,
    UniversalPerturbation,
    UniversalResult,
    fooling_rate,
)

# One line per attack module above; keep __all__ sorted.
__all__ = [
    "APGD",
    "ADiL",
    "FGSM",
    "JSMA",
    "LBFGS",
    "PGD",
    "APGDTargeted",
    "Attack",
    "AttackOutput",
    "Boundary",
    "CarliniWagner",
    "DeepFool",
    "Dictionary",
    "DictionaryAttack",
    "Ensemble",
    "FABTargeted",
    "FixedPerturbation",
    "HopSkipJump",
    "OnePixel",
    "Oracle",
    "SADiL",
    "Square",
    "Strongest",
    "Transfer",
    "attack_classes",
    "UniversalPerturbation",
    "UniversalResult",
    "fgsm",
    "fooling_rate",
    "load_dictionary",
    "load_universal",
    "pgd",
    "plot_universal",
    "run_universal",
    "save_dictionary",
    "save_universal",
    "strongest",
]


def attack_classes() -> dict[str, type]:
    """Every concrete attack class of :mod:`advrobust.attacks` with a ``cli_name``, by name.

    Attacks defined elsewhere (e.g. the detection module's evasive C&W, which needs a fitted
    detector and has its own command) are left out, so the list does not depend on which
    modules happen to be imported. The CLI and campaign configs look names up here.
    """
    import inspect

    found: dict[str, type] = {}
    stack: list[type] = list(Attack.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        name = getattr(cls, "cli_name", None)
        if name and not inspect.isabstract(cls) and cls.__module__.startswith("advrobust.attacks"):
            found[name] = cls
    return dict(sorted(found.items()))
