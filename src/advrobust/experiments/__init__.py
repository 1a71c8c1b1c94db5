"""The lectures' theory, runnable: adversarial examples at random initialisation, and a provably
robust network certified by the library's own verifiers.

Sits above evaluation and below the CLI: it uses attacks, bound propagation and training, and
nothing below imports it.
"""

from advrobust.experiments._construction import (
    exact_radius,
    measured_c,
    robust_network,
    sphere_data,
    theorem_bound,
)
from advrobust.experiments._radius import RadiusBracket, radius_bracket
from advrobust.experiments._random_net import ACTIVATIONS, Theory, theory
from advrobust.experiments.init_attack import (
    InitAttackResult,
    InitAttackRow,
    init_attack,
    parse_width,
)
from advrobust.experiments.robust_net import (
    RobustNetResult,
    RobustNetRow,
    robust_net,
    train_two_layer,
)

__all__ = [
    "ACTIVATIONS",
    "RadiusBracket",
    "InitAttackResult",
    "InitAttackRow",
    "RobustNetResult",
    "RobustNetRow",
    "Theory",
    "exact_radius",
    "init_attack",
    "measured_c",
    "parse_width",
    "radius_bracket",
    "robust_net",
    "robust_network",
    "sphere_data",
    "theorem_bound",
    "theory",
    "train_two_layer",
]
