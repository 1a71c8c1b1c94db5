"""Sanity checks (AutoAttack style): each check fires on a crafted model, and only there."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust import AttackResult, LpBall
from advrobust.attacks import APGD, Ensemble, Square
from advrobust.errors import InvalidInputError
from advrobust.evaluation.sanity import SanityWarning, sanity_checks


def _linear(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()


class _Wrap(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner


class _Softmax(_Wrap):
    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x).softmax(dim=1)


class _Detached(_Wrap):
    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x.detach())


class _NaNGrad(_Wrap):
    def forward(self, x: Tensor) -> Tensor:
        # sqrt'(0) is inf and (x - x)' is 0: the input gradient is NaN, the value is unchanged
        return self.inner(x) + torch.sqrt((x - x).flatten(1).sum(1, keepdim=True))


class _Noisy(_Wrap):
    def forward(self, x: Tensor) -> Tensor:
        return self.inner(F.dropout(x, p=0.3, training=True))


class _Quantised(_Wrap):
    """A step function of the input: zero gradients, decisions still flip under perturbation."""

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(torch.round(x * 4) / 4)


def _batch(model: nn.Module, n: int = 24, seed: int = 0) -> tuple[Tensor, Tensor]:
    x = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return x, model(x).argmax(1)


def _codes(found: list[SanityWarning]) -> list[str]:
    return [w.code for w in found]


def test_a_plain_logit_model_passes() -> None:
    model = _linear()
    x, y = _batch(model)
    threat = LpBall("linf", 0.1)
    results = {"apgd": APGD(steps=5)(model, x, y, threat),
               "square": Square(queries=20)(model, x, y, threat)}
    assert sanity_checks(model, x, y, results) == []


def test_probabilities_are_flagged() -> None:
    model = _Softmax(_linear()).eval()
    x, y = _batch(model)
    assert "probabilities" in _codes(sanity_checks(model, x, y))


@pytest.mark.parametrize("wrapper", [_Detached, _NaNGrad, _Quantised])
def test_zero_or_nan_gradients_are_flagged(wrapper: type[_Wrap]) -> None:
    model = wrapper(_linear()).eval()
    x, y = _batch(model)
    found = [w for w in sanity_checks(model, x, y) if w.code == "gradient-masking"]
    assert len(found) == 1 and found[0].fraction == 1.0
    assert "24 of 24" in found[0].message


def test_randomised_model_is_flagged() -> None:
    model = _Noisy(_linear()).eval()
    x, y = _batch(model)
    codes = _codes(sanity_checks(model, x, y))
    assert codes == ["randomized"]


def test_black_box_beating_white_box_on_a_step_function_model() -> None:
    """APGD sees zero gradients on a quantised model and stays at x; Square still flips
    decisions, which must be reported."""
    model = _Quantised(_linear(1)).eval()
    x, y = _batch(model, n=32)
    threat = LpBall("linf", 0.25)
    white = APGD(steps=10, random_start=False)(model, x, y, threat)
    black = Square(queries=100)(model, x, y, threat, generator=torch.Generator().manual_seed(0))
    assert not bool(white.success.any()) and bool(black.success.any())
    found = sanity_checks(model, x, y, {"apgd-ce": white, "square": black})
    (bb,) = [w for w in found if w.code == "black-box-beats-white-box"]
    assert f"broke {int(black.success.sum())} of 32" in bb.message
    # the same finding through an ensemble's bookkeeping
    ens = Ensemble([APGD(steps=10, random_start=False), Square(queries=100)])(
        model, x, y, threat, generator=torch.Generator().manual_seed(0))
    assert "black-box-beats-white-box" in _codes(sanity_checks(model, x, y, {"strongest": ens}))
    # and not when the white-box attack broke those samples too
    assert "black-box-beats-white-box" not in _codes(
        sanity_checks(model, x, y, {"apgd-ce": black, "square": black}, black_box=["square"]))


def test_black_box_check_reads_an_ensemble_merged_over_batches() -> None:
    """``evaluate_attack`` merges batches, leaving per-batch lists in ``info``: same finding,
    and the black-box members of every batch count (the first batch may use none)."""
    from advrobust.evaluation import evaluate_attack

    model = _Quantised(_linear(1)).eval()
    x, y = _batch(model, n=32)
    threat = LpBall("linf", 0.25)
    ens = Ensemble([APGD(steps=10, random_start=False), Square(queries=100)])
    run = evaluate_attack(model, ens, (x, y), threat, batch_size=10,
                          generator=torch.Generator().manual_seed(0))
    assert isinstance(run.result.info["broken_by"][0], list)  # merged: one list per batch
    (bb,) = [w for w in sanity_checks(model, x, y, {"ensemble": run.result})
             if w.code == "black-box-beats-white-box"]
    by_square = sum(b == "square" for batch in run.result.info["broken_by"] for b in batch)
    assert by_square > 0 and f"broke {by_square} of 32" in bb.message
    white_only = Ensemble([APGD(steps=10, random_start=False)])
    run = evaluate_attack(model, white_only, (x, y), threat, batch_size=10)
    assert "black-box-beats-white-box" not in _codes(
        sanity_checks(model, x, y, {"ensemble": run.result}))


def test_warnings_serialise_and_bad_results_raise() -> None:
    model = _Softmax(_Noisy(_linear())).eval()
    x, y = _batch(model)
    found = sanity_checks(model, x, y)
    data = json.loads(json.dumps([w.to_dict() for w in found]))
    assert {d["code"] for d in data} == {"probabilities", "randomized"}
    assert all(d["advice"] and d["message"] for d in data)
    bad = AttackResult(x_adv=x[:3], success=torch.zeros(3, dtype=torch.bool),
                       margin=torch.ones(3), norm=torch.zeros(3), queries=1)
    with pytest.raises(InvalidInputError, match="covers 3 samples"):
        sanity_checks(_linear(), x, y, {"broken": bad})


def test_model_mode_restored() -> None:
    model = _linear().train()
    x, y = _batch(model)
    with pytest.warns(UserWarning, match="training mode"):
        sanity_checks(model, x, y)
    assert model.training and all(p.requires_grad for p in model.parameters())


@pytest.fixture
def _single_thread() -> object:
    from attacks._catalogue import one_thread

    with one_thread():
        yield


def _weak_and_pgd() -> tuple[nn.Module, Tensor, Tensor, LpBall, AttackResult]:
    """A C&W run far from converged (a tiny constant, few steps) at an eps PGD easily uses."""
    from advrobust.attacks import CarliniWagner
    from attacks._catalogue import digits_batch, digits_model

    model, (x, y) = digits_model(), digits_batch(16)
    threat = LpBall("l2", 2.0)
    weak = CarliniWagner(steps=5, lr=0.01, binary_search_steps=1, initial_const=1e-3)(
        model, x, y, threat)
    return model, x, y, threat, weak


@pytest.mark.usefixtures("_single_thread")
def test_minimum_norm_misses_are_flagged_against_pgd_in_the_same_set() -> None:
    """The count is exactly the samples C&W failed on that PGD (same seed) breaks."""
    from advrobust.attacks import PGD

    model, x, y, threat, weak = _weak_and_pgd()
    found = sanity_checks(model, x, y, {"cw": weak}, threat=threat,
                          generator=torch.Generator().manual_seed(3))
    pgd = PGD(steps=100)(model, x[~weak.success], y[~weak.success], threat,
                         generator=torch.Generator().manual_seed(3))
    expected = int(pgd.success.sum())
    assert expected >= 8  # l2 2.0 is far beyond these digits' minimal distortions
    (warning,) = [w for w in found if w.code == "minimum-norm-misses"]
    assert f"failed on {expected} of 16 samples" in warning.message
    assert warning.fraction == pytest.approx(expected / 16)
    # without the threat and without another white-box result there is nothing to compare
    assert "minimum-norm-misses" not in _codes(sanity_checks(model, x, y, {"cw": weak}))


@pytest.mark.usefixtures("_single_thread")
def test_minimum_norm_check_reads_other_results_and_spares_converged_attacks() -> None:
    from advrobust.attacks import PGD, CarliniWagner

    model, x, y, threat, weak = _weak_and_pgd()
    pgd = PGD(steps=40)(model, x, y, threat, generator=torch.Generator().manual_seed(0))
    found = sanity_checks(model, x, y, {"cw": weak, "pgd": pgd})
    (warning,) = [w for w in found if w.code == "minimum-norm-misses"]
    assert f"failed on {int((pgd.success & ~weak.success).sum())} of 16" in warning.message
    strong = CarliniWagner(steps=60, lr=0.1, binary_search_steps=3, initial_const=1.0)(
        model, x, y, threat)
    assert bool(strong.success.all())
    assert "minimum-norm-misses" not in _codes(sanity_checks(model, x, y, {"cw": strong},
                                                             threat=threat))
