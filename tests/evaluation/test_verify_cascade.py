"""The verification cascade: verdicts agree with the bounds, witnesses are re-checked, every
method agrees with the others, and the auto cascade decides tiny networks completely."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from _tiny_nets import relu_mlp
from advrobust.core.result import VERIFY_TOLERANCE, AttackResult, Verdict
from advrobust.core.spec import Spec, margin
from advrobust.core.threat import LpBall
from advrobust.errors import InvalidInputError, InvalidParameterError
from advrobust.evaluation.verify import METHODS, verify_dataset, verify_property
from advrobust.network.vnnlib import parse_vnnlib

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(seed: int, d: int = 6, h: int = 8, k: int = 3) -> nn.Sequential:
    return relu_mlp(seed, d, h, k)


def _batch(seed: int, n: int = 12, d: int = 6) -> torch.Tensor:
    return torch.rand((n, d), generator=torch.Generator().manual_seed(seed + 1))


def _check_report(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: LpBall,
                  report: Any) -> None:
    """Every verdict is backed: proofs by a lower bound, counterexamples by the real model."""
    assert report.verified + report.falsified + report.unknown == x.shape[0]
    with torch.no_grad():
        at_witness = margin(model(report.witness), y)
    inside = threat.contains(x, report.witness)
    samples = threat.sample(x.repeat(20, 1), torch.Generator().manual_seed(0))
    with torch.no_grad():
        sampled = margin(model(samples), y.repeat(20)).reshape(20, -1).amin(0)
    assert bool((report.margin_lower <= sampled + 1e-4).all()), "a lower bound above a point"
    for i, v in enumerate(report.verdict):
        if v is Verdict.VERIFIED:
            assert float(report.margin_lower[i]) > VERIFY_TOLERANCE
        if v is Verdict.FALSIFIED:
            assert bool(inside[i]) and float(at_witness[i]) < 0


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.sampled_from([0.02, 0.08, 0.2]))
def test_methods_agree_and_auto_decides_everything(seed: int, eps: float) -> None:
    model, x = _net(seed), _batch(seed)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % 3  # two misclassified samples
    threat = LpBall("linf", eps)
    reports = {m: verify_dataset(model, x, y, threat, method=m, progress=False,
                                 generator=torch.Generator().manual_seed(0)) for m in METHODS}
    for report in reports.values():
        _check_report(model, x, y, threat, report)
        assert report.verdict[:2] == (Verdict.FALSIFIED,) * 2
        assert report.decided_by[:2] == ("clean", "clean")
    auto = reports["auto"]
    assert auto.unknown == 0
    for name, report in reports.items():  # no method contradicts the exact answer
        for a, b in zip(report.verdict, auto.verdict, strict=True):
            assert a is Verdict.UNKNOWN or a is b, name
    assert auto.verdict == reports["milp"].verdict
    assert reports["crown"].verified <= auto.verified
    assert auto.certified_accuracy <= auto.robust_accuracy_upper <= auto.clean_accuracy + 1e-9


class _LyingAttack:
    """Claims success everywhere: points outside the set, or inside with a made-up margin."""

    def __init__(self, outside: bool) -> None:
        self.outside = outside

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: LpBall,
                 target: Any = None, generator: Any = None) -> AttackResult:
        x_adv = x + (10 * threat.eps if self.outside else 0.0)
        n = x.shape[0]
        return AttackResult(x_adv=x_adv, success=torch.ones(n, dtype=torch.bool),
                            margin=-torch.ones(n), norm=threat.norm_of(x_adv - x), queries=1)


@pytest.mark.parametrize("outside", [True, False])
def test_attack_claims_are_rechecked(outside: bool) -> None:
    model, x = _net(3), _batch(3)
    with torch.no_grad():
        y = model(x).argmax(1)
    threat = LpBall("linf", 0.05, lo=-10.0, hi=10.0)
    report = verify_dataset(model, x, y, threat, method="auto", progress=False,
                            attack=_LyingAttack(outside))
    assert "attack" not in report.decided_by
    exact = verify_dataset(model, x, y, threat, method="milp", progress=False)
    assert report.verdict == exact.verdict
    _check_report(model, x, y, threat, report)


def test_custom_spec_and_bad_arguments() -> None:
    model, x = _net(5), _batch(5, n=4)
    with torch.no_grad():
        y = model(x).argmax(1)
    threat = LpBall("linf", 0.05)
    target = (y + 1) % 3
    spec = Spec.targeted(y, target, 3)
    report = verify_dataset(model, x, y, threat, method="milp", spec=spec, progress=False)
    assert report.lower.shape == (4, 1)
    full = verify_dataset(model, x, y, threat, method="milp", progress=False)
    for one, every in zip(report.verdict, full.verdict, strict=True):
        assert not (every is Verdict.VERIFIED and one is not Verdict.VERIFIED)  # fewer rows
    with pytest.raises(InvalidParameterError, match="'method'"):
        verify_dataset(model, x, y, threat, method="gurobi")
    with pytest.raises(InvalidParameterError, match="'time_limit'"):
        verify_dataset(model, x, y, threat, time_limit=0)
    with pytest.raises(InvalidInputError, match="width"):
        verify_dataset(model, x, y, threat, spec=Spec.margins(y, 5), progress=False)


def test_model_mode_and_weights_untouched() -> None:
    model, x = _net(7), _batch(7, n=4)
    model.train()
    before = [p.clone() for p in model.parameters()]
    with torch.no_grad():
        y = model(x).argmax(1)
    with pytest.warns(UserWarning, match="training mode"):
        verify_dataset(model, x, y, LpBall("linf", 0.05), method="auto", progress=False)
    assert model.training
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def _property_text(x0: torch.Tensor, eps: float, label: int, k: int) -> str:
    lines = [f"(declare-const X_{i} Real)" for i in range(x0.numel())]
    lines += [f"(declare-const Y_{j} Real)" for j in range(k)]
    for i, v in enumerate(x0.tolist()):
        lines += [f"(assert (<= X_{i} {min(v + eps, 1.0)!r}))",
                  f"(assert (>= X_{i} {max(v - eps, 0.0)!r}))"]
    lines.append("(assert (or " + " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(k)
                                           if j != label) + "))")
    return "\n".join(lines)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_vnnlib_property_answers_match_the_dataset_cascade(seed: int) -> None:
    model, x = _net(seed), _batch(seed, n=1)
    with torch.no_grad():
        label = int(model(x).argmax(1)[0])
    prop = parse_vnnlib(_property_text(x[0], 0.1, label, 3))
    result = verify_property(model, prop, method="auto")
    exact = verify_dataset(model, x, torch.tensor([label]), LpBall("linf", 0.1), method="milp",
                           progress=False)
    expected = {Verdict.VERIFIED: "unsat", Verdict.FALSIFIED: "sat"}[exact.verdict[0]]
    assert result.status == expected
    if result.status == "sat":
        assert result.counterexample is not None and result.outputs is not None
        assert bool(prop.contains(result.counterexample.unsqueeze(0)))
        with torch.no_grad():
            out = model(result.counterexample.unsqueeze(0))
        assert bool(prop.is_unsafe(out)) and int(out.argmax(1)[0]) != label


def test_mnist_fc_known_answers(shared_data: Path) -> None:
    from advrobust.network.onnx import import_onnx
    from advrobust.network.vnnlib import load_vnnlib

    root = shared_data / "vnncomp" / "mnist_fc"
    truth = {r["property"]: r["truth"] for r in csv.DictReader(open(root / "known_answers.csv"))
             if r["network"].endswith("256x2.onnx")}
    net = import_onnx(root / "onnx" / "mnist-net_256x2.onnx")
    for name in ("vnnlib/prop_0_0.03.vnnlib", "vnnlib/prop_1_0.03.vnnlib"):
        result = verify_property(net.model, load_vnnlib(root / name),
                                 input_shape=net.input_shape, time_limit=5.0)
        assert result.status in (truth[name], "unknown")
        assert result.status != "unknown", f"{name}: CROWN / PGD should decide it"


def test_exact_stages_skipped_when_one_bound_pass_exceeds_their_limit() -> None:
    # With a limit far below the cost of one CROWN pass, BaB and the MILP could only overrun
    # it: they are skipped with a warning and what CROWN and PGD left stays UNKNOWN.
    net = _net(3, d=6, h=16)
    x = torch.rand(12, 6, generator=torch.Generator().manual_seed(0))
    y = net(x).argmax(1)
    threat = LpBall("linf", 0.1)
    with pytest.warns(UserWarning, match="skipped on .* one bound pass takes"):
        report = verify_dataset(net, x, y, threat, method="auto", time_limit=1e-9,
                                progress=False)
    assert report.stage_seconds["bab"] < 0.05 and report.stage_seconds.get("milp", 0.0) < 0.05
    assert report.unknown > 0  # a radius this large leaves samples CROWN / PGD cannot decide
    assert not {"bab", "milp"} & set(report.decided_by)
    full = verify_dataset(net, x, y, threat, method="auto", time_limit=30, progress=False)
    assert full.unknown == 0 and {"bab", "milp"} & set(full.decided_by)
    # an exact method asked for by name runs whatever the bound pass costs
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        named = verify_dataset(net, x, y, threat, method="milp", time_limit=1e-9,
                               progress=False)
    assert named.stage_seconds["milp"] > report.stage_seconds.get("milp", 0.0)
