"""Exact verification: the MILP worst-case margin, branch and bound on ReLU splits, and the
minimal adversarial distortion."""

from advrobust.exact.bab import BaB
from advrobust.exact.milp import MILP, lp_tighten_bounds
from advrobust.exact.minimal import DistortionResult, MinimalDistortion

__all__ = ["MILP", "BaB", "DistortionResult", "MinimalDistortion", "lp_tighten_bounds"]
