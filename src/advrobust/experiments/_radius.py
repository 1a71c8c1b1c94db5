"""The l2 robust radius of each sample of a binary classifier, bracketed with the library's tools.

The classifier has two logits and decides by the sign of ``f = logit_1 - logit_0``; a point with
label ``y = +-1`` counts as flipped once ``y f(x') <= 0`` (``f = 0`` is no longer the sign ``y``,
as in the theorem's "sign(N(x_i + z)) = sign(N(x_i))"). The radius
``d*(x) = inf { ||x' - x||_2 : y f(x') <= 0 }`` is measured on an *oriented* copy of the model,
``nn.Sequential(model, head)`` with logits ``(tau - y f, y f - tau) / 2`` and label 1 (so the
margin is ``y f - tau``, ``tau = 1e-6``, and ties go to class 0; the
caller's model is wrapped, never modified), so that the plateau ``f = 0`` of a network whose
neurons are all off counts as misclassified. It is bracketed from both sides:

- **above** by minimum-norm attacks (DeepFool, Carlini-Wagner l2) and a PGD-l2 bisection on the
  radius: the norm of a point that the real model misclassifies (re-checked by ``Attack``);
- **below** by a bisection on the radius of CROWN with an l2 :class:`LpBall`: the largest radius
  at which CROWN proves the sample (a sound certificate, so ``certified <= d* <= attack``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advrobust.attacks import PGD, CarliniWagner, DeepFool
from advrobust.core.result import AttackResult, Verdict
from advrobust.core.threat import LpBall
from advrobust.errors import InvalidParameterError
from advrobust.relax import CROWN

__all__ = ["ATTACKS", "RadiusBracket", "attack_radius", "certified_radius", "check_attacks",
           "radius_bracket"]


@dataclass(frozen=True, eq=False)
class RadiusBracket:
    """Per-sample bracket ``certified <= d* <= attack`` of the l2 robust radius.

    Attributes:
        certified: (N,) largest radius CROWN proves (0 where even the clean point is not).
        attack: (N,) smallest norm of a verified adversarial point over all attacks (inf where
            none was found within the search radius).
        by_attack: per attack name, (N,) the norm it found (inf where it failed).
    """

    certified: Tensor
    attack: Tensor
    by_attack: dict[str, Tensor]


TAU = 1e-6


def _oriented(model: nn.Module, sign: float) -> nn.Sequential:
    """``model`` followed by a fixed head with logits ``(TAU - s f, s f - TAU) / 2``."""
    head = nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[sign, -sign], [-sign, sign]]) / 2)
        head.bias.copy_(torch.tensor([TAU, -TAU]) / 2)
    head.requires_grad_(False)
    wrapper = nn.Sequential(model, head)
    wrapper.training = head.training = False  # not .eval(): that would re-mode the caller's model
    return wrapper


def _threat(x: Tensor, eps: float, reach: float) -> LpBall:
    """An l2 ball whose input box never binds within ``reach`` of the inputs (C&W needs a box)."""
    half = float(x.abs().max()) + reach
    return LpBall("l2", eps, lo=-half, hi=half)


def _success_norms(res: AttackResult, x: Tensor) -> Tensor:
    norm = (res.x_adv - x).flatten(1).norm(dim=1)
    return torch.where(res.success, norm, torch.full_like(norm, math.inf))


ATTACKS = ("deepfool", "cw", "pgd")


def check_attacks(attacks: Sequence[str] | str, owner: str) -> tuple[str, ...]:
    """The attack names as a tuple, or raise listing the allowed ones."""
    names = (attacks,) if isinstance(attacks, str) else tuple(attacks)
    if not names or not set(names) <= set(ATTACKS):
        raise InvalidParameterError(
            f"The 'attacks' parameter of {owner} must be a non-empty subset of "
            f"{list(ATTACKS)}. Got {list(names)!r} instead.")
    return names


def attack_radius(model: nn.Module, x: Tensor, y: Tensor, *, reach: float,
                  generator: torch.Generator, attacks: Sequence[str] = ATTACKS,
                  bisection: int = 8) -> dict[str, Tensor]:
    """Upper bounds on ``d*`` from DeepFool, C&W-l2 and a PGD-l2 bisection.

    Args:
        model: classifier returning logits (never modified).
        x: (N, d) inputs; y: (N,) labels.
        reach: search radius (the box of the threat is widened by it).
        generator: random source of PGD's starts.
        attacks: which of ``deepfool``, ``cw``, ``pgd`` to run (``pgd`` bisects between 0 and
            the best minimum-norm radius, or ``reach``).
        bisection: PGD bisection steps per sample.

    Returns:
        Per attack name, (N,) norms of verified adversarial points (inf where it failed).
    """
    attacks = check_attacks(attacks, "attack_radius")
    threat = _threat(x, reach, reach)
    out: dict[str, Tensor] = {}
    if "deepfool" in attacks:
        out["deepfool"] = _success_norms(DeepFool(steps=100)(model, x, y, threat), x)
    if "cw" in attacks:
        cw = CarliniWagner(steps=100, lr=0.05, initial_const=1.0, binary_search_steps=5)
        out["cw"] = _success_norms(cw(model, x, y, threat), x)
    best = (torch.stack(list(out.values())).amin(0) if out
            else torch.full((x.shape[0],), math.inf))
    if "pgd" not in attacks:
        return out
    pgd = torch.full_like(best, math.inf)
    pgd_attack = PGD(steps=20, restarts=1, loss="margin")
    for i in range(x.shape[0]):
        xi, yi = x[i:i + 1], y[i:i + 1]

        def broken(eps: float, i: int = i, xi: Tensor = xi, yi: Tensor = yi) -> bool:
            res = pgd_attack(model, xi, yi, _threat(x, eps, reach), generator=generator)
            if bool(res.success[0]):
                pgd[i] = min(float(pgd[i]), float((res.x_adv - xi).norm()))
            return bool(res.success[0])

        lo, hi = 0.0, float(best[i])
        if not math.isfinite(hi):
            hi = reach
            if not broken(hi):
                continue
        for _ in range(bisection):
            eps = (lo + hi) / 2
            lo, hi = (lo, eps) if broken(eps) else (eps, hi)
    out["pgd"] = pgd
    return out


def certified_radius(model: nn.Module, x: Tensor, y: Tensor, *, upper: Tensor, reach: float,
                     bisection: int = 20) -> Tensor:
    """Largest radius at which CROWN (l2 ball) proves each sample, by bisection.

    Args:
        model: a plain ``nn.Sequential`` the verifiers support.
        x: (N, d) inputs; y: (N,) labels.
        upper: (N,) a radius known not to be certifiable (an attack radius; inf allowed).
        reach: the search radius where ``upper`` is inf.
        bisection: bisection steps per sample.

    Returns:
        (N,) certified radii (a sound lower bound on ``d*``; 0 where nothing is proved).
    """
    crown = CROWN()
    radii = torch.zeros(x.shape[0], dtype=torch.float64)
    for i in range(x.shape[0]):
        lo, hi = 0.0, min(float(upper[i]), reach)
        for _ in range(bisection):
            eps = (lo + hi) / 2
            res = crown(model, x[i:i + 1], y[i:i + 1], _threat(x, eps, reach))
            if res.verdict[0] is Verdict.VERIFIED:
                lo = eps
            else:
                hi = eps
        radii[i] = lo
    return radii


def radius_bracket(model: nn.Module, x: Tensor, y: Tensor, *, reach: float,
                   generator: torch.Generator,
                   attacks: Sequence[str] = ATTACKS) -> RadiusBracket:
    """Attack radius (upper, the best of ``attacks``) and CROWN radius (lower) of every sample.

    Args:
        model: a binary classifier (two logits; a plain ``nn.Sequential`` for CROWN).
        x: (N, d) inputs.
        y: (N,) labels in {-1, +1} (class 1 is ``f > 0``).
        reach: search radius.
        generator: random source of the attacks.
        attacks: subset of ``deepfool``, ``cw``, ``pgd``.

    Returns:
        :class:`RadiusBracket` with ``certified <= d* <= attack`` per sample.
    """
    n = x.shape[0]
    certified = torch.zeros(n, dtype=torch.float64)
    best = torch.full((n,), math.inf, dtype=torch.float64)
    by_attack = {name: torch.full((n,), math.inf) for name in attacks}
    for sign in (1.0, -1.0):
        idx = (y == sign).nonzero().flatten()
        if idx.numel() == 0:
            continue
        oriented = _oriented(model, sign)
        xs, ones = x[idx], torch.ones(idx.numel(), dtype=torch.int64)
        found = attack_radius(oriented, xs, ones, reach=reach, generator=generator,
                              attacks=attacks)
        for name, norms in found.items():
            by_attack[name][idx] = norms.to(by_attack[name].dtype)
        best[idx] = torch.stack(list(found.values())).amin(0).to(torch.float64)
        certified[idx] = certified_radius(oriented, xs, ones, upper=best[idx], reach=reach)
    return RadiusBracket(certified=certified, attack=best, by_attack=by_attack)
