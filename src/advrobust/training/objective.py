"""The training-objective contract shared by every defense.

``fit`` owns the loop (batches, optimiser, schedule, progress, checkpoints); an objective owns
only the loss of one batch. Adversarial, certified and regularised training plug in here.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

from torch import Tensor, nn

from advrobust.core.config import Configurable

__all__ = ["Objective"]


class Objective(Configurable, abc.ABC):
    """A training loss ``objective(model, x, y, progress) -> scalar``.

    Hyper-parameters are keyword-only constructor arguments stored verbatim, so a checkpoint can
    record ``type(objective).__name__`` and ``objective.get_params()``.
    """

    def prepare(self, model: nn.Module, input_shape: Sequence[int]) -> None:  # noqa: B027
        """Check before the first batch that the objective can train ``model`` (e.g. that a
        certified objective supports every layer). Raise a clear error otherwise."""

    @abc.abstractmethod
    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: float) -> Tensor:
        """Scalar loss of one batch.

        Args:
            model: the model being trained (in training mode).
            x: inputs (B, ...) in the data's [0, 1] box.
            y: labels (B,).
            progress: fraction of training done, in [0, 1] (drives eps / beta ramps).
        """
