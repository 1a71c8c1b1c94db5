"""Universal perturbations (Moosavi-Dezfooli et al. 2017): fooling rate, io, as an attack."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from advrobust import LpBall
from advrobust.attacks import (
    FixedPerturbation,
    UniversalPerturbation,
    fooling_rate,
    load_universal,
    plot_universal,
    run_universal,
    save_universal,
)
from advrobust.errors import DataFormatError, InvalidParameterError, InvalidThreatModelError
from attacks._catalogue import digits_model
from attacks.common import batch_for, check_attack


def _digits(n_train: int, n_test: int) -> tuple[Tensor, Tensor, Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(data.target, dtype=torch.int64)
    # the catalogue's digits model trained on the first 1,500: both splits are held out from it
    return x[1500:1500 + n_train], y[1500:1500 + n_train], x[-n_test:]


def _noise_like(v: Tensor, threat: LpBall, seed: int) -> Tensor:
    """Random noise with the same lp norm as ``v`` (random signs at eps for linf)."""
    g = torch.Generator().manual_seed(seed)
    if threat.norm.value == "linf":
        return (torch.randint(0, 2, v.shape, generator=g) * 2 - 1).to(v) * v.abs().max()
    noise = torch.randn(v.shape, generator=g)
    return noise / noise.norm() * v.norm()


@pytest.mark.parametrize("method,norm,eps", [("deepfool", "l2", 2.0), ("sgd", "linf", 0.15),
                                              ("sgd", "l2", 2.0), ("lagrangian", "l2", 2.0)])
def test_beats_random_noise_of_the_same_norm_on_held_out_data(method: str, norm: str,
                                                              eps: float) -> None:
    model = digits_model()
    x, y, x_test = _digits(140, 150)
    threat = LpBall(norm, eps)
    uap = UniversalPerturbation(method=method, max_passes=2, batch_size=1 if method ==
                                "deepfool" else 8)
    res = uap.fit(model, x, y, threat, generator=torch.Generator().manual_seed(0))
    v = res.perturbation
    assert v.shape == (1, 8, 8)
    assert float(threat.norm_of(v[None])[0]) <= eps * (1 + 1e-5)
    assert res.fooling_rate_train == max(res.history) and len(res.history) <= 2
    held_out = fooling_rate(model, x_test, v, threat)
    noise = max(fooling_rate(model, x_test, _noise_like(v, threat, s), threat) for s in range(3))
    assert held_out > noise + 0.05, (held_out, noise)


def test_lagrangian_penalty_trades_fooling_for_energy() -> None:
    """penalty=0 is the projected SGD variant exactly; a large penalty keeps v well inside the
    ball (the constraint is no longer what limits it)."""
    model = digits_model()
    x, y, _ = _digits(80, 1)
    threat = LpBall("l2", 3.0)

    def fit(method: str, penalty: float) -> Tensor:
        uap = UniversalPerturbation(method=method, max_passes=2, batch_size=16, penalty=penalty)
        return uap.fit(model, x, y, threat, generator=torch.Generator().manual_seed(0)
                       ).perturbation

    torch.testing.assert_close(fit("lagrangian", 0.0), fit("sgd", 0.0))
    free, penalised = fit("lagrangian", 0.0), fit("lagrangian", 5.0)
    assert float(free.norm()) > 2.9  # the ball binds without a penalty
    assert float(penalised.norm()) < 0.5 * float(free.norm())


def test_stops_at_the_target_fooling_rate() -> None:
    model = digits_model()
    x, y, _ = _digits(60, 1)
    res = UniversalPerturbation(method="sgd", max_passes=6, target_fooling_rate=0.05,
                                batch_size=20).fit(model, x, y, LpBall("linf", 0.3))
    assert len(res.history) == 1 and res.history[0] >= 0.05


def test_save_load_plot_round_trip(tmp_path: Path) -> None:
    model = digits_model()
    x, y, _ = _digits(40, 1)
    threat = LpBall("l2", 1.0)
    res = UniversalPerturbation(method="sgd", max_passes=1, batch_size=20).fit(model, x, y,
                                                                             threat)
    path = save_universal(tmp_path / "v.npz", res)
    back = load_universal(path)
    assert torch.equal(back.perturbation, res.perturbation)
    assert back.threat == threat and back.history == res.history and back.method == "sgd"
    png = plot_universal(tmp_path / "v.png", res)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataFormatError):
        load_universal(tmp_path / "bad.npz")
    # the saved file drives the CLI's "universal-apply" attack
    xb, yb = x[:8], model(x[:8]).argmax(1)
    out = FixedPerturbation(perturbation=str(path))(model, xb, yb, threat)
    torch.testing.assert_close(out.x_adv, threat.clip_box(xb + res.perturbation))
    # the CLI helper: fit, held-out rate, files
    uap = UniversalPerturbation(method="sgd", max_passes=1, batch_size=20)
    again, summary = run_universal(uap, model, x, y, threat, x_heldout=x[:10],
                                   save_path=tmp_path / "w.npz", plot_path=tmp_path / "w.png")
    assert torch.equal(load_universal(summary["saved"]).perturbation, again.perturbation)
    assert summary["fooling_rate_heldout"] == fooling_rate(model, x[:10], again.perturbation,
                                                           threat)
    assert (tmp_path / "w.png").stat().st_size > 0 and summary["perturbation_norm"] <= 1.0 + 1e-6


def test_contracts(tiny_mlp: nn.Module) -> None:
    x, y = batch_for(tiny_mlp)
    threat = LpBall("l2", 0.5)
    res = check_attack(UniversalPerturbation(method="sgd", max_passes=2, batch_size=4), tiny_mlp,
                       x, y, threat)
    assert res.info["universal"].perturbation.shape == x.shape[1:]
    check_attack(UniversalPerturbation(max_passes=1, batch_size=6), tiny_mlp, x, y, threat)
    v = threat.with_eps(0.3).sample(torch.zeros(1, 1, 4, 4), torch.Generator().manual_seed(0))
    check_attack(UniversalPerturbation.as_attack(v[0] - 0.0), tiny_mlp, x, y, threat)


def test_bad_configuration(tiny_mlp: nn.Module) -> None:
    for kwargs in ({"method": "gd"}, {"max_passes": 0}, {"target_fooling_rate": 1.5},
                   {"batch_size": 0}, {"step_size": -1.0}, {"penalty": -0.1}):
        with pytest.raises(InvalidParameterError, match="parameter of UniversalPerturbation"):
            UniversalPerturbation(**kwargs)
    x, y = batch_for(tiny_mlp)
    with pytest.raises(InvalidThreatModelError, match="method='sgd'"):
        UniversalPerturbation().fit(tiny_mlp, x, y, LpBall("l1", 1.0))
    big = torch.full((1, 4, 4), 0.5)
    with pytest.raises(InvalidThreatModelError, match="exceeds"):
        FixedPerturbation(perturbation=big)(tiny_mlp, x, y, LpBall("linf", 0.1))
