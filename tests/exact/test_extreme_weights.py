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
    "ibp-float32": lambda: IBP(precision="float32"),
    "crown-float32": lambda: CROWN(precision="float32"),
    "alpha-crown-float32": lambda: CROWN(alpha=True, steps=5, precision="float32"),
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


#: A point of each case's set on its needle: the margin there is 1.5 - c < 0.
NEEDLE_POINTS = {"corner k=5e7 c=1e8": [[0.0, 0.5]], "corner k=1e9 c=1e9": [[0.0, 0.5]],
                 "corner k=1e6 c=1e7": [[0.0, 0.5]], "interior k=2^26 c=1e8": [[0.25]],
                 "deep corner k=2e8 c=1e9": [[0.0, 0.5]]}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("method", ["ibp", "crown", "alpha-crown", "ibp-float32",
                                    "crown-float32", "alpha-crown-float32"])
def test_every_bound_lies_below_the_needle(case: str, method: str) -> None:
    """The bound itself, not only the verdict (which the witness gate also guards): a lower
    bound above the margin at a point of the set is wrong, whatever the pass's dtype."""
    model, centre = CASES[case]
    x, needle = torch.tensor(centre), torch.tensor(NEEDLE_POINTS[case], dtype=torch.float64)
    threat = LpBall("linf", 0.5)
    assert bool(((needle - x.double()).abs() <= threat.eps).all())
    with torch.no_grad():
        out = copy.deepcopy(model).double()(needle)
    value = float(out[0, 0] - out[0, 1])
    assert value < 0
    result = METHODS[method]()(model, x, torch.tensor([0]), threat)  # type: ignore[operator]
    assert float(result.lower[0, 0]) <= value, (case, method, result.lower)


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


@pytest.mark.parametrize("method", ["ibp", "crown", "lp", "milp", "bab", "ibp-float32",
                                    "crown-float32"])
def test_robust_twin_is_still_proved(method: str) -> None:
    # the needle (x_0 < 1/k) lies outside [0.5, 1]: the margin is exactly 1.5 everywhere
    model = corner_needle(5e7, 1e8)
    x = torch.tensor([[0.75, 0.5]])
    result = METHODS[method]()(model, x, torch.tensor([0]), LpBall("linf", 0.25))  # type: ignore[operator]
    assert result.verdict[0] is Verdict.VERIFIED
    # float32's allowances are ~1e-7 relative to the terms' sizes (here ~1)
    assert float(result.lower.min()) > 1.5 - (1e-5 if "float32" in method else 1e-6)


def test_spec_in_float64_is_not_rounded_to_float32() -> None:
    # a spec offset that float32 would round away must still decide the verdict
    model = nn.Sequential(_linear([[1.0], [0.0]], [0.0, 0.0])).eval()
    x = torch.tensor([[0.5]])
    d = torch.tensor([[-0.5 + 1e-9]], dtype=torch.float64)  # margin 1e-9 at x = 0.5
    spec = Spec(torch.tensor([[[1.0, -1.0]]], dtype=torch.float64), d)
    result = IBP()(model, x, torch.tensor([0]), LpBall("linf", 0.0), spec)
    assert float(result.upper[0, 0]) > 0 and float(result.lower[0, 0]) <= 1e-9


