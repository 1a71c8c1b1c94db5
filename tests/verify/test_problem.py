"""The verification problem caches layer bounds with provenance; later stages reuse them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import advrobust.exact.bab as bab_module
import advrobust.relax.crown as crown_module
from _tiny_nets import relu_mlp
from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall
from advrobust.errors import InvalidInputError, InvalidParameterError
from advrobust.exact import MILP, BaB
from advrobust.relax import CROWN, IBP
from advrobust.verify import BoundRecord, Policy, Problem, run
from advrobust.verify.grid import Step

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(seed: int, d: int = 5, h: int = 10, k: int = 3) -> nn.Sequential:
    return relu_mlp(seed, d, h, k)


def _counting(monkeypatch: pytest.MonkeyPatch, module: Any, calls: list[str],
              name: str) -> None:
    """Replace ``module.crown_layer_bounds`` by a wrapper that logs ``name`` per call."""
    real: Callable[..., Any] = crown_module.crown_layer_bounds

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "crown_layer_bounds", spy)


def _undecided_by_crown(seed: int, eps: float = 0.3
                        ) -> tuple[nn.Module, torch.Tensor, torch.Tensor, LpBall]:
    """A tiny net and inputs on which CROWN leaves work for the exact methods."""
    model = _net(seed)
    x = torch.rand(3, 5, generator=torch.Generator().manual_seed(seed + 7))
    with torch.no_grad():
        y = model(x).argmax(1)
    threat = LpBall("linf", eps)
    crown = CROWN()(model, x, y, threat)
    assert crown.verified.sum() < 3  # the exact stage has samples to work on
    return model, x, y, threat


@pytest.mark.parametrize("method", ["bab", "milp"])
def test_exact_stage_starts_from_the_cached_crown_bounds(monkeypatch: pytest.MonkeyPatch,
                                                         method: str) -> None:
    monkeypatch.setattr(bab_module, "INPUT_SPLIT", 0)  # 4 inputs: the ReLU splits asked for
    model, x, y, threat = _undecided_by_crown(4, 0.15)
    calls: list[str] = []
    # The MILP's root pass goes through crown.root_bounds, so a recompute would log a second
    # "problem/crown" call; BaB imports the function itself.
    _counting(monkeypatch, crown_module, calls, "problem/crown")
    _counting(monkeypatch, bab_module, calls, "bab")
    problem = Problem.of(model, x, y, threat)
    bracket = run(problem, Policy(method=method, time_limit=20.0))
    assert calls == ["problem/crown"]  # one batched pass; the exact method recomputed nothing
    assert bracket.stats[method]  # and it did run on the samples CROWN left
    crown = CROWN()(model, x, y, threat).verified
    for i in range(3):
        # only what CROWN left open stays cached (no memory for the rest)
        assert (problem.layer_bounds([i]) is None) == bool(crown[i])
        record, *later = problem.provenance(i)
        assert isinstance(record, BoundRecord)
        assert (record.method, record.stage, record.dtype) == ("crown", "crown", torch.float64)
        assert record.samples == (0, 1, 2) and record.seconds >= 0
        # BaB writes its root's alpha-CROWN layer bounds back (refined by branch and bound on
        # the neurons if its first search did not decide the sample; the MILP has none to add)
        assert [(r.stage, r.samples) for r in later] == \
            ([("bab", (i,))] if method == "bab" and i in bracket.stats["bab"] else [])
        assert all(r.method in ("alpha-crown", "bab-refine") for r in later)


def test_bab_root_bounds_written_back_are_sound_and_tighter(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setattr(bab_module, "INPUT_SPLIT", 0)  # 4 inputs: the ReLU splits asked for
    model, x, y, threat = _undecided_by_crown(4, 0.15)
    problem = Problem.of(model, x, y, threat)
    steps = (Step("bound", "crown"), Step("exact", "bab", time_limit=20.0),
             Step("exact", "milp", time_limit=20.0))
    bracket = run(problem, Policy(stages=steps))
    ran = sorted(bracket.stats["bab"])
    assert ran
    gen = torch.Generator().manual_seed(0)
    for i in ran:
        assert [r.method for r in problem.provenance(i)][:2] in (["crown", "alpha-crown"],
                                                                   ["crown", "bab-refine"])
        cached = problem.layer_bounds([i])
        assert cached is not None
        crown = crown_module.crown_layer_bounds(problem.network, x[i:i + 1].double(), threat,
                                                rounding=True)
        # (CROWN's own pass on this sample alone may round differently from the batched one)
        assert all(bool((lo >= c_lo - 1e-9).all()) and bool((hi <= c_hi + 1e-9).all())
                   for (lo, hi), (c_lo, c_hi) in zip(cached, crown, strict=True))
        assert any(bool((lo > c_lo + 1e-9).any()) or bool((hi < c_hi - 1e-9).any())
                   for (lo, hi), (c_lo, c_hi) in zip(cached, crown, strict=True))
        # sound: every op's input at sampled points of the set lies inside
        d = 2 * torch.rand(512, *x.shape[1:], generator=gen, dtype=torch.float64) - 1
        d[:256] = d[:256].sign()  # box corners too
        x0 = x[i:i + 1].double().expand_as(d)
        v = threat.project(x0, x0 + threat.eps * d)
        with torch.no_grad():
            for op, (lo, hi) in zip(problem.network.ops, cached, strict=False):
                assert bool((v >= lo - 1e-9).all()) and bool((v <= hi + 1e-9).all())
                v = op.forward(v)


@pytest.mark.parametrize("bounder", [CROWN(), BaB(time_limit=20), MILP(time_limit=20)],
                         ids=["crown", "bab", "milp"])
def test_bounders_from_cached_bounds_match_their_own_pass(bounder: Any) -> None:
    # The cache holds exactly what each bounder would compute itself: same lower bounds.
    model, x, y, threat = _undecided_by_crown(4, 0.15)
    problem = Problem.of(model, x, y, threat)
    layers = problem.ensure_layer_bounds(torch.arange(3), "test")
    assert layers is not None
    cached = bounder(model, x, y, threat, layer_bounds=layers)
    alone = bounder(model, x, y, threat)
    assert torch.allclose(cached.lower, alone.lower, atol=1e-6, rtol=0)
    assert cached.verdict == alone.verdict


def test_layer_bounds_that_do_not_fit_are_refused() -> None:
    model, x, y, threat = _undecided_by_crown(3)
    problem = Problem.of(model, x, y, threat)
    layers = problem.ensure_layer_bounds(torch.arange(3), "test")
    assert layers is not None
    with pytest.raises(InvalidInputError, match="'layer_bounds' must hold"):
        CROWN()(model, x, y, threat, layer_bounds=layers[:-1])
    with pytest.raises(InvalidInputError, match=r"'layer_bounds'\[0\]"):
        CROWN()(model, x[:2], y[:2], threat, layer_bounds=layers)
    with pytest.raises(InvalidParameterError, match="IBP takes no 'layer_bounds'"):
        IBP()(model, x, y, threat, layer_bounds=layers)


def test_cache_intersects_and_drops_contradictions() -> None:
    model, x, y, threat = _undecided_by_crown(4)
    problem = Problem.of(model, x, y, threat)
    layers = problem.ensure_layer_bounds(torch.arange(3), "crown")
    assert layers is not None
    record = BoundRecord("test", "test", torch.float64, 0.0, (0,))
    # a tighter enclosure of sample 0 is intersected in (and recorded)
    tighter = [(lo[:1] + 1e-3 * (hi[:1] - lo[:1]), hi[:1]) for lo, hi in layers]
    problem.store_layer_bounds([0], tighter, record)
    merged = problem.layer_bounds([0])
    assert merged is not None
    assert all(bool((m[0] >= t[0]).all()) for m, t in zip(merged, tighter, strict=True))
    assert [r.method for r in problem.provenance(0)] == ["crown", "test"]
    # one that contradicts the cache means a bound was wrong: the sample's cache goes
    wrong = [(hi[1:2] + 1.0, hi[1:2] + 2.0) for lo, hi in layers]
    with pytest.warns(RuntimeWarning, match="contradict"):
        problem.store_layer_bounds([1], wrong, record)
    assert problem.layer_bounds([1]) is None
    assert problem.layer_bounds([2]) is not None


def test_problem_validates_its_inputs() -> None:
    model = _net(4)
    x = torch.rand(2, 5)
    with pytest.raises(InvalidInputError, match="spec"):
        Problem.of(model, x, torch.tensor([0, 1]), LpBall("linf", 0.1),
                   spec=Spec.margins(torch.tensor([0]), 3))


def test_a_relaxation_alone_keeps_no_layer_bounds() -> None:
    model, x, y, threat = _undecided_by_crown(4, 0.15)
    problem = Problem.of(model, x, y, threat)
    run(problem, Policy(method="crown"))
    assert all(problem.layer_bounds([i]) is None for i in range(3))
    assert all(len(problem.provenance(i)) == 1 for i in range(3))


def test_a_vnnlib_box_that_is_no_cube_is_the_unit_cube_under_a_map() -> None:
    from advrobust.evaluation.verify import verify_property
    from advrobust.network.vnnlib import parse_vnnlib
    from advrobust.verify._vnnlib import BoxInput

    model = nn.Sequential(nn.Linear(2, 2)).eval()
    with torch.no_grad():  # Y_0 = X_0, Y_1 = X_1
        model[0].weight.copy_(torch.eye(2))
        model[0].bias.zero_()
    text = "\n".join(["(declare-const X_0 Real)", "(declare-const X_1 Real)",
                      "(declare-const Y_0 Real)", "(declare-const Y_1 Real)",
                      "(assert (>= X_0 0.0))", "(assert (<= X_0 0.5))",   # not a cube:
                      "(assert (>= X_1 0.2))", "(assert (<= X_1 0.3))",   # widths 0.5, 0.1
                      "(assert (or (and (>= Y_1 Y_0))))"])                # unsafe: X_1 >= X_0
    prop = parse_vnnlib(text)
    problem = Problem.from_property(model, prop)
    assert isinstance(problem.model, BoxInput) and problem.model.inner is model
    assert problem.box is not None and torch.equal(problem.box[0], prop.lower)
    assert problem.spec.num_rows == 1 and float(problem.x.abs().max()) == 0.0
    # the cube's corners map onto (a hair outside) the box's
    corners = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0]])
    assert bool(problem.threat.contains(problem.x.expand(4, 2), corners).all())
    mapped = torch.stack([problem.model.to_input(z) for z in corners])
    assert torch.allclose(mapped, torch.tensor([[0.0, 0.2], [0.5, 0.3], [0.0, 0.3], [0.5, 0.2]],
                                               dtype=torch.float64), atol=1e-7)
    assert bool((mapped.min(0).values <= prop.lower).all() & (mapped.max(0).values
                                                               >= prop.upper).all())
    # a witness (a point of the cube) is mapped, clamped into the box and checked there
    found = problem.confirm_unsafe(torch.tensor([-1.0, 1.0]))
    assert found is not None
    assert torch.allclose(found[0], torch.tensor([0.0, 0.3])) and bool(prop.contains(
        found[0].unsqueeze(0), atol=0.0))  # exactly inside (float32 rounding moved inwards)
    assert problem.confirm_unsafe(torch.tensor([1.0, -1.0])) is None  # safe: X_1 < X_0
    # the box itself is verified: X_1 - X_0 <= 0.3 there, 0.5 on the enclosing cube [0, 0.5]^2
    thin = parse_vnnlib(text.replace("(>= Y_1 Y_0)", "(>= (- Y_1 Y_0) 0.35)"))
    for method in ("crown", "bab", "milp"):
        assert verify_property(model, thin, method=method, time_limit=10).status == "unsat"
    wide = parse_vnnlib(text.replace("(>= Y_1 Y_0)", "(>= (- Y_1 Y_0) 0.25)"))
    res = verify_property(model, wide, method="bab", time_limit=10)
    assert res.status == "sat" and res.counterexample is not None
    assert float(res.counterexample[1] - res.counterexample[0]) >= 0.25


def test_layer_bounds_that_exclude_the_clean_input_are_ignored_with_a_warning() -> None:
    # Soundness: precomputed bounds cannot turn a broken sample into a proof.
    model, x, y, threat = _undecided_by_crown(4, 0.15)
    problem = Problem.of(model, x, y, threat)
    layers = problem.ensure_layer_bounds(torch.arange(3), "test")
    assert layers is not None
    wrong = [(lo, hi) for lo, hi in layers]
    wrong[2] = (wrong[2][1] + 1.0, wrong[2][1] + 2.0)  # a hidden layer's bounds off the set
    with pytest.warns(RuntimeWarning, match="exclude the clean input at op 2"):
        cached = MILP(time_limit=20)(model, x, y, threat, layer_bounds=wrong)
    alone = MILP(time_limit=20)(model, x, y, threat)
    assert cached.verdict == alone.verdict
    assert torch.allclose(cached.lower, alone.lower, atol=1e-6, rtol=0)
