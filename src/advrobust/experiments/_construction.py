"""Nearly orthogonal data and the provably robust depth-2 network built on it.

Vardi, Yehudai & Shamir, "Gradient methods provably converge to non-robust networks", NeurIPS
2022 (arXiv:2202.04347), Section 3 ("robust networks exist"): for points ``x_1..x_m`` on the
sphere of radius ``sqrt(d)`` with ``|<x_i, x_j>| <= c d`` (i != j) and labels ``y_i = +-1``,
a depth-2 ReLU network of width ``m`` with ``y_i f(x_i) >= 1`` exists whose sign cannot be
flipped at any ``x_i`` by an l2 perturbation of norm below ``(1 - c)/4 * sqrt(d)``.

The construction (one neuron per point, following the theorem's proof idea): neuron ``i`` fires
on the cap around ``x_i`` only, with its threshold halfway between the correlation of ``x_i``
with itself (``d``) and with any other point (at most ``c d``):

    f(x) = s * sum_i y_i relu(<x_i, x> / sqrt(d) - (1 + c)/2 * sqrt(d)),
    s = 2 / ((1 - c) sqrt(d)).

At ``x_j`` the own neuron's pre-activation is ``(1 - c)/2 * sqrt(d)`` (so ``y_j f(x_j) = 1``)
and every other one is at most ``c sqrt(d) - (1 + c)/2 sqrt(d) < 0``. A perturbation ``z``
changes each pre-activation by at most ``||z||`` (the rows ``x_i / sqrt(d)`` have unit norm),
so for ``||z|| < (1 - c)/2 * sqrt(d)`` the own neuron stays on and the others off: the sign is
``y_j``. Along ``-x_j`` the own neuron reaches zero at exactly that norm while the others stay
off (their pre-activations shrink), so the exact robust radius of this network is
``(1 - c)/2 * sqrt(d)``: twice the theorem's guaranteed ``(1 - c)/4 * sqrt(d)``. The paper's
proof text was not at hand when this was written; the constants above are derived here from the
theorem's statement and checked numerically by the library's verifiers (see ``robust_net``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from advrobust.errors import InvalidInputError, InvalidParameterError

__all__ = ["exact_radius", "measured_c", "robust_network", "sphere_data", "theorem_bound"]


def theorem_bound(c: float, d: int) -> float:
    """The theorem's radius ``(1 - c)/4 * sqrt(d)``."""
    return (1 - c) / 4 * math.sqrt(d)


def exact_radius(c: float, d: int) -> float:
    """The exact l2 robust radius ``(1 - c)/2 * sqrt(d)`` of :func:`robust_network`."""
    return (1 - c) / 2 * math.sqrt(d)


def sphere_data(m: int, d: int, generator: torch.Generator, *,
                orthogonal: bool = False) -> tuple[Tensor, Tensor]:
    """``m`` points on the sphere of radius ``sqrt(d)`` and balanced +-1 labels.

    Args:
        m: number of points; d: dimension.
        generator: the random source.
        orthogonal: draw an orthonormal frame (a QR factor of a Gaussian matrix, needs
            ``m <= d``, so ``c = 0`` up to rounding) instead of independent uniform points.

    Returns:
        ``x`` (m, d) float64 and ``y`` (m,) float64 in {-1, +1} (alternating, then shuffled).
    """
    g = torch.randn(m, d, generator=generator, dtype=torch.float64)
    if orthogonal:
        if m > d:
            raise InvalidParameterError(
                f"Orthogonal points need m <= d. Got m={m}, d={d} instead.")
        g = torch.linalg.qr(g.T).Q.T
    x = g * (math.sqrt(d) / g.norm(dim=1, keepdim=True))
    y = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(m)], dtype=torch.float64)
    return x, y[torch.randperm(m, generator=generator)]


def measured_c(x: Tensor) -> float:
    """``max_{i != j} |<x_i, x_j>| / d`` for points ``x`` (m, d); 0 for a single point."""
    m, d = x.shape
    if m < 2:
        return 0.0
    gram = (x.double() @ x.double().T).abs() / d
    gram.fill_diagonal_(0.0)
    return float(gram.max())


def _check_points(x: Tensor, c: float, owner: str) -> None:
    d = x.shape[1]
    norms = x.double().norm(dim=1)
    if bool(((norms - math.sqrt(d)).abs() > 1e-6 * math.sqrt(d)).any()):
        raise InvalidInputError(
            f"{owner}: the points must lie on the sphere of radius sqrt(d) = {math.sqrt(d):.6g}. "
            f"Got norms in [{float(norms.min()):.6g}, {float(norms.max()):.6g}] instead.")
    got = measured_c(x)
    if got > c + 1e-9:  # rounding of an exactly orthogonal frame
        raise InvalidInputError(
            f"{owner}: the {x.shape[0]} points in d={d} violate the near-orthogonality "
            f"assumption max |<x_i, x_j>| <= c d with c={c:g}: the measured c is {got:.4g}. "
            f"Raise c above "
            f"{got:.4g}, lower m, or raise d.")


def robust_network(x: Tensor, y: Tensor, c: float) -> nn.Sequential:
    """The explicit width-``m`` network of the construction above, as a verifiable Sequential.

    Args:
        x: (m, d) points on the sphere of radius ``sqrt(d)`` with ``|<x_i, x_j>| <= c d``.
        y: (m,) labels in {-1, +1}.
        c: the near-orthogonality constant, in [0, 1).

    Returns:
        ``Linear(d, m) -> ReLU -> Linear(m, 2)`` in float32 whose logits are ``(-f/2, f/2)``:
        class 1 is ``f > 0`` and the margin of a sample with label ``y_i`` is ``y_i f``.

    Raises:
        InvalidParameterError: c outside [0, 1).
        InvalidInputError: points off the sphere, or violating the assumption (the measured c
            is reported).
    """
    if not isinstance(c, (int, float)) or isinstance(c, bool) or not 0 <= c < 1:
        raise InvalidParameterError(
            f"The 'c' parameter of robust_network must be a float in [0, 1). Got {c!r} instead.")
    if x.dim() != 2 or y.shape != (x.shape[0],) or not bool(((y == 1) | (y == -1)).all()):
        raise InvalidInputError(
            f"robust_network needs x (m, d) and y (m,) in {{-1, +1}}. Got x {tuple(x.shape)}, "
            f"y {tuple(y.shape)} instead.")
    _check_points(x, c, "robust_network")
    m, d = x.shape
    scale = 2 / ((1 - c) * math.sqrt(d))
    hidden = nn.Linear(d, m)
    out = nn.Linear(m, 2)
    with torch.no_grad():
        hidden.weight.copy_(x / math.sqrt(d))
        hidden.bias.fill_(-(1 + c) / 2 * math.sqrt(d))
        out.weight.copy_(torch.stack([-y, y]) * (scale / 2))
        out.bias.zero_()
    return nn.Sequential(hidden, nn.ReLU(), out).float().eval()


def as_classes(y: Tensor) -> Tensor:
    """Labels +-1 as class indices (1 for +1, 0 for -1), int64."""
    return (y > 0).to(torch.int64)
