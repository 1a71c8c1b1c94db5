"""Gaussian noise augmentation (the base training of randomized smoothing)."""

from __future__ import annotations

import pytest
import torch
from objectives_helpers import digits, one_thread, own_loss_drop, small_mlp  # noqa: F401

from advrobust.errors import InvalidParameterError
from advrobust.training.noise import NoiseAugmentation


def test_objective_lowers_its_own_loss() -> None:
    before, after = own_loss_drop(NoiseAugmentation(sigma=0.25, seed=0))
    assert after < 0.8 * before


def test_zero_sigma_is_clean_cross_entropy_and_seed_reproduces() -> None:
    model = small_mlp(0)
    x, y = digits("test").x[:32], digits("test").y[:32]
    clean = torch.nn.functional.cross_entropy(model(x), y)
    torch.testing.assert_close(NoiseAugmentation(sigma=0.0)(model, x, y, 0.0), clean)
    a = NoiseAugmentation(sigma=0.5, seed=1)(model, x, y, 0.0)
    b = NoiseAugmentation(sigma=0.5, seed=1)(model, x, y, 0.0)
    assert torch.equal(a, b) and not torch.equal(a, clean)


@pytest.mark.parametrize("kwargs", [{"sigma": -1.0}, {"sigma": float("nan")},
                                    {"sigma": 0.1, "seed": -1}])
def test_bad_parameters_raise(kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidParameterError, match="parameter of NoiseAugmentation"):
        NoiseAugmentation(**kwargs)  # type: ignore[arg-type]
