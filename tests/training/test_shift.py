"""Random-shift augmentation: every image is a translation within the range, seeded, trained on."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from advrobust.models import build_model
from advrobust.training import Objective, Standard, fit
from advrobust.training.loop import random_shift


def _translate(img: Tensor, dy: int, dx: int) -> Tensor:
    """Reference: ``img`` (C, H, W) moved down by dy and right by dx, zeros moved in."""
    out = torch.zeros_like(img)
    h, w = img.shape[1:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        img[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def _offset_of(out: Tensor, img: Tensor, shift: int) -> tuple[int, int] | None:
    for dy in range(-shift, shift + 1):
        for dx in range(-shift, shift + 1):
            if torch.equal(out, _translate(img, dy, dx)):
                return dy, dx
    return None


@settings(max_examples=20, deadline=None)
@given(shift=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(4, 9), w=st.integers(4, 9),
       seed=st.integers(0, 2**31))
def test_every_image_is_a_translation_within_the_range(shift: int, c: int, h: int, w: int,
                                                        seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(6, c, h, w, generator=gen) + 0.5  # no zero pixel: the offset is unique
    out = random_shift(x, shift, gen)
    assert out.shape == x.shape and out.dtype == x.dtype
    for img, moved in zip(x, out, strict=True):
        assert _offset_of(moved, img, shift) is not None


def test_offsets_cover_the_square_uniformly_and_follow_the_generator() -> None:
    x = torch.rand(2000, 1, 6, 6) + 0.5
    out = random_shift(x, 1, torch.Generator().manual_seed(3))
    offsets = [_offset_of(o, i, 1) for o, i in zip(out[:900], x[:900], strict=True)]
    counts = {o: offsets.count(o) for o in set(offsets)}
    assert len(counts) == 9 and min(counts.values()) > 60  # 100 expected per offset
    again = random_shift(x, 1, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)
    assert not torch.equal(out, random_shift(x, 1, torch.Generator().manual_seed(4)))


class _Batches(Objective):
    def __init__(self) -> None:
        self.batches: list[Tensor] = []

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: float) -> Tensor:
        self.batches.append(x.clone())
        return Standard()(model, x, y, progress)


def test_fit_trains_on_shifted_batches_reproducibly(digits) -> None:
    (x, y), _ = digits
    x, y = x[:200], y[:200]
    seen, weights = [], []
    for shift in (0, 1, 1):
        objective = _Batches()
        model = build_model("small", (1, 8, 8), seed=0)
        fit(model, (x, y), objective=objective, epochs=1, batch_size=200, shift=shift,
            progress=False)
        seen.append(objective.batches[0])
        weights.append(model[1].weight.detach().clone())
    plain, shifted, again = seen
    assert torch.equal(shifted, again) and torch.equal(weights[1], weights[2])
    assert not torch.equal(plain, shifted)
    # each trained image is a translation of the image the unshifted run saw at that place
    moved = [_offset_of(s, p, 1) for s, p in zip(shifted, plain, strict=True)]
    assert sum(o is not None for o in moved) == len(moved)
    assert sum(o not in (None, (0, 0)) for o in moved) > len(moved) // 2
