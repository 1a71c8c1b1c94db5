"""advrobust: how robust is a PyTorch classifier against adversarial inputs?

Attacks bound the worst-case margin from above, verifiers bound it from below, defenses train it
up, and evaluation turns the brackets into reports. See the README for a tour.
"""

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from advrobust.core import AttackResult, BoundResult, LpBall, Norm, Spec, Verdict

# The core names need torch (seconds to import); they load on first use, so ``advrobust --help``
# and ``import advrobust.errors`` stay fast (PEP 562).
_LAZY = {"AttackResult", "BoundResult", "LpBall", "Norm", "Spec", "Verdict"}


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module("advrobust.core"), name)
        globals()[name] = value
        return value
    if name.startswith("__"):
        raise AttributeError(f"module 'advrobust' has no attribute {name!r}")
    try:  # ``advrobust.attacks`` after a bare ``import advrobust``
        return importlib.import_module(f"advrobust.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"advrobust.{name}":
            raise
    raise AttributeError(f"module 'advrobust' has no attribute {name!r}")
