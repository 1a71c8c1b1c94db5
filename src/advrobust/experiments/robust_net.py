"""A provably robust network, certified by the library's verifiers, against a trained one.

Vardi, Yehudai & Shamir, "Gradient methods provably converge to non-robust networks", NeurIPS
2022 (arXiv:2202.04347). For ``m`` nearly orthogonal points on the sphere of radius ``sqrt(d)``
(``|<x_i, x_j>| <= c d``) a width-``m`` depth-2 ReLU network with ``y_i f(x_i) >= 1`` and l2
robust radius at least ``(1 - c)/4 * sqrt(d)`` at every ``x_i`` exists (Section 3; the network
is built in :mod:`advrobust.experiments._construction`), while gradient training on the same data
converges to networks whose radius is far smaller (Sections 4-5: an adversarial perturbation of
size about ``sqrt(d / m)`` along ``sum_i y_i x_i``).

For every ``d`` the experiment builds the network, checks the margins, and brackets each point's
radius with the library's tools (:mod:`advrobust.experiments._radius`): CROWN on l2 balls below,
DeepFool / C&W-l2 / a PGD-l2 bisection above, and the construction's closed-form exact radius
``(1 - c)/2 * sqrt(d)`` in between; then it trains a standard two-layer network (width 100 by
default, PyTorch's default initialisation scheme drawn from the experiment's generator,
full-batch gradient descent on the logistic loss) and brackets its radii the same way. The
exact l2 minimal distortion (:class:`advrobust.exact.MinimalDistortion` with ``norm="l2"``) is
not used: it reaches only inputs of a few dimensions in useful time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from advrobust.core._validation import check_bool, check_float, check_int, check_seed
from advrobust.errors import InvalidParameterError
from advrobust.experiments._construction import (
    as_classes,
    exact_radius,
    measured_c,
    robust_network,
    sphere_data,
    theorem_bound,
)
from advrobust.experiments._radius import ATTACKS, RadiusBracket, check_attacks, radius_bracket
from advrobust.experiments.init_attack import parse_width

__all__ = ["RobustNetResult", "RobustNetRow", "robust_net", "train_two_layer"]

_OWNER = "robust_net"


@dataclass(frozen=True, eq=False)
class RobustNetRow:
    """One dimension ``d``.

    Attributes:
        d, m, c: the setting; ``measured_c`` is ``max_{i != j} |<x_i, x_j>| / d``.
        bound: the theorem's radius ``(1 - c)/4 * sqrt(d)``.
        exact: the constructed network's exact radius ``(1 - c)/2 * sqrt(d)`` (closed form).
        margin: (m,) ``y_i f(x_i)`` of the constructed network (>= 1 by construction).
        constructed: radius bracket of the constructed network at every point.
        trained_margin: (m,) ``y_i f(x_i)`` of the trained network.
        trained: radius bracket of the trained network.
    """

    d: int
    m: int
    c: float
    measured_c: float
    bound: float
    exact: float
    margin: Tensor
    constructed: RadiusBracket
    trained_margin: Tensor
    trained: RadiusBracket

    def summary(self) -> dict[str, float | int | bool]:
        """Scalars of the row (for tables and JSON)."""
        con, tr = self.constructed, self.trained
        slack = 1e-3 * self.exact  # bisection resolution and float32 rounding
        return {
            "d": self.d, "m": self.m, "c": self.c, "measured_c": self.measured_c,
            "bound": self.bound, "exact": self.exact,
            "margin_min": float(self.margin.min()),
            "certified_min": float(con.certified.min()),
            "attack_min": float(con.attack.min()),
            "certified_above_bound": bool((con.certified >= self.bound).all()),
            "sandwich": bool((con.certified <= self.exact + slack).all()
                             and (con.attack >= self.exact - slack).all()),
            "trained_fits": bool((self.trained_margin > 0).all()),
            "trained_certified_median": float(tr.certified.median()),
            "trained_attack_median": float(tr.attack.median()),
            "trained_attack_max": float(tr.attack.max()),
            "trained_below_bound": bool((tr.attack < self.bound).all()),
            **{f"attack_min_{name}": float(v.min()) for name, v in con.by_attack.items()},
            **{f"trained_attack_median_{name}": float(v.median())
               for name, v in tr.by_attack.items()},
        }


@dataclass(frozen=True, eq=False)
class RobustNetResult:
    """Every dimension of a :func:`robust_net` run."""

    rows: tuple[RobustNetRow, ...]
    seed: int
    params: dict[str, object] = field(default_factory=dict)

    def row(self, d: int) -> RobustNetRow:
        for r in self.rows:
            if r.d == d:
                return r
        raise KeyError(d)

    def summary(self) -> list[dict[str, float | int | bool]]:
        return [r.summary() for r in self.rows]


def train_two_layer(x: Tensor, y: Tensor, *, width: int, steps: int, lr: float,
                    generator: torch.Generator) -> nn.Sequential:
    """A standard two-layer ReLU network trained by full-batch gradient descent.

    Args:
        x: (m, d) inputs; y: (m,) labels in {-1, +1}.
        width: hidden neurons.
        steps: gradient steps on the logistic loss ``log(1 + exp(-y f))`` (cross-entropy on
            the two logits).
        lr: step size.
        generator: source of the initial weights (uniform in ``+-1/sqrt(fan_in)``, PyTorch's
            default scheme, without touching the global RNG).

    Returns:
        ``Linear(d, width) -> ReLU -> Linear(width, 2)`` in float32, in eval mode.
    """
    d = x.shape[1]
    net = nn.Sequential(nn.Linear(d, width), nn.ReLU(), nn.Linear(width, 2))
    with torch.no_grad():
        for layer in (net[0], net[2]):
            assert isinstance(layer, nn.Linear)
            bound = 1 / math.sqrt(layer.in_features)
            for p in (layer.weight, layer.bias):
                p.copy_((torch.rand(p.shape, generator=generator, dtype=p.dtype) * 2 - 1)
                        * bound)
    params = list(net.parameters())
    xf, yc = x.float(), as_classes(y)
    for _ in range(steps):  # plain gradient descent (torch.optim would import torch._dynamo)
        with torch.enable_grad():
            loss = nn.functional.cross_entropy(net(xf), yc)
            grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(lr * g)
    for p in params:
        p.requires_grad_(False)
    return net.eval()


def _margins(net: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        logits = net(x.float()).double()
    return (logits[:, 1] - logits[:, 0]) * y


def _row(d: int, m: int, c: float, *, orthogonal: bool, width: int, steps: int,
         lr: float, attacks: Sequence[str], gen: torch.Generator) -> RobustNetRow:
    x, y = sphere_data(m, d, gen, orthogonal=orthogonal)
    net = robust_network(x, y, c)
    xf, reach = x.float(), math.sqrt(d)
    trained = train_two_layer(x, y, width=width, steps=steps, lr=lr, generator=gen)
    return RobustNetRow(
        d=d, m=m, c=c, measured_c=measured_c(x), bound=theorem_bound(c, d),
        exact=exact_radius(c, d), margin=_margins(net, x, y),
        constructed=radius_bracket(net, xf, y, reach=reach, generator=gen, attacks=attacks),
        trained_margin=_margins(trained, x, y),
        trained=radius_bracket(trained, xf, y, reach=reach, generator=gen, attacks=attacks))


def robust_net(*, d: Sequence[int] | int = (25, 50, 100), m: int | str = 10, c: float = 0.7,
               orthogonal: bool = False, width: int = 100, steps: int = 1000,
               lr: float = 0.5, attacks: Sequence[str] = ATTACKS,
               seed: int = 0) -> RobustNetResult:
    """Build, verify and attack the theorem's robust network, and a trained one, per ``d``.

    Args:
        d: input dimensions, each >= 1.
        m: number of points: an int >= 1 or a multiple of d such as ``"1d"``.
        c: the near-orthogonality constant, in [0, 1); the drawn points must satisfy
            ``max |<x_i, x_j>| <= c d`` (the measured value is reported when they do not).
        orthogonal: draw an orthonormal frame (``c = 0`` up to rounding; needs m <= d) instead
            of independent uniform points.
        width: hidden width of the trained network (narrow ones trained from a random start
            can leave points on a plateau where every neuron is off).
        steps: gradient-descent steps of the training.
        lr: its step size.
        attacks: the upper-bound attacks, a subset of ``deepfool``, ``cw``, ``pgd``.
        seed: seed of the ``torch.Generator`` of each dimension (no global seeding).

    Returns:
        :class:`RobustNetResult`, one :class:`RobustNetRow` per d.

    Raises:
        InvalidParameterError: d or m < 1, c outside [0, 1), bad training settings.
        InvalidInputError: points violating the near-orthogonality assumption (measured c).

    Examples::

        res = robust_net(d=(50,), m=10, c=0.6)
        res.rows[0].summary()["certified_min"] >= res.rows[0].bound   # True
    """
    ds = [d] if isinstance(d, int) else list(d)
    if not ds:
        raise InvalidParameterError(
            f"The 'd' parameter of {_OWNER} must be a non-empty list of ints >= 1. Got {d!r}.")
    ds = [check_int(v, "d", _OWNER, low=1) for v in ds]
    c = check_float(c, "c", _OWNER, low=0.0, high=1.0, high_open=True)
    orthogonal = check_bool(orthogonal, "orthogonal", _OWNER)
    width = check_int(width, "width", _OWNER, low=1)
    steps = check_int(steps, "steps", _OWNER, low=0)
    lr = check_float(lr, "lr", _OWNER, low=0.0, low_open=True)
    seed = check_seed(seed, "seed", _OWNER)
    ms = [parse_width(m, dv, "m", _OWNER) for dv in ds]
    attacks = check_attacks(attacks, _OWNER)
    rows = tuple(
        _row(dv, mv, c, orthogonal=orthogonal, width=width, steps=steps, lr=lr,
             attacks=tuple(attacks), gen=torch.Generator().manual_seed(seed * 1_000_003 + dv))
        for dv, mv in zip(ds, ms, strict=True))
    params: dict[str, object] = {"d": ds, "m": str(m), "c": c, "orthogonal": orthogonal,
                                 "width": width, "steps": steps, "lr": lr,
                                 "attacks": list(attacks)}
    return RobustNetResult(rows=rows, seed=seed, params=params)