def wide_scales() -> tuple[nn.Sequential, list[list[float]], list[list[float]]]:
    """A random-looking 4-6-2-2 net with first-layer weights ~1e6-1e7 and last-layer ~2e4 (from
    the soundness fuzz), its centre (radius 0.7242 in [0, 1]) and a point of that set where the
    float64 margin (label 1) is ~ -5.5e10. HiGHS fed the unscaled MILP answered "optimal" with
    a dual bound above 0 here (a wrong VERIFIED); the backend's power-of-two scaling fixes it."""
    first = _linear([[-6211363.0, 852873.5625, -2764452.75, -6298490.0],
                     [-1358930.25, 6593720.0, -5334115.0, 3007349.75],
                     [-4301438.5, -529103.875, -4075328.0, 2817849.75],
                     [-7274791.0, -1645159.0, 3395949.25, 7305796.5],
                     [-695327.375, -3874853.75, 4761043.0, -74530.640625],
                     [1467646.25, -9136048.0, -7944051.5, -4671263.5]],
                    [106.1963, -116.44505, 410.05124, -74.86229, 407.34122, -359.72406])
    second = _linear([[-0.5277443, -0.6828643, -1.873557, -0.70452005, 0.83870512, -1.1399416],
                      [0.66440558, -0.42374623, 2.0388153, 0.43863142, -1.8963947, 1.5494304]],
                     [-0.33548659, 0.11924116])
    last = _linear([[19686.217, 19686.217], [0.0, 19686.217]], [-1532820.9, 2077167.8])
    model = nn.Sequential(first, nn.ReLU(), second, nn.ReLU(), last).eval()
    return model, [[0.022463977, 0.35954386, 0.023629665, 0.67660654]], \
        [[0.34910125, 0.0, 0.74786466, 0.0]]


@pytest.mark.parametrize("method", ["milp", "bab", "auto"])
def test_wide_weight_scales_do_not_fool_the_milp(method: str) -> None:
    model, centre, point = wide_scales()
    x, y = torch.tensor(centre), torch.tensor([1])
    threat = LpBall("linf", 0.7242)
    twin = copy.deepcopy(model).double()
    out = twin(torch.tensor(point, dtype=torch.float64))
    known = float(out[0, 1] - out[0, 0])
    assert known < -1e10  # the set holds a counterexample, by a wide margin
    if method == "auto":
        r = verify_dataset(model, x, y, threat, method="auto", time_limit=10, progress=False,
                           generator=torch.Generator().manual_seed(0))
        assert r.verdict[0] is not Verdict.VERIFIED
    else:
        r = (MILP(time_limit=10) if method == "milp" else BaB(time_limit=5))(model, x, y, threat)
        assert r.verdict[0] is not Verdict.VERIFIED
        assert float(r.lower.min()) <= known  # the lower bound is one
    if r.verdict[0] is Verdict.FALSIFIED:
        w = r.witness.double()
        assert float((w - x.double()).abs().max()) <= 0.7242 + 1e-7
        assert bool(((w >= 0) & (w <= 1)).all())
        o = twin(w)
        assert float(o[0, 1] - o[0, 0]) < 0


@pytest.mark.parametrize("seed", range(3))
def test_milp_answers_scale_with_the_network(seed: int) -> None:
    """The last layer times 2^70 (exact in binary floating point): margins and objective
    costs ~1e21, which HiGHS takes for infinite (>= 1e20), and far beyond its absolute dual
    tolerance, unless the backend hands it an objective near 1. (A net with weights ~1e6 per
    layer has such costs; HiGHS fed them pruned node LPs it could not solve and ran for
    minutes past its time limit.) Every row must be solved as it is unscaled, its exact
    minimum 2^70 times as large."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(),
                          nn.Linear(12, 3)).eval()
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled[4].weight.mul_(2.0 ** 70)
        scaled[4].bias.mul_(2.0 ** 70)
    x = torch.rand(1, 4)
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.3)
    milp = MILP(time_limit=30, early_stop=False, skip_verified=False)
    rows = [milp(net, x, y, threat).stats["samples"][0] for net in (model, scaled)]
    plain = {r["row"]: r for r in rows[0]}
    assert len(rows[1]) == len(plain) == 2
    for big in rows[1]:
        small = plain[big["row"]]
        assert small["status"] == big["status"] == "optimal", (small, big)
        assert big["objective"] / 2.0 ** 70 == pytest.approx(small["objective"], rel=1e-6,
                                                             abs=1e-9)
        assert big["bound"] <= big["objective"]
        assert big["bound"] / 2.0 ** 70 == pytest.approx(small["bound"], rel=1e-5, abs=1e-6)
