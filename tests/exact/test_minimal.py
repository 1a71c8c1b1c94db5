"""Minimal distortion: d* agrees with the MILP verdicts just below and above it."""

from __future__ import annotations

import pytest
import torch
from tests.exact.conftest import make_mlp

from advrobust.core import LpBall, Verdict
from advrobust.errors import InvalidParameterError
from advrobust.exact import MILP, MinimalDistortion


@pytest.mark.parametrize("norm", ["linf", "l1"])
def test_distance_separates_robust_from_falsified(norm: str) -> None:
    model = make_mlp(8, (3, 10, 10, 3))
    x = torch.rand(3, 3, generator=torch.Generator().manual_seed(4)) * 0.6 + 0.2
    y = model(x).argmax(1)
    res = MinimalDistortion(norm=norm, time_limit=20)(model, x, y)
    milp = MILP(time_limit=20)
    for i in range(3):
        if res.status[i] != "optimal":
            continue
        d = float(res.distance[i])
        assert float(res.lower[i]) == pytest.approx(d, abs=1e-5)
        assert float(LpBall(norm, 1.0).norm_of(res.x_adv[i:i + 1] - x[i:i + 1])) \
            == pytest.approx(d, abs=1e-5)
        assert float(res.margin[i]) <= 1e-4
        below = milp(model, x[i:i + 1], y[i:i + 1], LpBall(norm, d * 0.98))
        above = milp(model, x[i:i + 1], y[i:i + 1], LpBall(norm, d * 1.02 + 1e-3))
        assert below.verdict[0] is not Verdict.FALSIFIED
        assert float(below.lower.min()) >= -1e-5
        assert above.verdict[0] is Verdict.FALSIFIED
    assert "optimal" in res.status


def test_no_adversarial_point_within_max_eps_is_reported_robust() -> None:
    model = make_mlp(9, (3, 8, 3))
    x = torch.full((1, 3), 0.5)
    y = model(x).argmax(1)
    res = MinimalDistortion(max_eps=1e-4)(model, x, y)
    assert res.status == ("robust",)
    assert float(res.distance[0]) == float("inf")
    assert float(res.lower[0]) == pytest.approx(1e-4)
    torch.testing.assert_close(res.x_adv, x)


def test_bad_norm_raises() -> None:
    with pytest.raises(InvalidParameterError, match="'norm' parameter of MinimalDistortion"):
        MinimalDistortion(norm="l3")  # l2 is supported since issue 12
