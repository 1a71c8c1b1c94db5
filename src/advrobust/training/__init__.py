"""Training: the loop (``fit``) and the objectives that plug into it."""

from advrobust.training.objective import Objective

__all__ = ["Objective"]
