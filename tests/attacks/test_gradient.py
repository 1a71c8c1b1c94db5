"""FGSM and PGD: the attack contract, closed forms, orderings and bad input."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from advrobust import InvalidInputError, InvalidParameterError, InvalidThreatModelError, LpBall
from advrobust.attacks import FGSM, PGD, fgsm, pgd
from advrobust.core.spec import margin
from attacks.common import batch_for, check_attack

NORMS = [("linf", 0.1), ("l2", 0.5), ("l1", 1.0)]
UNBOUNDED = (-math.inf, math.inf)


def linear(d: int, classes: int, seed: int, dtype: torch.dtype = torch.float64) -> nn.Linear:
    """A seeded linear model (its own generator: the global RNG is never seeded)."""
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(d, classes, dtype=dtype)
    bound = 1 / math.sqrt(d)  # PyTorch's default init range, scaled down as before
    with torch.no_grad():
        layer.weight.copy_(0.3 * bound * (2 * torch.rand(classes, d, generator=g, dtype=dtype) - 1))
        layer.bias.copy_(bound * (2 * torch.rand(classes, generator=g, dtype=dtype) - 1))
    return layer.eval()


@pytest.mark.parametrize(("norm", "eps"), NORMS)
@pytest.mark.parametrize("attack", [FGSM(), PGD(steps=5, restarts=2)], ids=["fgsm", "pgd"])
def test_contract(attack: FGSM | PGD, norm: str, eps: float, tiny_mlp: nn.Module) -> None:
    x, y = batch_for(tiny_mlp)
    check_attack(attack, tiny_mlp, x, y, LpBall(norm, eps))


def test_contract_targeted(tiny_mlp: nn.Module) -> None:
    x, y = batch_for(tiny_mlp)
    target = (y + 1) % 3
    for attack in (FGSM(), PGD(steps=5, targeted_loss="target-vs-all")):
        result = check_attack(attack, tiny_mlp, x, y, LpBall("linf", 0.2), target=target)
        assert torch.equal(result.target, target)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fgsm_is_the_closed_form_optimum_of_a_linear_model(seed: int) -> None:
    """Two classes, no box: min over the ball of (w_y - w_t) x + b is reached at
    x - eps sign(w_y - w_t) (linf) and x - eps (w_y - w_t) / ||w_y - w_t||_2 (l2)."""
    model = linear(6, 2, seed)
    x = torch.randn(10, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    y = torch.arange(10) % 2
    w = model.weight.detach()
    diff = w[y] - w[1 - y]  # (N, D): gradient of the margin
    eps = 0.3
    linf = FGSM()(model, x, y, LpBall("linf", eps, *UNBOUNDED))
    torch.testing.assert_close(linf.x_adv, x - eps * diff.sign())
    clean = margin(model(x).detach(), y)
    torch.testing.assert_close(linf.margin, clean - eps * diff.abs().sum(1))
    l2 = FGSM(loss="margin")(model, x, y, LpBall("l2", eps, *UNBOUNDED))
    torch.testing.assert_close(l2.x_adv, x - eps * diff / diff.norm(dim=1, keepdim=True))
    torch.testing.assert_close(l2.margin, clean - eps * diff.norm(dim=1))


def test_pgd_below_fgsm_below_clean(tiny_mlp: nn.Module) -> None:
    x, y = batch_for(tiny_mlp, n=64)
    with torch.no_grad():
        clean = margin(tiny_mlp(x), y)
    for norm, eps in NORMS:
        threat = LpBall(norm, eps * 2)
        f = FGSM()(tiny_mlp, x, y, threat)
        p = PGD(steps=20)(tiny_mlp, x, y, threat, generator=torch.Generator().manual_seed(0))
        # PGD keeps the clean point as a candidate: never worse than clean, per sample.
        assert bool((p.margin <= clean + 1e-6).all())
        assert p.margin.mean() <= f.margin.mean() + 1e-6 <= clean.mean() + 2e-6


@pytest.mark.parametrize(("norm", "eps"), NORMS)
def test_restarts_are_never_worse_per_sample(norm: str, eps: float, tiny_mlp: nn.Module) -> None:
    x, y = batch_for(tiny_mlp, n=32)
    threat = LpBall(norm, eps)
    one = PGD(steps=5)(tiny_mlp, x, y, threat, generator=torch.Generator().manual_seed(3))
    many = PGD(steps=5, restarts=4)(tiny_mlp, x, y, threat,
                                    generator=torch.Generator().manual_seed(3))
    assert bool((many.margin <= one.margin + 1e-6).all())
    assert many.queries == 4 * one.queries - 3  # 4 runs, one shared validation + re-evaluation


def test_pgd_returns_the_best_iterate_not_the_last() -> None:
    """A huge step overshoots: the last iterate is worse, the best one must be returned."""
    model = linear(4, 3, 0)
    x = torch.rand(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1).detach()
    threat = LpBall("l2", 1.0, *UNBOUNDED)
    result = PGD(steps=3, step_size=5.0, random_start=False, loss="margin")(model, x, y, threat)
    with torch.no_grad():
        clean = margin(model(x), y)
    assert bool((result.margin <= clean + 1e-12).all())


@pytest.mark.parametrize("objective", ["target-vs-true", "target-vs-all"])
def test_targeted_pgd_reaches_its_target_on_an_easy_model(objective: str) -> None:
    """f_k(x) = 3 x_k: raising x_target and lowering x_y (both objectives do) reaches any
    target once the ball allows a change of 1 per coordinate."""
    model = nn.Linear(4, 4, bias=False).double().eval()
    with torch.no_grad():
        model.weight.copy_(3 * torch.eye(4))
    x = torch.rand(24, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1).detach()
    target = (y + 1 + torch.arange(24) % 3) % 4
    # No random start: it would move the other coordinates, which target-vs-true leaves alone.
    result = PGD(steps=20, targeted_loss=objective, random_start=False)(
        model, x, y, LpBall("linf", 1.0, *UNBOUNDED), target=target,
        generator=torch.Generator().manual_seed(0))
    assert bool(result.success.all())
    assert torch.equal(model(result.x_adv).argmax(1), target)


def test_untargeted_pgd_breaks_a_weak_model() -> None:
    model = linear(16, 4, 6)
    x = torch.rand(24, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1).detach()
    result = pgd(model, x, y, eps=2.0, lo=-math.inf, hi=math.inf, steps=20)
    assert bool(result.success.all()) and bool((result.margin < 0).all())
    assert bool((result.exhausted == ~result.success).all())


def test_friendly_functions_match_the_objects(tiny_mlp: nn.Module) -> None:
    x, y = batch_for(tiny_mlp)
    a = pgd(tiny_mlp, x, y, eps=0.3, norm="l2", steps=4, seed=5)
    b = PGD(steps=4)(tiny_mlp, x, y, LpBall("l2", 0.3), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.x_adv, b.x_adv)
    c = fgsm(tiny_mlp, x, y, eps=0.1)
    assert torch.equal(c.x_adv, FGSM()(tiny_mlp, x, y, LpBall("linf", 0.1)).x_adv)


def test_default_step_size_and_params_stored_verbatim() -> None:
    attack = PGD(steps=10)
    assert attack.resolved_step_size(LpBall("linf", 0.1)) == pytest.approx(0.025)
    assert PGD(step_size=0.01).resolved_step_size(LpBall("linf", 0.1)) == 0.01
    assert attack.get_params()["loss"] == "ce" and "steps=10" in repr(attack)
    assert (FGSM.cli_name, PGD.cli_name) == ("fgsm", "pgd")


def test_no_gradient_reaches_parameters_and_dtype_follows_input() -> None:
    model = linear(5, 3, 1)
    x = torch.rand(8, 5, dtype=torch.float64)
    y = model(x).argmax(1).detach()
    result = PGD(steps=3)(model, x, y, LpBall("linf", 0.1))
    assert result.x_adv.dtype == torch.float64
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"steps": 0}, r"The 'steps' parameter of PGD must be an int in \[1, inf\). Got 0 instead."),
    ({"steps": 2.5}, "'steps' parameter of PGD must be an int"),
    ({"restarts": 0}, "'restarts' parameter of PGD must be an int in"),
    ({"step_size": 0.0}, r"'step_size' parameter of PGD must be a finite float in \(0, inf\)"),
    ({"step_size": float("nan")}, "'step_size' parameter of PGD"),
    ({"loss": "hinge"}, r"'loss' parameter of PGD must be one of \{'ce', 'margin'\}"),
    ({"targeted_loss": "x"}, "'targeted_loss' parameter of PGD must be one of"),
    ({"random_start": 1}, "'random_start' parameter of PGD must be a bool"),
    ({"l1_sparsity": 1.5}, r"'l1_sparsity' parameter of PGD must be a finite float in \[0, 1\]"),
])
def test_bad_parameters(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidParameterError, match=message):
        PGD(**kwargs)


def test_bad_fgsm_parameters() -> None:
    with pytest.raises(InvalidParameterError, match="'loss' parameter of FGSM"):
        FGSM(loss="l2")


def test_bad_threats_through_the_friendly_function(tiny_mlp: nn.Module) -> None:
    x, y = batch_for(tiny_mlp)
    for kwargs, message in [({"eps": -1.0}, "'eps' parameter of LpBall"),
                            ({"eps": float("nan")}, "'eps' parameter of LpBall"),
                            ({"eps": float("inf")}, "'eps' parameter of LpBall"),
                            ({"eps": 0.1, "norm": "l0"}, "'norm' parameter of LpBall"),
                            ({"eps": 0.1, "lo": 1.0, "hi": 0.0}, "lo < hi")]:
        with pytest.raises(InvalidThreatModelError, match=message):
            pgd(tiny_mlp, x, y, steps=1, **kwargs)


def test_bad_inputs(tiny_mlp: nn.Module) -> None:
    x, y = batch_for(tiny_mlp, n=8)
    threat = LpBall("linf", 0.1)
    attack = PGD(steps=1)
    cases = [
        ((x + 0.5, y), r"'x' must lie in the threat's input box \[0, 1\]"),
        ((torch.where(x > 0.5, float("nan"), x), y), "'x' contains NaN"),
        ((x, torch.full_like(y, 3)), r"'y' must hold class indices in \[0, 2\]. Got values"),
        ((x, y[:5]), r"'y' must have shape \(8,\) to match x. Got \(5,\)"),
        ((x, y.float()), "'y' must be an integer torch.Tensor"),
    ]
    for (xb, yb), message in cases:
        with pytest.raises(InvalidInputError, match=message):
            attack(tiny_mlp, xb, yb, threat)
    with pytest.raises(InvalidInputError, match="'target' must differ from 'y'.*indices \\[0"):
        attack(tiny_mlp, x, y, threat, target=y.clone())
    x_small = x.clone()
    x_small[0, 0, 0, 0] = 1.0 + 5e-7  # within 1e-6 of the box: accepted
    attack(tiny_mlp, x_small, y, threat)


def test_threat_must_be_an_lp_ball(tiny_mlp: nn.Module) -> None:
    x, y = batch_for(tiny_mlp, n=4)
    with pytest.raises(InvalidInputError, match="'threat' must be an LpBall. Got float instead"):
        FGSM()(tiny_mlp, x, y, 0.1)  # type: ignore[arg-type]


def test_model_on_another_device_is_an_error() -> None:
    model = nn.Linear(4, 3, device="meta").eval()
    with pytest.raises(InvalidInputError, match="'x' is on cpu but the model is on meta"):
        FGSM()(model, torch.rand(2, 4), torch.zeros(2, dtype=torch.int64), LpBall("linf", 0.1))


def test_labels_on_another_device_than_x_are_an_error(tiny_mlp: nn.Module) -> None:
    x, y = batch_for(tiny_mlp, n=4)
    threat = LpBall("linf", 0.1)
    with pytest.raises(InvalidInputError, match="'y' is on meta but 'x' is on cpu"):
        FGSM()(tiny_mlp, x, y.to("meta"), threat)
    with pytest.raises(InvalidInputError, match="'target' is on meta but 'x' is on cpu"):
        PGD(steps=1)(tiny_mlp, x, y, threat, target=((y + 1) % 3).to("meta"))
    # A parameter-free model has no device of its own: the check still catches y.
    with pytest.raises(InvalidInputError, match="'y' is on meta"):
        FGSM()(nn.Flatten().eval(), x, y.to("meta"), threat)


def test_probability_outputs_warn(tiny_mlp: nn.Module) -> None:
    softmax_model = nn.Sequential(tiny_mlp, nn.Softmax(dim=1)).eval()
    x, y = batch_for(tiny_mlp)
    with pytest.warns(UserWarning, match="look like probabilities.*need logits"):
        FGSM()(softmax_model, x, y, LpBall("linf", 0.1))


def test_training_mode_warns_once_and_is_restored(tiny_mlp: nn.Module) -> None:
    model = nn.Sequential(tiny_mlp, nn.Dropout(0.5)).train()
    model[0].eval()  # mixed modes must come back exactly
    x, y = batch_for(tiny_mlp)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = PGD(steps=3)(model, x, y, LpBall("linf", 0.1))
    assert sum("training mode" in str(w.message) for w in caught) == 1
    assert model.training and not model[0].training and model[1].training
    # The attack ran in eval mode (dropout off): margins re-evaluate deterministically.
    with torch.no_grad():
        torch.testing.assert_close(result.margin, margin(tiny_mlp(result.x_adv), y))


def test_training_mode_is_reported_once_over_many_batches(tiny_mlp: nn.Module) -> None:
    """With Python's default filter a loop of attack calls (e.g. over batches) warns once."""
    from advrobust.evaluation import evaluate_attack

    model = nn.Sequential(tiny_mlp, nn.Dropout(0.5)).train()
    x, y = batch_for(tiny_mlp, n=12)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        evaluate_attack(model, FGSM(), (x, y), LpBall("linf", 0.1), batch_size=4)
    assert sum("training mode" in str(w.message) for w in caught) == 1
    assert model.training
