"""The reference architectures: small MLPs and CNNs of the course material.

Every model is an ``nn.Sequential`` of standard layers (``Flatten``, ``Linear``, ``Conv2d``,
``ReLU``, ``AvgPool2d``) plus an optional leading :class:`Normalize`, so every verifier of the
library can read it; ``resnet8`` adds residual blocks, which IBP and CROWN read
through the graph IR. Layer sizes follow the input shape: digits (1, 8, 8), MNIST (1, 28, 28),
CIFAR-10 (3, 32, 32) or any other (C, H, W).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from advrobust.core._validation import check_int, check_seed
from advrobust.errors import InvalidParameterError
from advrobust.models.minmax import MinMax
from advrobust.models.normalize import Normalize, normalize_values
from advrobust.models.resnet import resnet8_layers

__all__ = ["MODELS", "build_model", "check_input_shape"]

Shape = tuple[int, int, int]


def check_input_shape(input_shape: Any, owner: str = "build_model") -> Shape:
    """Return ``input_shape`` as a (C, H, W) tuple of positive ints, or raise naming it."""
    ok = isinstance(input_shape, (tuple, list, torch.Size)) and len(input_shape) == 3 and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in input_shape)
    if not ok:
        raise InvalidParameterError(
            f"The 'input_shape' parameter of {owner} must be three positive ints (C, H, W), "
            f"e.g. (1, 28, 28). Got {input_shape!r} instead.")
    c, h, w = input_shape
    return int(c), int(h), int(w)


def _mlp(shape: Shape, num_classes: int, hidden: Sequence[int]) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Flatten()]
    width = shape[0] * shape[1] * shape[2]
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, num_classes))
    return layers


def _mlp2(shape: Shape, num_classes: int) -> list[nn.Module]:
    return _mlp(shape, num_classes, (200,))


def _mlp4(shape: Shape, num_classes: int) -> list[nn.Module]:
    return _mlp(shape, num_classes, (200, 100, 100))


def _small(shape: Shape, num_classes: int) -> list[nn.Module]:
    return _mlp(shape, num_classes, (50, 20))


def _strided(size: int) -> int:
    """Output size of a 3x3 convolution with stride 2 and padding 1."""
    return (size - 1) // 2 + 1


def _cnn(shape: Shape, num_classes: int) -> list[nn.Module]:
    c, h, w = shape
    h, w = _strided(_strided(h)), _strided(_strided(w))
    return [
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(64 * h * w, 100), nn.ReLU(), nn.Linear(100, num_classes),
    ]


def _lenet_side(size: int) -> int:
    """Side after conv5 -> pool2 -> conv5 -> pool2 (0 when the input is too small)."""
    size = (size - 4) // 2 - 4
    return max(size // 2, 0)


def _lenet(shape: Shape, num_classes: int) -> list[nn.Module]:
    c, h, w = shape
    h2, w2 = _lenet_side(h), _lenet_side(w)
    if h2 < 1 or w2 < 1:
        raise InvalidParameterError(
            f"The 'lenet' architecture needs images of at least 16x16 pixels (two 5x5 "
            f"convolutions and two 2x2 poolings). Got input_shape {shape} instead; use 'cnn', "
            "'mlp2', 'mlp4' or 'small' for smaller images.")
    return [
        nn.Conv2d(c, 6, 5), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(16 * h2 * w2, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes),
    ]


def _lenet_widened(name: str, shape: Shape, num_classes: int,
                   widths: tuple[int, int, int]) -> list[nn.Module]:
    """LeNet's layout (conv 5x5, avg-pool 2, conv 5x5, avg-pool 2, one hidden FC layer)."""
    c, h, w = shape
    h2, w2 = _lenet_side(h), _lenet_side(w)
    if h2 < 1 or w2 < 1:
        raise InvalidParameterError(
            f"The '{name}' architecture needs images of at least 16x16 pixels (two 5x5 "
            f"convolutions and two 2x2 poolings). Got input_shape {shape} instead; use 'cnn', "
            "'mlp2', 'mlp4' or 'small' for smaller images.")
    c1, c2, fc = widths
    return [
        nn.Conv2d(c, c1, 5), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(c2 * h2 * w2, fc), nn.ReLU(), nn.Linear(fc, num_classes),
    ]


