"""The provably robust network of Vardi, Yehudai & Shamir 2022, sandwiched by the library's
verifiers and attacks; the trained network; reproducibility and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from advrobust.errors import InvalidInputError, InvalidParameterError
from advrobust.experiments import (
    exact_radius,
    measured_c,
    radius_bracket,
    robust_net,
    robust_network,
    sphere_data,
    theorem_bound,
    train_two_layer,
)

D, M, C = 16, 6, 0.8


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return sphere_data(M, D, torch.Generator().manual_seed(0))


def _f(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = net(x.float()).double()
    return out[:, 1] - out[:, 0]


def test_construction_margins_and_closed_form_radius(data: tuple[torch.Tensor, ...]) -> None:
    x, y = data
    assert measured_c(x) <= C
    net = robust_network(x, y, C)
    margin = y * _f(net, x)
    assert bool((margin >= 1 - 1e-5).all())
    # along -x_j the sign holds just inside the exact radius and is lost just outside it
    r = exact_radius(C, D)
    unit = x / math.sqrt(D)
    assert bool((y * _f(net, x - 0.99 * r * unit) > 0).all())
    assert bool((y * _f(net, x - 1.01 * r * unit) <= 0).all())
    assert r == pytest.approx(2 * theorem_bound(C, D))


def test_certified_radius_sandwich(data: tuple[torch.Tensor, ...]) -> None:
    x, y = data
    net = robust_network(x, y, C)
    br = radius_bracket(net, x.float(), y, reach=math.sqrt(D),
                        generator=torch.Generator().manual_seed(1), attacks=("deepfool", "pgd"))
    # CROWN proves the theorem's radius at every point, and (the network being linear on the
    # ball) nearly the exact one; no attack goes below what CROWN certified
    assert bool((br.certified >= theorem_bound(C, D)).all())
    assert bool((br.certified >= 0.99 * exact_radius(C, D)).all())
    assert bool((br.certified <= exact_radius(C, D) * (1 + 1e-4)).all())
    assert bool((br.attack >= br.certified).all())
    assert bool((br.attack <= 1.1 * exact_radius(C, D)).all())


def test_trained_network_fits_and_brackets(data: tuple[torch.Tensor, ...]) -> None:
    x, y = data
    gen = torch.Generator().manual_seed(2)
    net = train_two_layer(x, y, width=32, steps=60, lr=0.5, generator=gen)
    assert bool((y * _f(net, x) > 0).all())
    again = train_two_layer(x, y, width=32, steps=60, lr=0.5,
                            generator=torch.Generator().manual_seed(2))
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), again.parameters(),
                                                  strict=True))
    br = radius_bracket(net, x.float(), y, reach=math.sqrt(D), generator=gen,
                        attacks=("deepfool",))
    assert bool((br.certified <= br.attack).all())
    assert bool(torch.isfinite(br.attack).all())


def test_experiment_end_to_end_is_reproducible() -> None:
    kw = {"d": 12, "m": 4, "c": 0.85, "width": 16, "steps": 30, "attacks": ("deepfool",),
          "seed": 5}
    a, b = robust_net(**kw), robust_net(**kw)  # type: ignore[arg-type]
    sa, sb = a.summary()[0], b.summary()[0]
    assert sa == sb
    assert sa["certified_above_bound"] and sa["sandwich"] and sa["margin_min"] >= 1 - 1e-5


def test_orthogonal_points() -> None:
    x, _ = sphere_data(5, 5, torch.Generator().manual_seed(0), orthogonal=True)
    assert measured_c(x) < 1e-12
    assert torch.allclose(x.norm(dim=1), torch.full((5,), math.sqrt(5), dtype=x.dtype))


@pytest.mark.parametrize("kwargs, word", [
    ({"c": 1.0}, "'c'"), ({"c": -0.1}, "'c'"), ({"d": 0}, "'d'"), ({"m": 0}, "'m'"),
    ({"d": 4, "m": 5, "orthogonal": True}, "m <= d"), ({"attacks": ("fgsm",)}, "deepfool"),
])
def test_bad_parameters(kwargs: dict[str, object], word: str) -> None:
    with pytest.raises(InvalidParameterError, match=word):
        robust_net(**{"d": 8, "m": 2, "c": 0.9, "steps": 1, **kwargs})  # type: ignore[arg-type]


def test_points_violating_near_orthogonality_report_the_measured_c() -> None:
    x, y = sphere_data(6, 16, torch.Generator().manual_seed(0))
    with pytest.raises(InvalidInputError, match=f"measured c is {measured_c(x):.4g}"):
        robust_network(x, y, 0.1)
    with pytest.raises(InvalidInputError, match="measured c"):
        robust_net(d=16, m=6, c=0.1, steps=1)
    with pytest.raises(InvalidInputError, match="sphere"):
        robust_network(2 * x, y, 0.9)
