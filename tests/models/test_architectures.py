"""Reference architectures: shapes, layer kinds, seeding, and clear errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advrobust.errors import InvalidParameterError
from advrobust.models import MODELS, MinMax, Normalize, build_model
from advrobust.models.resnet import ResidualBlock

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
ALLOWED = (nn.Flatten, nn.Linear, nn.Conv2d, nn.ReLU, nn.AvgPool2d, Normalize, ResidualBlock,
           MinMax)


def _valid(name: str, shape: tuple[int, int, int]) -> bool:
    if name == "minmax-2c2f":
        return min(shape[1:]) >= 4
    return not name.startswith("lenet") or min(shape[1:]) >= 16


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", MODELS)
def test_every_architecture_runs_on_every_valid_shape(name: str,
                                                      shape: tuple[int, int, int]) -> None:
    if not _valid(name, shape):
        with pytest.raises(InvalidParameterError, match="at least 16x16"):
            build_model(name, shape)
        return
    model = build_model(name, shape, num_classes=7, seed=0)
    out = model(torch.rand(3, *shape))
    assert out.shape == (3, 7)
    assert all(isinstance(m, ALLOWED) for m in model)
    assert isinstance(model[-1], nn.Linear) and model[-1].out_features == 7


def test_layer_widths_follow_the_course() -> None:
    widths = {name: [m.out_features for m in build_model(name, (1, 28, 28))
                     if isinstance(m, nn.Linear)] for name in ("mlp2", "mlp4", "small")}
    assert widths == {"mlp2": [200, 10], "mlp4": [200, 100, 100, 10], "small": [50, 20, 10]}
    convs = [(m.out_channels, m.stride[0]) for m in build_model("cnn", (3, 32, 32))
             if isinstance(m, nn.Conv2d)]
    assert convs == [(32, 1), (32, 2), (64, 1), (64, 2)]
    lenet = build_model("lenet", (3, 32, 32))
    assert sum(isinstance(m, nn.AvgPool2d) for m in lenet) == 2
    assert [m.out_features for m in lenet if isinstance(m, nn.Linear)] == [120, 84, 10]
    assert lenet[7].in_features == 16 * 5 * 5  # the classic LeNet-5 sizes on 32x32
    wide = build_model("lenet-wide", (1, 28, 28))
    assert [m.out_channels for m in wide if isinstance(m, nn.Conv2d)] == [16, 32]
    assert [m.out_features for m in wide if isinstance(m, nn.Linear)] == [128, 10]
    assert wide[7].in_features == 32 * 4 * 4
    large = build_model("lenet-large", (1, 28, 28))
    assert [m.out_channels for m in large if isinstance(m, nn.Conv2d)] == [32, 64]
    assert [m.out_features for m in large if isinstance(m, nn.Linear)] == [256, 10]
    assert large[7].in_features == 64 * 4 * 4


@settings(max_examples=15, deadline=None)
@given(c=st.integers(1, 3), h=st.integers(1, 20), w=st.integers(1, 20),
       name=st.sampled_from(MODELS))
def test_any_input_size_builds_or_is_rejected_clearly(c: int, h: int, w: int, name: str) -> None:
    if not _valid(name, (c, h, w)):
        with pytest.raises(InvalidParameterError, match="lenet|minmax-2c2f"):
            build_model(name, (c, h, w))
        return
    assert build_model(name, (c, h, w), num_classes=3)(torch.rand(2, c, h, w)).shape == (2, 3)


def test_seed_is_reproducible_and_leaves_global_rng_alone() -> None:
    state = torch.get_rng_state()
    a, b = build_model("cnn", (1, 8, 8), seed=5), build_model("cnn", (1, 8, 8), seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    c = build_model("cnn", (1, 8, 8), seed=6)
    for (key, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), key
    assert not torch.equal(a[0].weight, c[0].weight)


def test_normalize_is_the_first_layer_and_is_applied() -> None:
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.5]
    normed = build_model("cnn", (3, 8, 8), normalize=(mean, std), seed=1)
    plain = build_model("cnn", (3, 8, 8), seed=1)
    assert isinstance(normed[0], Normalize)
    x = torch.rand(4, 3, 8, 8)
    z = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(normed(x), plain(z))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"name": "resnet"}, "mlp2, mlp4, small, cnn, lenet, lenet-wide"),
    ({"input_shape": (28, 28)}, "input_shape"),
    ({"input_shape": (1, 0, 28)}, "input_shape"),
    ({"input_shape": (1, 28.0, 28)}, "input_shape"),
    ({"input_shape": "1x28x28"}, "input_shape"),
    ({"num_classes": 1}, "num_classes"),
    ({"normalize": (0.5,)}, "normalize"),
    ({"normalize": ([0.5, 0.5], [0.2, 0.2])}, "must give 1 value per statistic"),
    ({"normalize": (0.5, 0.0)}, "std"),
    ({"seed": -1}, "seed"),
])
def test_bad_arguments_raise_naming_them(kwargs: dict, match: str) -> None:
    args = {"name": "mlp2", "input_shape": (1, 28, 28)} | kwargs
    with pytest.raises(InvalidParameterError, match=match):
        build_model(**args)


def test_minmax_mlps_have_their_widths_and_orthogonal_weights() -> None:
    for name, width in (("minmax-mlp", 512), ("minmax-mlp-wide", 1024)):
        model = build_model(name, (1, 8, 8), seed=0)
        linears = [m for m in model if isinstance(m, nn.Linear)]
        assert [m.out_features for m in linears] == [width, width, 10]
        assert [m.features for m in model if isinstance(m, MinMax)] == [width, width]
        for layer in linears:  # orthogonal init: every singular value 1, so GloRo starts tight
            w = layer.weight.detach().double()
            gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
            assert torch.allclose(gram, torch.eye(len(gram), dtype=gram.dtype), atol=1e-4)
