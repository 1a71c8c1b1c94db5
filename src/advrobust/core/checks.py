"""Validation of the data handed to attacks and verifiers (x, y, target, model outputs)."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from advrobust.core.modes import model_device
from advrobust.core.threat import LpBall
from advrobust.errors import InvalidInputError, ModelInputError

__all__ = ["check_batch", "check_generator", "check_labels", "looks_like_probabilities",
           "warn_if_probabilities"]


def check_labels(y: Tensor, n: int, num_classes: int, name: str = "y") -> None:
    """Raise unless ``y`` is an integer tensor (n,) with values in [0, num_classes)."""
    if not torch.is_tensor(y) or y.dtype not in (torch.int64, torch.int32, torch.int16,
                                                  torch.int8, torch.uint8):
        raise InvalidInputError(
            f"'{name}' must be an integer torch.Tensor of class indices. Got "
            f"{type(y).__name__ if not torch.is_tensor(y) else y.dtype} instead.")
    if tuple(y.shape) != (n,):
        raise InvalidInputError(
            f"'{name}' must have shape ({n},) to match x. Got {tuple(y.shape)} instead.")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise InvalidInputError(
            f"'{name}' must hold class indices in [0, {num_classes - 1}]. Got values in "
            f"[{int(y.min())}, {int(y.max())}] instead.")


def looks_like_probabilities(out: Tensor) -> bool:
    """True if every row is non-negative and sums to 1 (softmax outputs, not logits)."""
    if out.dim() != 2 or out.shape[1] < 2:
        return False
    rows = out.sum(dim=1)
    return bool((out >= 0).all()) and bool(torch.allclose(rows, torch.ones_like(rows), atol=1e-4))


def warn_if_probabilities(out: Tensor, who: str) -> bool:
    """Warn that attacks need logits if ``out`` looks like probabilities; return the finding."""
    found = looks_like_probabilities(out)
    if found:
        warnings.warn(
            f"{who}: the model's outputs look like probabilities (non-negative rows summing to 1). "
            "Attacks and bounds need logits: remove the final softmax layer. Gradients through a "
            "saturated softmax vanish and make the model look more robust than it is.",
            UserWarning, stacklevel=3)
    return found


def check_generator(generator: object, who: str) -> None:
    """Raise unless ``generator`` is None or a ``torch.Generator`` (not a seed)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InvalidInputError(
            f"The 'generator' argument of {who} must be a torch.Generator or None. Got "
            f"{type(generator).__name__} {generator!r} instead; pass "
            f"torch.Generator().manual_seed(SEED) for a seeded run.")


def _clean_forward(model: nn.Module, x: Tensor) -> Tensor:
    """The model's outputs on ``x`` (no grad); a model that cannot take ``x`` says so by shape."""
    try:
        with torch.no_grad():
            out: Tensor = model(x)
    except RuntimeError as exc:
        raise ModelInputError(
            f"The model cannot take 'x' of shape {tuple(x.shape)} (a batch of inputs shaped "
            f"{tuple(x.shape[1:])}); its forward raised: {str(exc).splitlines()[0]}. If that "
            "is not the input shape the model was built for, pass inputs of that shape.") from exc
    return out


def check_batch(model: nn.Module, x: Tensor, y: Tensor, threat: LpBall,
                target: Tensor | None = None, who: str = "attack") -> Tensor:
    """Validate a batch and return the model's clean outputs (one forward, no grad).

    Raises:
        InvalidInputError: x not float / NaN / outside the box; y wrong shape or out of range;
            target equal to y; tensors on different devices; outputs not (N, classes).
    """
    if not isinstance(threat, LpBall):
        raise InvalidInputError(f"'threat' must be an LpBall. Got {type(threat).__name__} instead.")
    threat.check_input(x)
    if not torch.is_tensor(y):
        raise InvalidInputError(f"'y' must be a torch.Tensor. Got {type(y).__name__} instead.")
    dev = model_device(model)
    for name, t in (("y", y), ("target", target)):
        if t is not None and torch.is_tensor(t) and t.device != x.device:
            raise InvalidInputError(
                f"'{name}' is on {t.device} but 'x' is on {x.device}: x, y and target must be on "
                "one device.")
    if dev is not None and x.device != dev:
        raise InvalidInputError(
            f"'x' is on {x.device} but the model is on {dev}: move the data to the model's "
            "device (advrobust never moves your model).")
    weights = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if weights is not None and x.dtype != weights:
        raise InvalidInputError(
            f"'x' has dtype {x.dtype} but the model's weights are {weights}: convert the inputs "
            f"with x.to({weights}) (advrobust never converts your model or your data).")
    out = _clean_forward(model, x)
    if torch.is_tensor(out) and out.is_floating_point() and not bool(out.isfinite().all()):
        rows = (~out.isfinite()).any(dim=-1).nonzero().flatten()[:10].tolist() \
            if out.dim() >= 1 else []
        raise InvalidInputError(
            f"The model's outputs are NaN or infinite on the clean inputs (samples {rows}): "
            "margins, attacks and bounds would be meaningless. Check the weights for NaN / inf.")
    if out.dim() != 2 or out.shape[0] != x.shape[0]:
        raise InvalidInputError(
            f"The model must map x of shape {tuple(x.shape)} to outputs (N, classes); "
            f"got {tuple(out.shape)}.")
    check_labels(y, x.shape[0], out.shape[1])
    if target is not None:
        check_labels(target, x.shape[0], out.shape[1], name="target")
        same = target == y
        if bool(same.any()):
            raise InvalidInputError(
                f"'target' must differ from 'y' for every sample; they are equal at indices "
                f"{same.nonzero().flatten()[:10].tolist()}.")
    warn_if_probabilities(out, who)
    return out
