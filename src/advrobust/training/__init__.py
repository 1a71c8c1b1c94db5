"""Training: the loop (``fit``) and the objectives that plug into it."""

from advrobust.training.history import EpochStats, History
from advrobust.training.loop import fit
from advrobust.training.objective import Objective
from advrobust.training.objectives import Standard
from advrobust.training.schedule import course_schedule, lr_at_epoch

__all__ = [
    "EpochStats",
    "History",
    "Objective",
    "Standard",
    "course_schedule",
    "fit",
    "lr_at_epoch",
]
