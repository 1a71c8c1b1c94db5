"""Bad input to randomized smoothing gets a clear error (or a warning) naming the argument."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advrobust.errors import InvalidInputError, InvalidParameterError
from advrobust.smoothing import Smoothed


def model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Linear(3, 2).eval()


X = torch.zeros(2, 3)


@pytest.mark.parametrize("sigma", [0.0, -0.5, float("nan"), float("inf"), "a"])
def test_sigma_must_be_positive(sigma: object) -> None:
    with pytest.raises(InvalidParameterError, match="'sigma' parameter of Smoothed"):
        Smoothed(model(), sigma)  # type: ignore[arg-type]


def test_model_must_be_a_module() -> None:
    with pytest.raises(InvalidInputError, match="'model'"):
        Smoothed(lambda x: x, 0.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs,name", [
    ({"n0": 0}, "n0"), ({"n": 0}, "n"), ({"n": 2.5}, "n"), ({"alpha": 0.0}, "alpha"),
    ({"alpha": 1.0}, "alpha"), ({"alpha": 1.5}, "alpha"), ({"batch_size": 0}, "batch_size")])
def test_certify_parameters(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(InvalidParameterError, match=f"'{name}' parameter of Smoothed.certify"):
        Smoothed(model(), 0.5).certify(X, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs,name", [({"n": 0}, "n"), ({"alpha": -0.1}, "alpha")])
def test_predict_parameters(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(InvalidParameterError, match=f"'{name}' parameter of Smoothed.predict"):
        Smoothed(model(), 0.5).predict(X, **kwargs)  # type: ignore[arg-type]


def test_n_too_small_warns_with_the_smallest_n_and_everything_abstains() -> None:
    smoothed = Smoothed(model(), 0.5)
    with pytest.warns(UserWarning, match="smallest n that could is 10"):
        cert = smoothed.certify(X, n0=5, n=9, alpha=0.001, generator=torch.Generator())
    assert bool(cert.abstained.all())
    with pytest.warns(UserWarning, match="smallest n that could is 11"):
        pred = smoothed.predict(X, n=10, alpha=0.001, generator=torch.Generator())
    assert bool(pred.abstained.all())


@pytest.mark.parametrize("x", [torch.zeros(2, 3, dtype=torch.int64), torch.zeros(3),
                               torch.full((2, 3), float("nan")), torch.zeros(0, 3)])
def test_bad_x(x: torch.Tensor) -> None:
    with pytest.raises(InvalidInputError, match="'x'"):
        Smoothed(model(), 0.5).certify(x, n0=5, n=20, alpha=0.1)


def test_probabilities_warn_but_certify_the_same_arg_max() -> None:
    base = model()
    probs = nn.Sequential(base, nn.Softmax(dim=1)).eval()
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.3, -1.0]])
    with pytest.warns(UserWarning, match="look like probabilities"):
        got = Smoothed(probs, 0.5).certify(x, n0=10, n=200, alpha=0.01,
                                           generator=torch.Generator().manual_seed(0))
    ref = Smoothed(base, 0.5).certify(x, n0=10, n=200, alpha=0.01,
                                      generator=torch.Generator().manual_seed(0))
    assert torch.equal(got.counts, ref.counts)


def test_outputs_must_be_logits_per_sample() -> None:
    with pytest.raises(InvalidInputError, match="outputs"):
        Smoothed(nn.Flatten(0).eval(), 0.5).predict(X, n=20, alpha=0.1)
