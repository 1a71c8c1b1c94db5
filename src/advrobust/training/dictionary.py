"""Defenses built from a learned adversarial dictionary, as training objectives for ``fit``.

Two ways to harden a model against the perturbations ``D v`` of a dictionary learned by
:class:`~advrobust.attacks.ADiL` / :class:`~advrobust.attacks.SADiL`:

- :class:`DictionaryAdversarialTraining`: augment every batch with adversarial examples
  ``{clip(x_i + D v_i), y_i}``, the codes ``v_i`` found against the current model with D fixed
  (sparse coding, see :mod:`advrobust.attacks.dictionary.coding`);
- :class:`DictionaryNoiseTraining`: augment with noise ``{clip(x_i + D z_i), y_i}``,
  ``z_i ~ Laplace(0, b)`` i.i.d. per coordinate, ``b`` fitted to the learned codes by maximum
  likelihood (``b = mean |v|``) unless given.

Both return ``(1 - w) CE(f(x), y) + w CE(f(x_aug), y)`` with ``w = augmented_weight``. As for the
other adversarial objectives, the inner coding runs with the model in eval mode and the outer loss
in the caller's mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.attacks.dictionary import (
    Dictionary,
    apply_codes,
    code_inputs,
    fit_laplace_scale,
    load_dictionary,
    sample_laplace,
)
from advrobust.core._validation import check_float, check_int
from advrobust.errors import InvalidInputError, InvalidParameterError
from advrobust.training._defense_utils import GeneratorCache, attack_mode
from advrobust.training.objective import Objective

__all__ = ["DictionaryAdversarialTraining", "DictionaryNoiseTraining"]


def _as_dictionary(value: object, owner: str, dataset: str | None) -> Dictionary:
    if dataset is not None and not isinstance(dataset, str):
        raise InvalidParameterError(
            f"The 'dataset' parameter of {owner} must be a dataset name or None. Got "
            f"{type(dataset).__name__} instead.")
    if isinstance(value, Dictionary):
        value.check_compatible(dataset=dataset, who=owner)
        return value
    if isinstance(value, (str, Path)):
        return load_dictionary(value, dataset=dataset)
    raise InvalidParameterError(
        f"The 'dictionary' parameter of {owner} must be a Dictionary or the path of a dictionary "
        f"file. Got {type(value).__name__} instead.")


def _check_shape(dictionary: Dictionary, input_shape: tuple[int, ...], owner: str) -> None:
    dictionary.check_compatible(tuple(input_shape), who=owner)


def _mixed(model: nn.Module, x: Tensor, x_aug: Tensor, y: Tensor, weight: float) -> Tensor:
    clean = F.cross_entropy(model(x), y) if weight < 1 else x.new_zeros(())
    return (1 - weight) * clean + weight * F.cross_entropy(model(x_aug), y)


class DictionaryAdversarialTraining(Objective):
    """Train on ``x + D v`` with codes found against the current model (D fixed).

    Args:
        dictionary: a :class:`~advrobust.attacks.Dictionary` or the path of its file.
        steps: sparse-coding iterations per batch.
        step_size: coding step gamma.
        augmented_weight: weight ``w`` of the adversarial term, in [0, 1].
        dataset: name of the training data; when given, a dictionary that recorded another
            dataset is refused.

    Raises:
        InvalidInputError: the dictionary was learned on another dataset.
    """

    def __init__(self, *, dictionary: Dictionary | str | Path, steps: int = 5,
                 step_size: float = 1.0, augmented_weight: float = 0.5,
                 dataset: str | None = None) -> None:
        owner = "DictionaryAdversarialTraining"
        self.dictionary = dictionary
        self.dataset = dataset
        self._dictionary = _as_dictionary(dictionary, owner, dataset)
        self.steps = check_int(steps, "steps", owner, low=1)
        self.step_size = check_float(step_size, "step_size", owner, low=0.0, low_open=True)
        self.augmented_weight = check_float(augmented_weight, "augmented_weight", owner,
                                            low=0.0, high=1.0)

    def prepare(self, model: nn.Module, input_shape: Sequence[int]) -> None:
        _check_shape(self._dictionary, tuple(input_shape), type(self).__name__)

    def adversarial_examples(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """``clip(x + D v)`` (B, ...) with codes coded against ``model``, detached."""
        d = self._dictionary
        with attack_mode(model):
            codes = code_inputs(model, d, x.detach(), y, steps=self.steps,
                                step_size=self.step_size)
        return apply_codes(d, x.detach(), codes).detach()

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: float) -> Tensor:
        x_adv = self.adversarial_examples(model, x, y)
        return _mixed(model, x, x_adv, y, self.augmented_weight)


class DictionaryNoiseTraining(Objective):
    """Train on ``x + D z`` with random Laplace codes ``z ~ Laplace(0, b)``.

    Args:
        dictionary: a :class:`~advrobust.attacks.Dictionary` (with codes, unless ``scale`` is
            given) or the path of its file.
        scale: the Laplace scale b; None fits it to the dictionary's codes by maximum likelihood.
        augmented_weight: weight ``w`` of the noisy term, in [0, 1].
        seed: seed of the noise (None: drawn once from torch's default generator).
        dataset: name of the training data; when given, a dictionary that recorded another
            dataset is refused.

    Raises:
        InvalidInputError: ``scale`` is None and the dictionary holds no (non-zero) codes, or
            the dictionary was learned on another dataset.
    """

    def __init__(self, *, dictionary: Dictionary | str | Path, scale: float | None = None,
                 augmented_weight: float = 0.5, seed: int | None = None,
                 dataset: str | None = None) -> None:
        owner = "DictionaryNoiseTraining"
        self.dictionary = dictionary
        self.dataset = dataset
        self._dictionary = _as_dictionary(dictionary, owner, dataset)
        self.scale = None if scale is None else check_float(scale, "scale", owner, low=0.0,
                                                            low_open=True)
        self.augmented_weight = check_float(augmented_weight, "augmented_weight", owner,
                                            low=0.0, high=1.0)
        self.seed = None if seed is None else check_int(seed, "seed", owner, low=0)
        codes = self._dictionary.codes
        if self.scale is None and codes is None:
            raise InvalidInputError(
                f"{owner}: the dictionary holds no codes to fit the Laplace scale to; give "
                "'scale'.")
        self.fitted_scale = self.scale if self.scale is not None else fit_laplace_scale(
            codes)  # type: ignore[arg-type]
        self._gens = GeneratorCache(seed)

    def prepare(self, model: nn.Module, input_shape: Sequence[int]) -> None:
        _check_shape(self._dictionary, tuple(input_shape), type(self).__name__)

    def noisy_examples(self, x: Tensor) -> Tensor:
        """``clip(x + D z)`` (B, ...) with ``z ~ Laplace(0, b)`` (M, B)."""
        d = self._dictionary
        z = sample_laplace((d.num_atoms, x.shape[0]), self.fitted_scale,
                           generator=self._gens.get(x.device), device=x.device, dtype=x.dtype)
        return apply_codes(d, x.detach(), z)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: float) -> Tensor:
        return _mixed(model, x, self.noisy_examples(x), y, self.augmented_weight)
