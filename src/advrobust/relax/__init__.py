"""Lower bounds on the worst-case margin: interval bounds, CROWN and the LP relaxation.

The bound passes (:func:`interval_bounds`, :func:`crown_lower`) are differentiable w.r.t. the
network's weights and are the building blocks of certified training.
"""

from advrobust.relax.base import Bounder, Bounds, as_network, default_spec
from advrobust.relax.crown import CROWN, backsubstitute, crown_layer_bounds, crown_lower
from advrobust.relax.ibp import IBP, LayerBounds, interval_bounds, interval_layer_bounds
from advrobust.relax.lp import LPRelaxation

__all__ = [
    "CROWN",
    "IBP",
    "Bounder",
    "Bounds",
    "LPRelaxation",
    "LayerBounds",
    "as_network",
    "backsubstitute",
    "crown_layer_bounds",
    "crown_lower",
    "default_spec",
    "interval_bounds",
    "interval_layer_bounds",
]