def _lenet_wide(shape: Shape, num_classes: int) -> list[nn.Module]:
    return _lenet_widened("lenet-wide", shape, num_classes, (16, 32, 128))


def _lenet_large(shape: Shape, num_classes: int) -> list[nn.Module]:
    return _lenet_widened("lenet-large", shape, num_classes, (32, 64, 256))


def _minmax_mlp(shape: Shape, num_classes: int, hidden: int = 512) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Flatten()]
    width = shape[0] * shape[1] * shape[2]
    for size in (hidden, hidden):
        layers += [nn.Linear(width, size), MinMax(size)]
        width = size
    layers.append(nn.Linear(width, num_classes))
    return layers


def _minmax_2c2f(shape: Shape, num_classes: int) -> list[nn.Module]:
    c, h, w = shape
    for _ in range(2):  # 4x4 kernels, stride 2, padding 1: the side halves (rounded down)
        h, w = (h - 2) // 2 + 1, (w - 2) // 2 + 1
    if h < 1 or w < 1:
        raise InvalidParameterError(
            f"The 'minmax-2c2f' architecture needs images of at least 4x4 pixels. Got "
            f"input_shape {shape} instead.")
    return [
        nn.Conv2d(c, 16, 4, stride=2, padding=1), MinMax(16, spatial=True),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), MinMax(32, spatial=True),
        nn.Flatten(), nn.Linear(32 * h * w, 100), MinMax(100), nn.Linear(100, num_classes),
    ]


_BUILDERS: dict[str, Callable[[Shape, int], list[nn.Module]]] = {
    "mlp2": _mlp2,
    "mlp4": _mlp4,
    "small": _small,
    "cnn": _cnn,
    "lenet": _lenet,
    "lenet-wide": _lenet_wide,
    "lenet-large": _lenet_large,
    "resnet8": resnet8_layers,
    "minmax-mlp": _minmax_mlp,
    "minmax-mlp-wide": lambda shape, num_classes: _minmax_mlp(shape, num_classes, 1024),
    "minmax-2c2f": _minmax_2c2f,
}

#: Architectures initialised with orthogonal weights (as GloRo nets are: an orthogonal layer
#: has all singular values 1, so the product-of-norms bound starts tight).
_ORTHOGONAL = frozenset({"minmax-mlp", "minmax-mlp-wide", "minmax-2c2f"})

#: Names accepted by :func:`build_model`.
MODELS: tuple[str, ...] = tuple(_BUILDERS)


