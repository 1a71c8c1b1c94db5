"""Lower bounds on the worst-case margin: interval bounds, CROWN, the LP relaxation and
Lipschitz certificates; certified radii.

The bound passes (:func:`interval_bounds`, :func:`crown_lower`) are differentiable w.r.t. the
network's weights and are the building blocks of certified training.
"""

from advrobust.relax.base import Bounder, Bounds, as_network, default_spec
from advrobust.relax.crown import CROWN, backsubstitute, crown_layer_bounds, crown_lower
from advrobust.relax.ibp import IBP, LayerBounds, interval_bounds, interval_layer_bounds
from advrobust.relax.lipschitz import GlobalLipschitz, LocalLipschitz
from advrobust.relax.lp import LPRelaxation
from advrobust.relax.radius import RadiusResult, certified_radius

__all__ = [
    "CROWN",
    "IBP",
    "Bounder",
    "Bounds",
    "GlobalLipschitz",
    "LPRelaxation",
    "LayerBounds",
    "LocalLipschitz",
    "RadiusResult",
    "as_network",
    "backsubstitute",
    "certified_radius",
    "crown_layer_bounds",
    "crown_lower",
    "default_spec",
    "interval_bounds",
    "interval_layer_bounds",
]
