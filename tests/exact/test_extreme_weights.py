"""Extreme weights (1e6-1e9) and needle-like regions: every method stays sound.

The networks are built so that the true answer is known: a ReLU is active only on a needle of
width ~1/K inside the threat set, and there it drives the margin to ``1 - C < 0``. In float32 the
interval ``1 - K x`` on ``x in [0, 1]`` rounds to an upper end of 0 for K = 5e7, so a verifier
computing in float32 calls the neuron dead and the network "verified" (issue 10). Every method
must answer FALSIFIED (with a witness checked here in float64) or UNKNOWN, never VERIFIED; on
the robust twin (needle outside the set) the allowances must stay small enough to prove it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

from advrobust.core import LpBall, Spec, Verdict
from advrobust.evaluation.verify import verify_dataset
from advrobust.exact import MILP, BaB
from advrobust.network.ir import from_module
from advrobust.relax import CROWN, IBP, LPRelaxation, interval_layer_bounds


def _linear(w: list[list[float]], b: list[float]) -> nn.Linear:
    layer = nn.Linear(len(w[0]), len(w))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(w))
        layer.bias.copy_(torch.tensor(b))
    return layer


def corner_needle(k: float, c: float) -> nn.Sequential:
    """2 inputs; ``margin = 1.5 - c relu(1 - k relu(x_0))``: negative only for ``x_0 < 1/k``."""
    return nn.Sequential(_linear([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0]), nn.ReLU(),
                         _linear([[-k, 0.0]], [1.0]), nn.ReLU(),
                         _linear([[0.0], [c]], [1.0, -0.5])).eval()


def deep_corner_needle(k: float, c: float) -> nn.Sequential:
    """Two layers of weight ``k``: ``margin = 1.5 - c relu(1 - k relu(k x_0))``; with k = 2e8
    the interval ``1 - 4e16 [0, 1]`` loses its upper end even in float64."""
    return nn.Sequential(_linear([[k, 0.0], [0.0, 1.0]], [0.0, 0.0]), nn.ReLU(),
                         _linear([[-k, 0.0]], [1.0]), nn.ReLU(),
                         _linear([[0.0], [c]], [1.0, -0.5])).eval()


def interior_needle(k: float, c: float, centre: float = 0.25) -> nn.Sequential:
    """1 input; ``margin = 1.5 - c relu(1 - k |x - centre|)``: negative on a needle of width ~2/k
    around ``centre`` (``k * centre`` exact in float32 for k a power of two)."""
    return nn.Sequential(_linear([[k], [-k]], [-k * centre, k * centre]), nn.ReLU(),
                         _linear([[-1.0, -1.0]], [1.0]), nn.ReLU(),
                         _linear([[0.0], [c]], [1.0, -0.5])).eval()


METHODS: dict[str, Callable[[], object]] = {
    "ibp": IBP, "crown": CROWN, "alpha-crown": lambda: CROWN(alpha=True, steps=5),
    "lp": lambda: LPRelaxation(time_limit=10), "milp": lambda: MILP(time_limit=10),
    "bab": lambda: BaB(time_limit=5)}

CASES = {
    "corner k=5e7 c=1e8": (corner_needle(5e7, 1e8), [[0.5, 0.5]]),
    "corner k=1e9 c=1e9": (corner_needle(1e9, 1e9), [[0.5, 0.5]]),
    "corner k=1e6 c=1e7": (corner_needle(1e6, 1e7), [[0.5, 0.5]]),
    "interior k=2^26 c=1e8": (interior_needle(2.0 ** 26, 1e8), [[0.5]]),
    "deep corner k=2e8 c=1e9": (deep_corner_needle(2e8, 1e9), [[0.5, 0.5]]),
}


def _check_witness(model: nn.Module, x: torch.Tensor, witness: torch.Tensor,
                   threat: LpBall) -> None:
    """A FALSIFIED witness lies in the set and breaks the margin in float64."""
    twin = copy.deepcopy(model).double()
    assert float((witness.double() - x.double()).abs().max()) <= threat.eps
    assert bool(((witness >= threat.lo) & (witness <= threat.hi)).all())
    out = twin(witness.double())
    assert float(out[0, 0] - out[0, 1]) < 0


def test_float32_interval_really_loses_the_needle() -> None:
    # the premise: float32 rounds the upper end of 1 - 5e7 x on [0, 1] to 0
    mid = torch.tensor(1.0) - torch.tensor(5e7) * torch.tensor(0.5)
    assert float(mid + torch.tensor(2.5e7)) <= 0.0


def test_float64_alone_is_not_enough() -> None:
    # without the rounding allowances even float64 calls the deep needle's neuron dead
    net = from_module(copy.deepcopy(CASES["deep corner k=2e8 c=1e9"][0]).double(), (2,))
    lo, hi = LpBall("linf", 0.5).input_bounds(torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    plain = interval_layer_bounds(net, lo, hi)
    sound = interval_layer_bounds(net, lo, hi, rounding=True)
    assert float(plain[3][1].max()) <= 0.0 < float(sound[3][1].max())


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_no_method_verifies_a_broken_needle(case: str, method: str) -> None:
    model, centre = CASES[case]
    x = torch.tensor(centre)
    y = torch.tensor([0])
    threat = LpBall("linf", 0.5)
    assert float(model(x)[0, 0] - model(x)[0, 1]) > 0  # the clean point is robust
    result = METHODS[method]()(model, x, y, threat)  # type: ignore[operator]
    assert result.verdict[0] is not Verdict.VERIFIED, (case, method, result.lower)
    if result.verdict[0] is Verdict.FALSIFIED:
        assert result.witness is not None
        _check_witness(model, x, result.witness, threat)


@pytest.mark.parametrize("method", ["auto", "ibp", "crown", "lp", "milp", "bab"])
def test_verify_dataset_never_verifies_a_needle(method: str) -> None:
    model, centre = CASES["corner k=5e7 c=1e8"]
    model2, centre2 = CASES["interior k=2^26 c=1e8"]
    threat = LpBall("linf", 0.5)
    for net, c in ((model, centre), (model2, centre2)):
        x = torch.tensor(c)
        report = verify_dataset(net, x, torch.tensor([0]), threat, method=method,
                                time_limit=4, progress=False,
                                generator=torch.Generator().manual_seed(0))
        assert report.verdict[0] is not Verdict.VERIFIED
        if report.verdict[0] is Verdict.FALSIFIED:
            _check_witness(net, x, report.witness, threat)


@pytest.mark.parametrize("method", ["ibp", "crown", "lp", "milp", "bab"])
def test_robust_twin_is_still_proved(method: str) -> None:
    # the needle (x_0 < 1/k) lies outside [0.5, 1]: the margin is exactly 1.5 everywhere
    model = corner_needle(5e7, 1e8)
    x = torch.tensor([[0.75, 0.5]])
    result = METHODS[method]()(model, x, torch.tensor([0]), LpBall("linf", 0.25))  # type: ignore[operator]
    assert result.verdict[0] is Verdict.VERIFIED
    assert float(result.lower.min()) > 1.5 - 1e-6


def test_spec_in_float64_is_not_rounded_to_float32() -> None:
    # a spec offset that float32 would round away must still decide the verdict
    model = nn.Sequential(_linear([[1.0], [0.0]], [0.0, 0.0])).eval()
    x = torch.tensor([[0.5]])
    d = torch.tensor([[-0.5 + 1e-9]], dtype=torch.float64)  # margin 1e-9 at x = 0.5
    spec = Spec(torch.tensor([[[1.0, -1.0]]], dtype=torch.float64), d)
    result = IBP()(model, x, torch.tensor([0]), LpBall("linf", 0.0), spec)
    assert float(result.upper[0, 0]) > 0 and float(result.lower[0, 0]) <= 1e-9