def build_model(name: str, input_shape: Sequence[int], num_classes: int = 10, *,
                normalize: tuple[Any, Any] | None = None,
                seed: int | None = None) -> nn.Sequential:
    """Build a reference architecture for inputs of a given shape.

    Architectures (ReLU after every hidden layer):

    - ``mlp2``: Flatten, Linear 200, Linear ``num_classes``.
    - ``mlp4``: Flatten, Linear 200, 100, 100, Linear ``num_classes``.
    - ``small``: Flatten, Linear 50, 20, Linear ``num_classes``.
    - ``cnn``: 3x3 convolutions (padding 1) with 32, 32 (stride 2), 64, 64 (stride 2) channels,
      Flatten, Linear 100, Linear ``num_classes``.
    - ``lenet``: LeNet-5 with average pooling: conv 5x5 6, AvgPool 2, conv 5x5 16, AvgPool 2,
      Linear 120, 84, ``num_classes`` (images of at least 16x16).
    - ``lenet-wide``: LeNet's layout with more channels and one hidden FC layer: conv 5x5 16,
      AvgPool 2, conv 5x5 32, AvgPool 2, Linear 128, ``num_classes`` (images of at least
      16x16; about 2.5x LeNet's forward cost, the base classifier of the smoothing bench).
    - ``lenet-large``: ``lenet-wide`` with twice the channels and FC units: conv 5x5 32,
      AvgPool 2, conv 5x5 64, AvgPool 2, Linear 256, ``num_classes`` (about 2.2x
      ``lenet-wide``'s training step on one CPU thread).
    - ``resnet8``: a stride-2 conv stem (16), residual blocks of 16, 32 (stride 2), 64
      (stride 2) channels, global average pooling, Linear ``num_classes``
      (:mod:`advrobust.models.resnet`; verified by IBP / CROWN through the graph IR).
    - ``minmax-mlp``: Flatten, Linear 512, Linear 512, Linear ``num_classes`` with
      :class:`~advrobust.models.minmax.MinMax` (GroupSort-2) activations, orthogonal
      initialisation: a GloRo net (Leino et al. 2021) for Lipschitz-margin training.
    - ``minmax-mlp-wide``: ``minmax-mlp`` with 1024 units per hidden layer (about 2.8x its
      cost per sample).
    - ``minmax-2c2f``: GloRo's 2C2F with MinMax activations: 4x4 convolutions (stride 2,
      padding 1) with 16 and 32 channels, Flatten, Linear 100, Linear ``num_classes``,
      orthogonal initialisation.

    Args:
        name: One of :data:`MODELS`.
        input_shape: (C, H, W) of one input, e.g. (1, 28, 28).
        num_classes: Number of output logits.
        normalize: ``(mean, std)``, each one float or one per channel: prepend
            :class:`Normalize` so the model takes [0, 1] pixels.
        seed: If given, initialise the weights from this seed without touching the caller's
            global RNG state (``torch.random.fork_rng``); if None, use the global RNG.

    Weights use He (Kaiming normal, fan-in) initialisation and zero biases (He et al. 2015),
    not PyTorch's default: with the default, plain SGD at lr 0.1 sits on a loss plateau for the
    first ~100 steps of the ``cnn`` on MNIST, and one epoch over our 24,345 training images ends at
    88% test accuracy instead of the 95%+ it reaches with He initialisation.

    Returns:
        The model, in training mode, on the CPU, float32.

    Raises:
        InvalidParameterError: unknown name (the message lists :data:`MODELS`), bad
            ``input_shape``, ``num_classes``, ``normalize`` or ``seed``, or an input too small
            for the architecture.
    """
    if name not in _BUILDERS:
        raise InvalidParameterError(
            f"The 'name' parameter of build_model must be one of {', '.join(MODELS)}. "
            f"Got {name!r} instead.")
    shape = check_input_shape(input_shape)
    num_classes = check_int(num_classes, "num_classes", "build_model", low=2)
    if seed is None:
        return _assemble(name, shape, num_classes, normalize)
    seed = check_seed(seed, "seed", "build_model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _assemble(name, shape, num_classes, normalize)


def _assemble(name: str, shape: Shape, num_classes: int,
              normalize: tuple[Any, Any] | None) -> nn.Sequential:
    layers = _BUILDERS[name](shape, num_classes)
    for layer in (m for top in layers for m in top.modules()):
        if isinstance(layer, (nn.Linear, nn.Conv2d)) and layer.weight.requires_grad:
            if name in _ORTHOGONAL:
                nn.init.orthogonal_(layer.weight)
            else:
                nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    if normalize is not None:
        layers.insert(0, _normalize_layer(normalize, shape[0]))
    return nn.Sequential(*layers)


def _normalize_layer(normalize: Any, channels: int) -> Normalize:
    if not isinstance(normalize, (tuple, list)) or len(normalize) != 2:
        raise InvalidParameterError(
            "The 'normalize' parameter of build_model must be None or a pair (mean, std). "
            f"Got {normalize!r} instead.")
    mean, std = normalize_values(*normalize)
    if len(mean) not in (1, channels):
        raise InvalidParameterError(
            f"The 'normalize' parameter of build_model must give "
            f"{'1 value' if channels == 1 else f'1 or {channels} values'} per statistic for "
            f"{channels}-channel inputs. Got {len(mean)} instead.")
    return Normalize(mean, std)
