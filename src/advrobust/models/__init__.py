"""Reference architectures, input normalisation, and safe checkpoints.

``build_model("cnn", (1, 28, 28))`` builds one of :data:`MODELS`; ``save_checkpoint`` /
``load_checkpoint`` store weights with how to rebuild the model, loaded with
``torch.load(weights_only=True)``; ``Ensemble([m1, m2])`` soft-votes several models as one.
"""

from advrobust.models.architectures import MODELS, build_model, check_input_shape
from advrobust.models.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    LoadedCheckpoint,
    check_checkpointable,
    load_checkpoint,
    save_checkpoint,
    to_primitive,
)
from advrobust.models.ensemble import Ensemble
from advrobust.models.minmax import MinMax
from advrobust.models.normalize import Normalize

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "Ensemble",
    "MODELS",
    "LoadedCheckpoint",
    "MinMax",
    "Normalize",
    "build_model",
    "check_checkpointable",
    "check_input_shape",
    "load_checkpoint",
    "save_checkpoint",
    "to_primitive",
]
