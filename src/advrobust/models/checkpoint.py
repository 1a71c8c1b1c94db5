"""Checkpoints: one file, a plain dict of primitives and tensors, loaded without pickle code.

Layout (``torch.save`` of a dict)::

    {"format": "advrobust-checkpoint", "version": 1,
     "arch": "cnn",
     "arch_kwargs": {"input_shape": [1, 28, 28], "num_classes": 10, "normalize": None},
     "state_dict": {name: tensor, ...},
     "metadata": {"dataset": "mnist", "epochs": 10, "clean_accuracy": 0.99, ...}}

Loading always uses ``torch.load(weights_only=True)``: a file whose pickle would build any other
object (and so could run code) is refused, and the model is rebuilt from ``arch`` by
:func:`~advrobust.models.build_model`, never unpickled.
"""

from __future__ import annotations

import datetime
import enum
import math
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advrobust.core._atomic import atomic_write
from advrobust.core._validation import check_int
from advrobust.errors import AdvRobustError, CheckpointError, InvalidParameterError
from advrobust.models.architectures import build_model, check_input_shape
from advrobust.models.normalize import normalize_values

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "LoadedCheckpoint",
           "check_checkpointable", "load_checkpoint", "save_checkpoint", "to_primitive"]

CHECKPOINT_FORMAT = "advrobust-checkpoint"
CHECKPOINT_VERSION = 1
_KEYS = ("format", "version", "arch", "arch_kwargs", "state_dict", "metadata")
_ARCH_KEYS = ("input_shape", "num_classes", "normalize")


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A model rebuilt from a checkpoint.

    Attributes:
        model: The rebuilt model with the saved weights, in eval mode.
        arch: Architecture name (one of ``advrobust.models.MODELS``).
        arch_kwargs: ``input_shape``, ``num_classes`` and ``normalize`` given to ``build_model``.
        metadata: What the writer recorded (dataset, epochs, seed, clean accuracy, objective,
            library version, timestamp, ...).
        training_state: What ``fit`` needs to resume training (optimizer, random streams,
            epochs done), or None.
    """

    model: nn.Module
    arch: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    training_state: dict[str, Any] | None = None

    @property
    def num_parameters(self) -> int:
        """Number of trainable scalars of the model."""
        return sum(p.numel() for p in self.model.parameters())


def to_primitive(value: Any) -> Any:
    """Best-effort conversion to what a checkpoint can hold: numbers, strings, lists, dicts.

    Enums become their value, one-element tensors and numpy scalars numbers, paths strings,
    non-finite floats their ``repr``, and any other object its ``repr``. Use it on metadata
    built from arbitrary objects (e.g. an objective's parameters) before
    :func:`save_checkpoint`.
    """
    if isinstance(value, enum.Enum):
        return to_primitive(value.value)
    if value is None or type(value) in (bool, int, str):
        return value
    if isinstance(value, Mapping):
        return {str(k): to_primitive(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_primitive(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if (torch.is_tensor(value) and value.numel() == 1) or (
            type(value).__module__ == "numpy" and hasattr(value, "item")):
        value = value.item()
    if isinstance(value, (bool, int, str)):
        return type(value)(value) if type(value) is not bool else value
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else repr(float(value))
    return repr(value)


def _check_primitive(value: Any, where: str) -> None:
    # Exact types: a str-Enum or numpy.float64 passes isinstance but pickles as a class that
    # ``weights_only`` loading refuses.
    if value is None or type(value) in (bool, int, float, str) or torch.is_tensor(value):
        return
    if type(value) in (list, tuple):
        for i, v in enumerate(value):
            _check_primitive(v, f"{where}[{i}]")
        return
    if type(value) is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise InvalidParameterError(f"Checkpoint {where} keys must be str. Got {k!r}.")
            _check_primitive(v, f"{where}[{k!r}]")
        return
    raise InvalidParameterError(
        f"Checkpoint {where} must hold only None, bool, int, float, str, tensors, lists and "
        f"dicts (so it loads with weights_only=True). Got {type(value).__name__}: {value!r}; "
        "convert it with advrobust.models.to_primitive.")


def _arch_kwargs(arch_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(arch_kwargs, Mapping) or set(arch_kwargs) - set(_ARCH_KEYS) \
            or "input_shape" not in arch_kwargs:
        raise InvalidParameterError(
            "The 'arch_kwargs' parameter of save_checkpoint must be a dict with 'input_shape' "
            f"and optionally 'num_classes' and 'normalize'. Got {arch_kwargs!r} instead.")
    shape = check_input_shape(arch_kwargs["input_shape"], "save_checkpoint")
    num_classes = check_int(arch_kwargs.get("num_classes", 10), "num_classes",
                            "save_checkpoint", low=2)
    normalize = arch_kwargs.get("normalize")
    if normalize is not None:
        if not isinstance(normalize, (list, tuple)) or len(normalize) != 2:
            raise InvalidParameterError(
                "The 'normalize' entry of save_checkpoint's arch_kwargs must be None or a pair "
                f"(mean, std). Got {normalize!r} instead.")
        normalize = list(normalize_values(*normalize))
    return {"input_shape": list(shape), "num_classes": num_classes, "normalize": normalize}


def check_checkpointable(model: nn.Module, *, arch: str, arch_kwargs: Mapping[str, Any],
                         metadata: Mapping[str, Any] | None = None) -> None:
    """Run every check of :func:`save_checkpoint` without writing (e.g. before a long training).

    Raises:
        InvalidParameterError: metadata that is not primitive, bad ``arch_kwargs``.
        CheckpointError: ``model``'s weights do not fit ``arch`` / ``arch_kwargs``.
    """
    _checked(model, arch, arch_kwargs, dict(metadata or {}))


def _checked(model: nn.Module, arch: str, arch_kwargs: Mapping[str, Any],
             metadata: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    kwargs = _arch_kwargs(arch_kwargs)
    _check_primitive(metadata, "metadata")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    _rebuild(arch, kwargs, state, "cpu")
    return kwargs, state


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, *, arch: str,
                    arch_kwargs: Mapping[str, Any],
                    metadata: Mapping[str, Any] | None = None,
                    training_state: Mapping[str, Any] | None = None) -> Path:
    """Write ``model``'s weights and how to rebuild it to ``path`` (atomically).

    The architecture is rebuilt from ``arch`` and ``arch_kwargs`` before writing, so a file that
    would not load again is never written. ``metadata`` gets ``library_version`` and ``saved_at``
    (UTC, ISO 8601) unless it has them.

    Args:
        path: File to write; parent folders are created.
        model: A model built by ``build_model(arch, **arch_kwargs)`` (weights may be trained).
        arch: Architecture name (one of ``MODELS``).
        arch_kwargs: ``input_shape`` and optionally ``num_classes``, ``normalize``.
        metadata: Primitives only (see :func:`to_primitive`).
        training_state: Optional state to resume training from (tensors, numbers, lists and
            dicts: optimizer state, generator states), written by :func:`~advrobust.training.fit`.

    Returns:
        The path written (with the user's umask; a failure names ``path``).

    Raises:
        InvalidParameterError: metadata that is not primitive, bad ``arch_kwargs``.
        CheckpointError: ``model``'s weights do not fit ``arch`` / ``arch_kwargs``.
    """
    from advrobust import __version__

    meta = dict(metadata or {})
    meta.setdefault("library_version", __version__)
    meta.setdefault("saved_at", datetime.datetime.now(datetime.timezone.utc).isoformat())
    kwargs, state = _checked(model, arch, arch_kwargs, meta)
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "arch": arch,
               "arch_kwargs": kwargs, "state_dict": state, "metadata": meta}
    if training_state is not None:
        payload["training_state"] = dict(training_state)
    return atomic_write(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path: str | os.PathLike[str],
                    map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the model saved in ``path`` with ``torch.load(weights_only=True)``.

    Args:
        path: A file written by :func:`save_checkpoint` (or ``advrobust train``).
        map_location: Device to load the weights and the model onto.

    Returns:
        The model (eval mode, on ``map_location``) with its architecture and metadata.

    Raises:
        CheckpointError: missing, empty, corrupt or unsafe file (pickled code is refused, never
            run), missing keys, unknown format version or architecture, or weights that do not
            fit the architecture.
    """
    try:
        torch.device(map_location)
    except (RuntimeError, TypeError):
        raise InvalidParameterError(
            "The 'map_location' parameter of load_checkpoint must be a device such as 'cpu' or "
            f"'cuda:0'. Got {map_location!r} instead.") from None
    file = Path(path)
    if not file.is_file():
        reason = "is a directory" if file.is_dir() else "does not exist"
        raise CheckpointError(f"Cannot load checkpoint {str(file)!r}: the file {reason}.")
    payload = _read(file, map_location)
    arch, kwargs, state, meta = _unpack(payload, file)
    model = _rebuild(arch, kwargs, state, map_location, file)
    training = payload.get("training_state")
    return LoadedCheckpoint(model=model.eval(), arch=arch, arch_kwargs=kwargs, metadata=meta,
                            training_state=training if isinstance(training, dict) else None)


def _read(file: Path, map_location: str | torch.device) -> Any:
    if file.stat().st_size == 0:
        raise CheckpointError(f"Cannot load checkpoint {str(file)!r}: the file is empty.")
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found:
            raise CheckpointError(
                f"Refused to load checkpoint {str(file)!r}: it would rebuild the Python object "
                f"{found.group(1)}, and unpickling arbitrary objects can run code. advrobust "
                "checkpoints hold only tensors and primitives.") from None
        detail = str(exc).split("WeightsUnpickler error:")[-1].split("Check the doc")[0].strip()
        raise CheckpointError(
            f"Cannot load checkpoint {str(file)!r}: not a weights-only torch file (corrupt, or a "
            f"pickle of arbitrary objects, which is never run): {detail[:200]}") from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, ValueError... on garbage
        raise CheckpointError(
            f"Cannot load checkpoint {str(file)!r}: the file is corrupt or not a torch "
            f"checkpoint ({type(exc).__name__}: {exc}).") from None


def _unpack(payload: Any, file: Path) -> tuple[str, dict[str, Any], dict[str, Any], dict]:
    where = f"Checkpoint {str(file)!r}"
    if not isinstance(payload, dict):
        raise CheckpointError(f"{where} holds a {type(payload).__name__}, not an advrobust "
                              "checkpoint dict (write one with advrobust.models.save_checkpoint).")
    missing = [k for k in _KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{where} is missing the keys {missing}: not an advrobust "
                              "checkpoint, or a damaged one.")
    if payload["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{where} has format tag {payload['format']!r}, expected "
                              f"{CHECKPOINT_FORMAT!r}.")
    version = payload["version"]
    if not isinstance(version, int) or not 1 <= version <= CHECKPOINT_VERSION:
        raise CheckpointError(f"{where} has format version {version!r}; this advrobust reads "
                              f"versions 1 to {CHECKPOINT_VERSION}. Upgrade advrobust.")
    for key, kind in (("arch", str), ("arch_kwargs", dict), ("state_dict", dict),
                      ("metadata", dict)):
        if not isinstance(payload[key], kind):
            raise CheckpointError(f"{where}: '{key}' must be a {kind.__name__}, got "
                                  f"{type(payload[key]).__name__}.")
    return payload["arch"], payload["arch_kwargs"], payload["state_dict"], payload["metadata"]


def _rebuild(arch: str, kwargs: dict[str, Any], state: dict[str, Any],
             map_location: str | torch.device, file: Path | None = None) -> nn.Module:
    where = f"Checkpoint {str(file)!r}" if file else "save_checkpoint"
    try:
        model = build_model(arch, **kwargs)
    except (AdvRobustError, TypeError) as exc:
        raise CheckpointError(f"{where}: cannot rebuild architecture {arch!r} from "
                              f"{kwargs}: {exc}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shape = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in
                 expected.items() if k in state and (not torch.is_tensor(state[k])
                                                     or state[k].shape != v.shape)]
    if missing or unexpected or bad_shape:
        raise CheckpointError(
            f"{where}: the weights do not fit architecture {arch!r} with {kwargs}. "
            f"Missing: {missing or 'none'}; unexpected: {unexpected or 'none'}; "
            f"shape mismatches (saved vs expected): {bad_shape or 'none'}.")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise CheckpointError(
            f"{where}: the weights {bad[:5]} hold NaN or infinite values; such a model gives "
            "meaningless predictions, attacks and bounds. Retrain it (a smaller learning rate) "
            "or restore an earlier checkpoint.")
    model.load_state_dict(state)
    return model.to(map_location)
