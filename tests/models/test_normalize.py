"""Normalize: per-channel affine map with validated buffers."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from advrobust.errors import InvalidInputError, InvalidParameterError
from advrobust.models import Normalize

finite = st.floats(-2, 2, allow_nan=False)
positive = st.floats(0.01, 3)


@settings(max_examples=25, deadline=None)
@given(mean=st.lists(finite, min_size=3, max_size=3),
       std=st.lists(positive, min_size=3, max_size=3))
def test_inverts_to_the_input(mean: list[float], std: list[float]) -> None:
    layer = Normalize(mean, std)
    x = torch.rand(2, 3, 4, 4)
    back = layer(x) * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    torch.testing.assert_close(back, x, atol=1e-5, rtol=1e-5)


def test_buffers_are_saved_and_scalars_broadcast() -> None:
    layer = Normalize(0.1307, 0.3081)
    assert set(layer.state_dict()) == {"mean", "std"}
    assert layer.mean.shape == (1, 1, 1)
    assert not list(layer.parameters())
    x = torch.rand(2, 1, 5, 5)
    torch.testing.assert_close(layer(x), (x - 0.1307) / 0.3081)
    assert Normalize([0.0, 1.0], 2.0).std.flatten().tolist() == [2.0, 2.0]


@pytest.mark.parametrize(("mean", "std", "match"), [
    (0.0, 0.0, "std"), (0.0, -1.0, "std"), (math.nan, 1.0, "mean"), (0.0, math.inf, "std"),
    ([0.1, 0.2], [1.0, 1.0, 1.0], "as many"), ([], 1.0, "mean"), ("a", 1.0, "mean"),
])
def test_bad_statistics_are_rejected(mean: object, std: object, match: str) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        Normalize(mean, std)  # type: ignore[arg-type]


def test_channel_mismatch_is_an_input_error() -> None:
    with pytest.raises(InvalidInputError, match="3 channel statistics"):
        Normalize([0.1, 0.2, 0.3], [1.0, 1.0, 1.0])(torch.rand(1, 2, 4, 4))
