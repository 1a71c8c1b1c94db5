"""VNNLIB input sets that are unions of boxes (ACAS Xu's property 6: an ``or`` of two input
boxes): parsed into one box per case, and decided box by box ("sat" as soon as one box is,
"unsat" once every box is), with the counterexample inside its own box."""

from __future__ import annotations

import pytest
import torch

from _tiny_nets import tent as _tent
from advrobust.evaluation.verify import verify_property
from advrobust.network.vnnlib import parse_vnnlib
from advrobust.verify import Problem


def _property(cases: list[tuple[float, float]], threshold: float) -> str:
    # inputs (x0, x1) with x1 in [0, 1] always, x0 in one of the ``cases``; unsafe: y <= t
    boxes = " ".join(f"(and (>= X_0 {lo!r}) (<= X_0 {hi!r}))" for lo, hi in cases)
    return ("(declare-const X_0 Real)(declare-const X_1 Real)(declare-const Y_0 Real)\n"
            "(assert (>= X_1 0))(assert (<= X_1 1))\n"
            f"(assert (or {boxes}))\n(assert (<= Y_0 {threshold!r}))")


def test_the_cases_are_parsed_into_boxes() -> None:
    prop = parse_vnnlib(_property([(-3.0, -2.0), (1.0, 2.0)], 0.5))
    assert [(lo.tolist(), hi.tolist()) for lo, hi in prop.cases] == [
        ([-3.0, 0.0], [-2.0, 1.0]), ([1.0, 0.0], [2.0, 1.0])]
    assert prop.lower.tolist() == [-3.0, 0.0] and prop.upper.tolist() == [2.0, 1.0]
    x = torch.tensor([[-2.5, 0.5], [0.0, 0.5], [1.5, 0.5], [1.5, 1.5]])
    assert prop.contains(x, atol=0.0).tolist() == [True, False, True, False]  # the gap is out
    assert [p.cases for p in prop.split()] == [(), ()]
    assert parse_vnnlib(_property([(-1.0, 1.0)], 0.5)).split()[0].lower.tolist() == [-1.0, 0.0]


def test_a_case_with_an_empty_range_is_dropped() -> None:
    prop = parse_vnnlib(_property([(3.0, 2.0), (1.0, 2.0)], 0.5))
    assert prop.cases == () and prop.lower.tolist() == [1.0, 0.0]  # the one box left


@pytest.mark.parametrize("method", ["auto", "crown", "milp", "bab"])
def test_unsat_only_when_every_box_is_safe(method: str) -> None:
    # |x0| >= 1 on both boxes: y >= 1 > 0.5 (proved per box); the gap [-2, 1] between them
    # holds x0 = 0, y = 0 <= 0.5, which is not in the input set
    prop = parse_vnnlib(_property([(-3.0, -2.0), (1.0, 2.0)], 0.5))
    result = verify_property(_tent(), prop, method=method, time_limit=20)
    assert result.status == "unsat", result.report.stats.get("input_cases")
    assert result.report.stats["input_cases"] == ["unsat", "unsat"]


@pytest.mark.parametrize("order", [[(-3.0, -2.0), (0.5, 2.0)], [(0.5, 2.0), (-3.0, -2.0)]])
def test_sat_when_one_box_is_unsafe_with_its_counterexample_inside_it(
        order: list[tuple[float, float]]) -> None:
    # on [0.5, 2] x [0, 1]: y = x0 + 0.1 x1 <= 0.6 near (0.5, 0): unsafe for t = 0.55
    prop = parse_vnnlib(_property(order, 0.55))
    result = verify_property(_tent(), prop, time_limit=20)
    assert result.status == "sat"
    x = result.counterexample
    assert x is not None and 0.5 <= float(x[0]) <= 2.0 and 0.0 <= float(x[1]) <= 1.0
    with torch.no_grad():
        assert float(_tent().double()(x.double().reshape(1, 2))[0, 0]) <= 0.55
    cases = result.report.stats["input_cases"]
    assert cases[[lo for lo, _ in order].index(0.5)] == "sat"
    if order[0][0] == 0.5:
        assert cases[1] == "not run"  # decided: the other box is not tried


def test_the_problem_object_refuses_a_union_naming_split() -> None:
    prop = parse_vnnlib(_property([(-3.0, -2.0), (1.0, 2.0)], 0.5))
    with pytest.raises(ValueError, match="split"):
        Problem.from_property(_tent(), prop)
