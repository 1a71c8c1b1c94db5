"""The bounder contract: validation, modes, witnesses and verdicts."""

from __future__ import annotations

import pytest
import torch
from tests.relax.conftest import make_mlp
from torch import nn

from advrobust.core import VERIFY_TOLERANCE, LpBall, Spec, Verdict
from advrobust.errors import (
    InvalidInputError,
    InvalidThreatModelError,
    UnsupportedLayerError,
)
from advrobust.exact import MILP
from advrobust.relax import CROWN, IBP, GlobalLipschitz, LocalLipschitz, LPRelaxation

BOUNDERS = [IBP(), CROWN(), LPRelaxation(), MILP(time_limit=5.0), GlobalLipschitz(),
            LocalLipschitz()]


@pytest.mark.parametrize("bounder", BOUNDERS, ids=lambda b: type(b).__name__)
def test_verdicts_agree_with_bounds_and_witnesses(bounder: object) -> None:
    model = make_mlp(11, (4, 10, 10, 3))
    x = torch.rand(8, 4, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 3  # some samples are misclassified at the clean point
    threat = LpBall("linf", 0.05)
    res = bounder(model, x, y, threat)  # type: ignore[operator]
    assert res.lower.shape == res.upper.shape == (8, 2)
    assert bool((res.lower <= res.upper + 1e-5).all())
    assert res.witness is not None and bool(threat.contains(x, res.witness).all())
    values = Spec.margins(y, 3).apply(model(res.witness)).detach()
    for i, v in enumerate(res.verdict):
        assert (v is Verdict.VERIFIED) == bool(res.lower[i].min() > VERIFY_TOLERANCE)
        if v is Verdict.FALSIFIED:
            assert float(values[i].min()) < 0
    clean_wrong = model(x).argmax(1) != y
    assert all(res.verdict[i] is Verdict.FALSIFIED for i in clean_wrong.nonzero().flatten())


def test_model_mode_and_parameters_untouched() -> None:
    model = make_mlp(1, (4, 6, 3)).train()
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.rand(2, 4)
    with pytest.warns(UserWarning, match="training mode"):
        CROWN()(model, x, torch.tensor([0, 1]), LpBall("linf", 0.1))
    assert model.training
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_bad_inputs_raise_clear_errors() -> None:
    model = make_mlp(1, (4, 6, 3))
    x, y = torch.rand(2, 4), torch.tensor([0, 1])
    threat = LpBall("linf", 0.1)
    bad = Spec.from_matrix(torch.ones(2, 4), n=2)
    with pytest.raises(InvalidInputError, match="width 3"):
        CROWN()(model, x, y, threat, spec=bad)
    with pytest.raises(InvalidInputError, match="input box"):
        CROWN()(model, x + 2, y, threat)
    with pytest.raises(InvalidThreatModelError, match="eps"):
        LpBall("linf", float("nan"))
    with pytest.raises(InvalidThreatModelError, match="l2"):
        LPRelaxation()(model, x, y, LpBall("l2", 0.1))
    with pytest.raises(UnsupportedLayerError, match="module '1'.*GELU.*Supported: .*nn.Linear"):
        CROWN()(nn.Sequential(nn.Linear(4, 3), nn.GELU()).eval(), x, y, threat)
    from advrobust.exact import MILP, BaB

    with pytest.raises(UnsupportedLayerError, match="BaB.*module '1'.*TanhOp"):
        BaB()(nn.Sequential(nn.Linear(4, 3), nn.Tanh()).eval(), x, y, threat)
    # the MILP relaxes what it cannot encode exactly, and says so naming the node
    with pytest.warns(RuntimeWarning, match="MILP: node .*module '1'.*TanhOp.*no exact MILP"):
        MILP()(nn.Sequential(nn.Linear(4, 3), nn.Tanh()).eval(), x, y, threat)


class _Custom(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


def test_custom_forward_is_refused() -> None:
    model = _Custom(nn.Flatten(), nn.Linear(4, 3)).eval()
    with pytest.raises(UnsupportedLayerError, match="reproduce"):
        IBP()(model, torch.rand(2, 4), torch.tensor([0, 1]), LpBall("linf", 0.1))


def test_any_spec_matrix_and_targeted_pairs() -> None:
    model = make_mlp(4, (4, 8, 3))
    x, y = torch.rand(3, 4), torch.tensor([0, 1, 2])
    threat = LpBall("linf", 0.02)
    full = CROWN()(model, x, y, threat)
    target = (y + 1) % 3
    one = CROWN()(model, x, y, threat, spec=Spec.targeted(y, target, 3))
    idx = [(int(t) - (int(t) > int(yy))) for t, yy in zip(target, y, strict=True)]
    torch.testing.assert_close(one.lower[:, 0], full.lower[torch.arange(3), idx])
    c = torch.tensor([[1.0, 1.0, 1.0]])
    res = CROWN()(model, x, y, threat, spec=Spec.from_matrix(c, torch.tensor([5.0]), n=3))
    s = model(x).sum(1) + 5
    assert bool((res.lower <= s.unsqueeze(1) + 1e-5).all())


def test_a_forward_hook_is_caught_like_a_custom_forward() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    handle = model[1].register_forward_hook(lambda m, i, o: o * 2)
    try:
        with pytest.raises(UnsupportedLayerError, match="reproduce"):
            IBP()(model, torch.rand(2, 4), torch.tensor([0, 1]), LpBall("linf", 0.1))
    finally:
        handle.remove()
    IBP()(model, torch.rand(2, 4), torch.tensor([0, 1]), LpBall("linf", 0.1))
