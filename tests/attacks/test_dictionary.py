"""Adversarial dictionary learning: prox operators, ADiL / SADiL, coding, the attack, io."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import Tensor, nn

from advrobust import LpBall
from advrobust.attacks import ADiL, Dictionary, DictionaryAttack, SADiL
from advrobust.attacks.dictionary import (
    AdversarialLoss,
    DictionaryObjective,
    evaluate_dictionary,
    fit_laplace_scale,
    load_dictionary,
    plot_atoms,
    project_atoms,
    resolve_target,
    sample_laplace,
    save_dictionary,
    soft_threshold,
    sparse_code,
)
from advrobust.errors import DataFormatError, InvalidInputError, InvalidParameterError
from advrobust.evaluation.metrics import rmse
from attacks._catalogue import digits_batch, digits_model, one_thread
from attacks.common import check_attack

FLOATS = st.floats(-5, 5, allow_nan=False, width=32)


@pytest.fixture(autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    with one_thread():
        yield


def _learn(learner: ADiL | SADiL, n: int = 40, **kw: object) -> tuple[Dictionary, Tensor, Tensor]:
    x, y = digits_batch(n)
    d = learner.fit(digits_model(), x, y, generator=torch.Generator().manual_seed(0), **kw)
    return d, x, y


# ---------------------------------------------------------------- proximal operators
@settings(max_examples=30, deadline=None)
@given(arrays(np.float32, (6, 3), elements=FLOATS), st.floats(0, 3))
def test_soft_threshold_is_the_closed_form_prox(v: np.ndarray, tau: float) -> None:
    out = soft_threshold(torch.from_numpy(v), tau).numpy()
    expected = np.where(v > tau, v - tau, np.where(v < -tau, v + tau, 0.0))
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    # and it minimises 1/2 (u - v)^2 + tau |u| better than nearby points
    obj = lambda u: 0.5 * (u - v) ** 2 + tau * np.abs(u)  # noqa: E731
    for shift in (-1e-2, 1e-2):
        assert np.all(obj(out) <= obj(out + shift) + 1e-6)


@settings(max_examples=30, deadline=None)
@given(arrays(np.float32, (5, 4), elements=FLOATS), arrays(np.float32, (5, 4), elements=FLOATS))
def test_atom_projection_is_the_closed_form_and_nearest(d: np.ndarray, u: np.ndarray) -> None:
    dt = torch.from_numpy(d)
    p = project_atoms(dt)
    norms = np.linalg.norm(d, axis=0)
    expected = d / np.maximum(norms, 1.0)
    np.testing.assert_allclose(p.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert bool((p.norm(dim=0) <= 1 + 1e-5).all())
    # nearest point of the product of unit balls: closer than any other feasible point
    feasible = project_atoms(torch.from_numpy(u))
    assert bool(((dt - p).norm(dim=0) <= (dt - feasible).norm(dim=0) + 1e-5).all())


def test_laplace_fit_recovers_the_scale_of_synthetic_samples() -> None:
    gen = torch.Generator().manual_seed(0)
    for scale in (0.05, 0.7, 3.0):
        ours = sample_laplace((40_000,), scale, generator=gen)
        reference = torch.distributions.Laplace(0.0, scale).sample((40_000,))
        assert fit_laplace_scale(ours) == pytest.approx(scale, rel=0.03)
        assert fit_laplace_scale(reference) == pytest.approx(scale, rel=0.03)
    with pytest.raises(InvalidInputError, match="every code is zero"):
        fit_laplace_scale(torch.zeros(5))


# ---------------------------------------------------------------- ADiL / SADiL
def test_adil_objective_never_increases_and_atoms_stay_in_the_unit_ball() -> None:
    seen: list[tuple[int, float, float]] = []

    def record(it: int, atoms: Tensor, codes: Tensor, value: float) -> None:
        seen.append((it, float(atoms.norm(dim=0).max()), value))

    learner = ADiL(atoms=4, lambda1=0.05, lambda2=0.01, loss="margin", kappa=1.0, max_iter=12,
                   step_size=2.0)
    d, x, y = _learn(learner, callback=record)
    history = np.asarray(d.history)
    assert len(history) == len(seen) + 1 >= 5
    assert np.all(np.diff(history) <= 0), history
    assert history[-1] < history[0]
    assert all(norm <= 1 + 1e-6 for _, norm, _ in seen)
    # the recorded value is the objective recomputed from the returned iterate
    obj = DictionaryObjective(digits_model(), x, y, None, kind=AdversarialLoss.MARGIN, kappa=1.0,
                              lambda1=0.05, lambda2=0.01, project=lambda _a, b: b.clamp(0, 1))
    assert d.codes is not None
    total = float((obj.values(d.atoms, d.codes) + obj.penalty(d.codes)).sum())
    assert total == pytest.approx(history[-1], rel=1e-4, abs=1e-4)
    # it fools the model on its training inputs, with sparse codes
    report = evaluate_dictionary(digits_model(), d, x, d.codes)
    assert report.fooling_rate > 0.5 and report.sparsity > 0


def test_sadil_with_the_whole_dataset_as_batch_matches_adil_first_step() -> None:
    common = dict(atoms=3, lambda1=0.02, lambda2=0.01, step_size=0.5, loss="margin", kappa=1.0)
    adil, x, _ = _learn(ADiL(max_iter=1, **common))  # type: ignore[arg-type]
    sadil, _, _ = _learn(SADiL(epochs=1, batch_size=len(x), **common))  # type: ignore[arg-type]
    assert adil.codes is not None and sadil.codes is not None
    assert bool(adil.codes.abs().sum() > 0)
    # ADiL's first step was accepted in full (lambda = 1): it is the proximal-gradient point
    model, (xb, yb) = digits_model(), digits_batch(len(x))
    obj = DictionaryObjective(model, xb, yb, None, kind=AdversarialLoss.MARGIN, kappa=1.0,
                              lambda1=0.02, lambda2=0.01, project=lambda _a, b: b.clamp(0, 1))
    atoms0 = torch.randn((64, 3), generator=torch.Generator().manual_seed(0))
    atoms0 = atoms0 / atoms0.norm(dim=0)
    codes0 = torch.zeros((3, len(x)))
    y_atoms, y_codes, h = ADiL(max_iter=1, **common).proximal_point(  # type: ignore[arg-type]
        obj, atoms0, codes0, obj.smooth(atoms0, codes0))
    assert h < 0
    torch.testing.assert_close(adil.atoms, y_atoms)
    torch.testing.assert_close(adil.codes, y_codes)
    torch.testing.assert_close(sadil.atoms, adil.atoms, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sadil.codes, adil.codes, rtol=1e-5, atol=1e-6)


def test_sadil_minibatch_step_is_scaled_by_n_over_batch_size() -> None:
    # On the data set X twice over (N = 2n), a minibatch holding one copy of X gives the
    # estimate (N / |B|) grad_D F_B = 2 grad_D F_X = grad_D F_{[X; X]}: SADiL's D step then equals
    # ADiL's D step on [X; X] (from the same non-zero codes), and its V step uses the new D.
    from advrobust.attacks.dictionary._learner import LearnState

    model, (x, y) = digits_model(), digits_batch(12)
    x2, y2 = torch.cat([x, x]), torch.cat([y, y])
    common = dict(atoms=3, lambda1=0.02, lambda2=0.01, step_size=0.7, loss="margin", kappa=1.0)
    obj = DictionaryObjective(model, x2, y2, None, kind=AdversarialLoss.MARGIN, kappa=1.0,
                              lambda1=0.02, lambda2=0.01, project=lambda _a, b: b.clamp(0, 1))
    gen = torch.Generator().manual_seed(1)
    atoms0 = project_atoms(torch.randn((64, 3), generator=gen))
    codes0 = torch.cat([torch.randn((3, 12), generator=gen) * 0.5] * 2, dim=1)
    full = obj.smooth(atoms0, codes0)
    y_atoms, _, _ = ADiL(**common).proximal_point(obj, atoms0, codes0, full)  # type: ignore[arg-type]
    state = LearnState(atoms0.clone(), codes0.clone(), [0.0])
    batch = torch.arange(12)
    assert SADiL(batch_size=12, **common).step(obj, state, batch)  # type: ignore[arg-type]
    torch.testing.assert_close(state.atoms, y_atoms, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(state.atoms, atoms0)  # D did move
    # V step on the batch: soft-thresholding with the new D; the other codes are untouched
    grad_v = obj.smooth(y_atoms, codes0[:, :12], batch, grad_atoms=False).grad_codes
    assert grad_v is not None
    expected = soft_threshold(codes0[:, :12] - 0.7 * grad_v, 0.7 * 0.02)
    torch.testing.assert_close(state.codes[:, :12], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state.codes[:, 12:], codes0[:, 12:])
    assert float(state.atoms.norm(dim=0).max()) <= 1 + 1e-6


def test_sadil_runs_over_minibatches_and_keeps_feasible_atoms() -> None:
    norms: list[float] = []
    d, x, _ = _learn(SADiL(atoms=3, epochs=3, batch_size=16, loss="margin", kappa=1.0),
                     callback=lambda i, a, c, v: norms.append(float(a.norm(dim=0).max())))
    assert len(d.history) == 4 and d.status == "max_iter" and d.method == "sadil"
    assert max(norms) <= 1 + 1e-6
    assert d.history[-1] < d.history[0]


def test_identity_dictionary_without_l1_is_an_unconstrained_gradient_attack() -> None:
    model = digits_model()
    x, y = digits_batch(8)
    gamma, steps = 0.05, 3
    obj = DictionaryObjective(model, x, y, None, kind=AdversarialLoss.CE, kappa=0.0,
                              lambda1=0.0, lambda2=0.0, project=lambda _a, b: b)
    coded = sparse_code(obj, torch.eye(64), steps=steps, step_size=gamma)
    assert bool((coded.first_step == 1).all())
    xk = x.clone()
    for _ in range(steps):  # gradient ascent on the cross-entropy, no projection
        xr = xk.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
        xk = (xk + gamma * g).detach()
    torch.testing.assert_close(x + coded.codes.T.reshape(x.shape), xk, rtol=1e-4, atol=1e-5)


def test_targeted_second_class_objective() -> None:
    logits = torch.tensor([[3.0, 2.0, 5.0], [0.0, 1.0, -1.0]])
    y = torch.tensor([2, 0])
    assert resolve_target("second", logits, y).tolist() == [0, 1]
    with pytest.raises(InvalidInputError, match="second"):
        resolve_target("third", logits, y)
    d, x, y = _learn(ADiL(atoms=3, max_iter=5, loss="margin", kappa=0.5), target="second")
    assert np.all(np.diff(d.history) <= 0) and d.history[-1] < d.history[0]


# ---------------------------------------------------------------- unseen inputs / attack
@pytest.fixture(scope="module")
def learned() -> Dictionary:
    with one_thread():
        x, y = digits_batch(40)
        return ADiL(atoms=5, lambda1=0.05, loss="margin", kappa=1.0, max_iter=10,
                    step_size=2.0).fit(digits_model(), x, y,
                                       generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("norm,eps,method", [("l2", 100.0, "sparse"), ("linf", 0.1, "sparse"),
                                             ("l2", 3.0, "span")])
def test_dictionary_attack_contract_and_stays_in_the_threat_set(learned: Dictionary, norm: str,
                                                                eps: float, method: str) -> None:
    x, y = digits_batch(24)
    x = x[12:]
    y = y[12:]
    threat = LpBall(norm, eps)
    result = check_attack(DictionaryAttack(dictionary=learned, steps=4, method=method),
                          digits_model(), x, y, threat)
    assert bool(threat.contains(x, result.x_adv).all())
    assert float(result.x_adv.min()) >= 0 and float(result.x_adv.max()) <= 1
    assert result.success_rate > 0


def test_unseen_inputs_are_fooled_and_the_report_matches_the_metrics(learned: Dictionary) -> None:
    model = digits_model()
    x, y = digits_batch(60)
    x, y = x[40:], y[40:]
    report = evaluate_dictionary(model, learned, x, y=y, steps=10)
    assert float(report.x_adv.min()) >= 0 and float(report.x_adv.max()) <= 1
    with torch.no_grad():
        clean, adv = model(x).argmax(1), model(report.x_adv).argmax(1)
    assert report.fooling_rate == pytest.approx(float((clean != adv).float().mean()))
    assert report.rmse == pytest.approx(rmse(x, report.x_adv), rel=1e-5)
    assert report.fooling_rate > 0.3


def test_targeted_dictionary_attack_reaches_targets(learned: Dictionary) -> None:
    x, y = digits_batch(12)
    target = (y + 1) % 10
    res = DictionaryAttack(dictionary=learned, steps=10, loss="ce")(
        digits_model(), x, y, LpBall("l2", 100.0), target=target)
    assert res.success_rate > 0 and torch.equal(res.target, target)  # type: ignore[arg-type]


# ---------------------------------------------------------------- io and bad input
def test_save_load_round_trip_and_metadata_checks(learned: Dictionary, tmp_path: Path) -> None:
    d = Dictionary(atoms=learned.atoms, input_shape=learned.input_shape, codes=learned.codes,
                   lambda1=0.05, dataset="digits", history=learned.history)
    path = save_dictionary(tmp_path / "d.npz", d)
    back = load_dictionary(path, input_shape=(1, 8, 8), dataset="digits")
    torch.testing.assert_close(back.atoms, d.atoms)
    assert back.codes is not None and d.codes is not None
    torch.testing.assert_close(back.codes, d.codes)
    assert back.history == pytest.approx(d.history) and back.lambda1 == 0.05
    with pytest.raises(InvalidInputError, match=r"shape \(1, 8, 8\)"):
        load_dictionary(path, input_shape=(1, 28, 28))
    with pytest.raises(InvalidInputError, match="learned on 'digits', not 'mnist'"):
        load_dictionary(path, dataset="mnist")
    np.savez(tmp_path / "other.npz", atoms=np.zeros((3, 2)))
    with pytest.raises(DataFormatError):
        load_dictionary(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError):
        load_dictionary(tmp_path / "missing.npz")
    # the attack reads the file itself (as the CLI does with --param dictionary=FILE)
    x, y = digits_batch(6)
    res = DictionaryAttack(dictionary=str(path), steps=2)(digits_model(), x, y, LpBall("l2", 9.))
    assert bool(LpBall("l2", 9.0).contains(x, res.x_adv).all())
    assert plot_atoms(tmp_path / "atoms.png", back).stat().st_size > 0


def test_dictionary_from_another_dataset_is_refused_by_the_attack(learned: Dictionary,
                                                                 tmp_path: Path) -> None:
    tagged = Dictionary(atoms=learned.atoms, input_shape=learned.input_shape, dataset="digits")
    path = save_dictionary(tmp_path / "d.npz", tagged)
    with pytest.raises(InvalidInputError, match="learned on 'digits', not 'mnist'"):
        DictionaryAttack(dictionary=tagged, dataset="mnist")
    attack = DictionaryAttack(dictionary=str(path), dataset="mnist", steps=1)
    x, y = digits_batch(4)
    with pytest.raises(InvalidInputError, match="learned on 'digits', not 'mnist'"):
        attack(digits_model(), x, y, LpBall("l2", 1.0))
    ok = DictionaryAttack(dictionary=str(path), dataset="digits", steps=1)
    assert ok(digits_model(), x, y, LpBall("l2", 1.0)).x_adv.shape == x.shape
    with pytest.raises(InvalidParameterError, match="'dataset' parameter"):
        DictionaryAttack(dictionary=tagged, dataset=3)  # type: ignore[arg-type]


def test_dictionary_shape_must_match_the_inputs(learned: Dictionary) -> None:
    x = torch.rand(4, 1, 5, 5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(25, 3)).eval()
    y = model(x).argmax(1)
    with pytest.raises(InvalidInputError, match=r"atoms have shape \(64, 5\)"):
        DictionaryAttack(dictionary=learned)(model, x, y, LpBall("l2", 1.0))
    with pytest.raises(InvalidInputError, match="input_shape"):
        Dictionary(atoms=torch.zeros(10, 2), input_shape=(1, 3, 3))
    with pytest.raises(InvalidInputError, match="<= 1"):
        Dictionary(atoms=torch.full((4, 1), 2.0), input_shape=(1, 2, 2))


@pytest.mark.parametrize("kwargs,match", [
    ({"atoms": 0}, "'atoms' parameter of ADiL must be an int in \\[1, inf\\)"),
    ({"lambda1": -0.1}, "'lambda1' parameter of ADiL"),
    ({"lambda2": -1.0}, "'lambda2' parameter of ADiL"),
    ({"delta": 1.0}, "'delta' parameter of ADiL must be a finite float in \\(0, 1\\)"),
    ({"loss": "hinge"}, "'loss' parameter of ADiL"),
    ({"step_size": 0.0}, "'step_size'"),
])
def test_bad_parameters_are_rejected(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        ADiL(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError):
        SADiL(**{k: v for k, v in kwargs.items() if k != "delta"} or {"batch_size": 0})
    with pytest.raises(InvalidParameterError, match="'dictionary' parameter"):
        DictionaryAttack(dictionary=3)  # type: ignore[arg-type]


class _NaNAfter(nn.Module):
    """Returns NaN logits from its ``after``-th forward on."""

    def __init__(self, inner: nn.Module, after: int) -> None:
        super().__init__()
        self.inner, self.after, self.calls = inner, after, 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        out = self.inner(x)
        return out * math.nan if self.calls > self.after else out


@pytest.mark.parametrize("learner", [ADiL(atoms=3, max_iter=20, loss="margin", kappa=1.0),
                                     SADiL(atoms=3, epochs=20, batch_size=8)])
def test_nan_objective_stops_with_the_last_finite_iterate(learner: ADiL | SADiL) -> None:
    x, y = digits_batch(16)
    model = _NaNAfter(digits_model(), after=9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = learner.fit(model, x, y, generator=torch.Generator().manual_seed(0))
    assert d.status == "nan"
    assert any("finite" in str(w.message) for w in caught)
    assert all(math.isfinite(h) for h in d.history)
    assert d.codes is not None and bool(torch.isfinite(d.codes).all())
    assert bool(torch.isfinite(d.atoms).all()) and float(d.atoms.norm(dim=0).max()) <= 1 + 1e-6


def test_inputs_outside_the_box_and_bad_targets_are_rejected() -> None:
    x, y = digits_batch(4)
    with pytest.raises(InvalidInputError, match="input box"):
        ADiL(atoms=2, max_iter=1).fit(digits_model(), x * 3, y)
    with pytest.raises(InvalidInputError, match="'target' must differ from 'y'"):
        ADiL(atoms=2, max_iter=1).fit(digits_model(), x, y, target=y)
