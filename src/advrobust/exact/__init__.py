"""Exact verification: the MILP worst-case margin and the minimal adversarial distortion."""

from advrobust.exact.milp import MILP, lp_tighten_bounds
from advrobust.exact.minimal import DistortionResult, MinimalDistortion

__all__ = ["MILP", "DistortionResult", "MinimalDistortion", "lp_tighten_bounds"]
