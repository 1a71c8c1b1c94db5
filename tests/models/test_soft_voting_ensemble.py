"""``Ensemble``: the log of the members' mean softmax, as logits every part of the library takes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advrobust.core.checks import looks_like_probabilities
from advrobust.errors import InvalidInputError, InvalidParameterError
from advrobust.models import Ensemble
from advrobust.smoothing import Smoothed


def _linear(seed: int, d: int = 5, k: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, k))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), members=st.integers(1, 4))
def test_output_is_log_of_mean_softmax(seed: int, members: int) -> None:
    models = [_linear(seed + i) for i in range(members)]
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(seed))
    out = Ensemble(models)(x)
    by_hand = torch.stack([torch.softmax(m(x), dim=-1) for m in models]).mean(dim=0)
    assert torch.allclose(out.exp(), by_hand, atol=1e-6)
    assert torch.equal(out.argmax(dim=1), by_hand.argmax(dim=1))
    assert not looks_like_probabilities(out)  # logits, so the probability sanity check is quiet


def test_identical_members_smooth_like_the_single_model() -> None:
    model = _linear(3)
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    one = Smoothed(model, 0.5).certify(x, n0=20, n=300, alpha=0.01, batch_size=64,
                                       generator=torch.Generator().manual_seed(7))
    three = Smoothed(Ensemble([model, model, model]), 0.5).certify(
        x, n0=20, n=300, alpha=0.01, batch_size=64, generator=torch.Generator().manual_seed(7))
    assert torch.equal(one.counts, three.counts) and torch.equal(one.prediction, three.prediction)
    assert torch.allclose(one.radius, three.radius)


def test_members_are_submodules() -> None:
    members = [nn.Sequential(nn.Linear(5, 4), nn.Dropout(0.5)).eval(), _linear(0).eval()]
    assert not Ensemble(members).training  # takes the members' mode
    ens = Ensemble(members).train()
    assert all(m.training for m in ens.modules())
    ens.eval()
    assert len(ens) == 2 and all(not m.training for m in ens.modules())
    assert sum(p.numel() for p in ens.parameters()) == 2 * (5 * 4 + 4)


def test_bad_members_are_refused_by_name() -> None:
    with pytest.raises(InvalidParameterError, match="at least one model"):
        Ensemble([])
    with pytest.raises(InvalidParameterError, match=r"Members \[1\]"):
        Ensemble([_linear(0), "model.pt"])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match="same shape"):
        Ensemble([_linear(0, k=4), _linear(1, k=3)])(torch.zeros(2, 5))
