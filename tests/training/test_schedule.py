"""Learning-rate schedules: step drops and the course's defaults."""

from __future__ import annotations

import inspect

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from advrobust.errors import InvalidParameterError
from advrobust.models import MODELS
from advrobust.training import course_schedule, fit, lr_at_epoch


@settings(max_examples=40, deadline=None)
@given(drops=st.lists(st.integers(1, 20), max_size=4), epoch=st.integers(0, 25),
       factor=st.floats(0.01, 1.0))
def test_lr_drops_once_per_passed_milestone(drops: list[int], epoch: int, factor: float) -> None:
    expected = 0.1 * factor ** sum(d <= epoch for d in drops)
    assert lr_at_epoch(epoch, 0.1, drops, factor) == pytest.approx(expected)
    assert lr_at_epoch(epoch + 1, 0.1, drops, factor) <= lr_at_epoch(epoch, 0.1, drops, factor)


def test_course_schedule_matches_the_course() -> None:
    cnn = course_schedule("cnn", 10)
    assert cnn == {"epochs": 10, "lr": 0.1, "batch_size": 100, "momentum": 0.0,
                   "lr_drop_epochs": (5,), "lr_drop_factor": 0.1}
    rates = [lr_at_epoch(e, cnn["lr"], cnn["lr_drop_epochs"]) for e in range(10)]
    assert rates == pytest.approx([0.1] * 5 + [0.01] * 5)
    assert course_schedule("cnn", 1)["lr_drop_epochs"] == ()
    for arch in set(MODELS) - {"cnn"}:
        assert course_schedule(arch, 10)["lr_drop_epochs"] == ()
    assert set(cnn) <= set(inspect.signature(fit).parameters)  # usable as fit(**schedule)
    with pytest.raises(InvalidParameterError, match="'epochs'"):
        course_schedule("cnn", 0)
