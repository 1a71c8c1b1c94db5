"""Bounders take the problem's witness gate: one float64 copy of the model (and one IR of it)
per run, and the bounder's witness is not evaluated a second time by the bracket; results are
unchanged."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import advrobust.relax.witness as witness_module
from advrobust.core.threat import LpBall
from advrobust.errors import InvalidParameterError
from advrobust.relax import CROWN, IBP
from advrobust.relax.witness import WitnessGate
from advrobust.verify import Policy, Problem, run


def _setup(seed: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor, LpBall]:
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(),
                          nn.Linear(12, 3)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.6)
    x = torch.rand(6, 5, generator=gen)
    return model, x, model(x).argmax(1), LpBall("linf", 0.05, lo=0.0, hi=1.0)


@pytest.mark.parametrize("bounder", [IBP(), CROWN()])
def test_a_gated_call_gives_the_same_result_and_the_witness_values(bounder: Any) -> None:
    model, x, y, ball = _setup(0)
    plain = bounder(model, x, y, ball)
    gate = WitnessGate(model)
    gated = bounder(model, x, y, ball, gate=gate)
    again = bounder(model, x, y, ball, gate=gate)  # the gate's IR is built once and reused
    for res in (gated, again):
        assert torch.equal(res.lower, plain.lower) and torch.equal(res.upper, plain.upper)
        assert res.verdict == plain.verdict
    spec_values = gate(x, gated.witness, ball, _margins(y))[1]
    assert torch.equal(gated.stats["witness_values"], spec_values)
    with pytest.raises(InvalidParameterError, match="gate"):
        bounder(model, x, y, ball, gate=model)


def _margins(y: torch.Tensor) -> Any:
    from advrobust.core.spec import Spec

    spec = Spec.margins(y, 3)
    return Spec(spec.C.double(), spec.d.double())


def test_a_relaxation_run_copies_the_model_once_and_evaluates_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, y, ball = _setup(1)
    copies, calls = [], []
    real_copy, real_call = witness_module.float64_copy, WitnessGate.__call__

    def counting_copy(m: nn.Module) -> nn.Module:
        copies.append(1)
        return real_copy(m)

    def counting_call(self: WitnessGate, *args: Any) -> Any:
        calls.append(args[1].shape[0])
        return real_call(self, *args)

    monkeypatch.setattr(witness_module, "float64_copy", counting_copy)
    monkeypatch.setattr(WitnessGate, "__call__", counting_call)
    bracket = run(Problem.of(model, x, y, ball), Policy(method="crown"))
    assert len(copies) == 1  # the problem's gate, shared by the bounder
    assert len(calls) == 2  # the bracket's clean points, the bounder's: nothing twice
    reference = CROWN()(model, x, y, ball)
    assert torch.equal(bracket.lower, reference.lower)
    assert torch.equal(bracket.upper, reference.upper)


def test_a_gate_of_another_model_is_refused() -> None:
    model, x, y, ball = _setup(0)
    other, _, _, _ = _setup(1)  # same shapes, other weights: its bounds would be another net's
    with pytest.raises(InvalidParameterError, match="not a WitnessGate of this model"):
        CROWN()(model, x, y, ball, gate=WitnessGate(other))


def test_a_bound_call_builds_the_network_ir_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import advrobust.relax.base as base

    model, x, y, ball = _setup(2)
    builds: list[int] = []
    real = base.verifiable_ir

    def counting(*args: Any, **kwargs: Any) -> Any:
        builds.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(base, "verifiable_ir", counting)
    CROWN()(model, x, y, ball)
    assert len(builds) == 1  # the gate's IR is the one the bound pass runs on
    gate = WitnessGate(model)
    CROWN()(model, x, y, ball, gate=gate)
    IBP()(model, x, y, ball, gate=gate)
    assert len(builds) == 2  # one more for the new gate, shared by both calls
