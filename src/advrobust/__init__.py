"""advrobust: how robust is a PyTorch classifier against adversarial inputs?

Attacks bound the worst-case margin from above, verifiers bound it from below, defenses train it
up, and evaluation turns the brackets into reports. See the README for a tour.
"""

from advrobust.core import (
    AttackResult,
    BoundResult,
    LpBall,
    Norm,
    Spec,
    Verdict,
)
from advrobust.errors import (
    AdvRobustError,
    CheckpointError,
    DataFormatError,
    DatasetNotFoundError,
    InvalidInputError,
    InvalidParameterError,
    InvalidThreatModelError,
    MissingFileError,
    SolverUnavailableError,
    UnsupportedLayerError,
)

__version__ = "0.1.0"

__all__ = [
    "AdvRobustError",
    "AttackResult",
    "BoundResult",
    "CheckpointError",
    "DataFormatError",
    "DatasetNotFoundError",
    "InvalidInputError",
    "InvalidParameterError",
    "InvalidThreatModelError",
    "LpBall",
    "MissingFileError",
    "Norm",
    "SolverUnavailableError",
    "Spec",
    "UnsupportedLayerError",
    "Verdict",
    "__version__",
]
