"""Exception types of advrobust.

Every error subclasses a built-in exception so callers can catch either the precise advrobust
type or the familiar built-in one (``except ValueError`` keeps working).
"""

from __future__ import annotations

__all__ = [
    "AdvRobustError",
    "CheckpointError",
    "DataFormatError",
    "DatasetNotFoundError",
    "FileInUseError",
    "InvalidInputError",
    "InvalidParameterError",
    "InvalidThreatModelError",
    "MemoryLimitError",
    "ModelInputError",
    "NotFittedError",
    "SolverUnavailableError",
    "TrainingDivergedError",
    "UnsupportedLayerError",
]


class AdvRobustError(Exception):
    """Base class of every error raised on purpose by advrobust."""


class InvalidParameterError(AdvRobustError, ValueError):
    """A constructor or function parameter is outside its allowed values."""


class InvalidThreatModelError(InvalidParameterError):
    """A threat model (norm, eps, input box) is malformed."""


class InvalidInputError(AdvRobustError, ValueError):
    """Data handed to a method (x, y, targets, model outputs) is malformed."""


class ModelInputError(InvalidInputError, RuntimeError):
    """The model's forward failed on the inputs (e.g. a wrong shape); also the RuntimeError
    torch raised, so ``except RuntimeError`` keeps working."""


class UnsupportedLayerError(AdvRobustError, NotImplementedError):
    """A network contains a layer a verifier cannot represent."""


class SolverUnavailableError(AdvRobustError, ImportError):
    """An optional LP / MILP backend is not installed."""


class CheckpointError(AdvRobustError, ValueError):
    """A checkpoint file is corrupt, unsafe, or describes an unknown model."""


class DatasetNotFoundError(AdvRobustError, FileNotFoundError):
    """The files of a dataset were not found where they were looked for."""


class MissingFileError(AdvRobustError, FileNotFoundError):
    """A file the caller named (network, property, dictionary, perturbation) does not exist."""


class DataFormatError(AdvRobustError, ValueError):
    """A dataset file exists but its content is malformed (bad magic, truncated, ...)."""


class TrainingDivergedError(AdvRobustError, FloatingPointError):
    """Training produced a non-finite loss; the last good state is kept."""


class NotFittedError(AdvRobustError, RuntimeError):
    """A fitted object (e.g. a detector) was used before ``fit``."""


class FileInUseError(AdvRobustError, BlockingIOError):
    """Another process holds the file (an output being written, a campaign store being run)."""


class MemoryLimitError(AdvRobustError, MemoryError):
    """A computation would need more memory than a stated limit (the message gives the estimate)."""
