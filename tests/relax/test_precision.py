"""``precision="float32"`` for IBP and CROWN: the passes run in float32 with float32's rounding
allowances, as sound as the float64 default (the needles are in tests/exact/
test_extreme_weights.py), close to it on ordinary networks, and refused where a float32 pass
would bound another network or another spec."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.exact.conftest import make_mlp
from torch import nn

from advrobust.core import LpBall, Spec
from advrobust.errors import InvalidParameterError
from advrobust.exact import MILP
from advrobust.relax import CROWN, IBP, crown_layer_bounds
from advrobust.relax import crown as crown_module
from advrobust.relax.witness import WitnessGate

TOL = 1e-5


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 100_000), eps=st.floats(0.01, 0.25),
       norm=st.sampled_from(["linf", "l1"]), alpha=st.booleans())
def test_float32_bounds_sit_below_the_exact_minimum_and_near_float64(
        seed: int, eps: float, norm: str, alpha: bool) -> None:
    model = make_mlp(seed, (4, 8, 8, 3))
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 4, generator=gen)
    y = model(x).argmax(1)
    threat = LpBall(norm, eps if norm == "linf" else 4 * eps)
    exact = MILP(early_stop=False, skip_verified=False, time_limit=30)(model, x, y, threat)
    crown64 = CROWN(alpha=alpha, steps=5)(model, x, y, threat).lower
    for bounder in (CROWN(alpha=alpha, steps=5, precision="float32"), IBP(precision="float32")):
        result = bounder(model, x, y, threat)
        assert result.stats["precision"] == "float32"
        assert bool((result.lower <= exact.lower + TOL).all()), (bounder, result.lower)
    lower32 = CROWN(alpha=alpha, steps=5, precision="float32")(model, x, y, threat).lower
    # float32's allowances are ~1e-6 of the terms here: the bounds stay close
    assert bool(((lower32 - crown64).abs() <= 1e-3 * (1 + crown64.abs())).all())


def test_the_passes_really_run_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_mlp(0, (4, 8, 3))
    x = torch.rand(2, 4, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)
    seen: list[torch.dtype] = []
    real = crown_module.crown_layer_bounds

    def spy(network: object, x: torch.Tensor, *args: object, **kw: object) -> object:
        seen.append(x.dtype)
        return real(network, x, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(crown_module, "crown_layer_bounds", spy)
    CROWN(precision="float32")(model, x, y, LpBall("linf", 0.05))
    CROWN()(model, x, y, LpBall("linf", 0.05))
    assert seen == [torch.float32, torch.float64]
    network = WitnessGate(model).ir((4,), dtype=torch.float32)
    assert network.forward(x).dtype == torch.float32


def test_a_batchnorm_cnn_is_bounded_soundly_in_float32() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 2.0)
    model.eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 6, 6, generator=gen)
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.02)
    lower = CROWN(precision="float32")(model, x, y, threat).lower
    lower64 = CROWN()(model, x, y, threat).lower
    spec = Spec.margins(y, 3)
    points = threat.sample(x.repeat(200, 1, 1, 1), generator=gen)
    twin = copy.deepcopy(model).double()
    with torch.no_grad():
        sampled = torch.stack([spec.apply(twin(p.double())) for p in points.split(2)]).amin(0)
    assert bool((lower <= sampled).all())
    assert bool(((lower - lower64).abs() <= 1e-3 * (1 + lower64.abs())).all())


def test_what_float32_cannot_represent_is_refused() -> None:
    model = make_mlp(0, (4, 8, 3))
    x = torch.rand(2, 4, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.05)
    exact64 = make_mlp(0, (4, 8, 3)).double()  # float64 numbers that float32 holds: accepted
    same = CROWN(precision="float32")(exact64, x.double(), y, threat).lower
    torch.testing.assert_close(same, CROWN(precision="float32")(model, x, y, threat).lower)
    wide = make_mlp(0, (4, 8, 3)).double()
    with torch.no_grad():
        wide[1].weight.add_(1e-12)  # now needs float64
    with pytest.raises(InvalidParameterError, match="float32 does not represent"):
        CROWN(precision="float32")(wide, x.double(), y, threat)
    spec = Spec(torch.tensor([[[0.1, -1.0, 0.0]]], dtype=torch.float64).repeat(2, 1, 1),
                torch.zeros(2, 1, dtype=torch.float64))
    with pytest.raises(InvalidParameterError, match="coefficients C"):
        IBP(precision="float32")(model, x, y, threat, spec)
    bounds = crown_layer_bounds(WitnessGate(model).ir((4,)), x.double(), threat, rounding=True)
    with pytest.raises(InvalidParameterError, match="layer_bounds"):
        CROWN(precision="float32")(model, x, y, threat, layer_bounds=bounds)
    for bad in ("float16", "double", 32):
        with pytest.raises(InvalidParameterError, match="precision"):
            CROWN(precision=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="precision"):
        IBP(precision="half")


def test_verify_dataset_runs_ibp_and_crown_in_float32_and_refuses_the_other_methods() -> None:
    from advrobust.evaluation.verify import verify_dataset

    model = make_mlp(3, (4, 8, 8, 3))
    x = torch.rand(5, 4, generator=torch.Generator().manual_seed(3))
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.05)
    exact = MILP(early_stop=False, skip_verified=False, time_limit=30)(model, x, y, threat)
    for method, bounder in (("crown", CROWN(precision="float32")),
                            ("ibp", IBP(precision="float32"))):
        report = verify_dataset(model, x, y, threat, method=method, precision="float32",
                                progress=False)
        direct = bounder(model, x, y, threat)
        # the cascade ran the float32 pass (not the float64 one, nor from float64 bounds)
        torch.testing.assert_close(report.lower, direct.lower, rtol=0, atol=0)
        assert bool((report.lower <= exact.lower + TOL).all())
    for method in ("auto", "lp", "milp", "bab"):
        with pytest.raises(InvalidParameterError, match="precision='float32' applies to"):
            verify_dataset(model, x, y, threat, method=method, precision="float32",
                           progress=False)
    with pytest.raises(InvalidParameterError, match="precision"):
        verify_dataset(model, x, y, threat, method="crown", precision="half", progress=False)
