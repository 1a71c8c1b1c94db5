"""The random two-layer network of the adversarial-examples-at-initialisation theorems.

``f(x) = k^{-1/2} sum_j a_j psi(w_j . x)`` with ``w_j ~ N(0, I/d)`` and ``a_j`` uniform in
{-1, +1}, on inputs of the sphere of radius ``sqrt(d)`` (Bubeck, Cherapanamjeri, Gidel &
Tachet des Combes, "A single gradient step finds adversarial examples on random two-layers
neural networks", NeurIPS 2021, eq. (1); Bartlett, Bubeck & Cherapanamjeri, "Adversarial
examples in multi-layer random ReLU networks", NeurIPS 2021, for deeper nets).

Closed forms used as the theory's prediction (``g = w . x ~ N(0, 1)`` because ``||x||^2 = d``):

- ``E f(x)^2 = E psi(g)^2`` exactly (cross terms vanish since the ``a_j`` are independent and
  symmetric), and ``f(x)`` is close to ``N(0, E psi(g)^2)`` by the central limit theorem in
  ``k`` (Bubeck et al. 2021, Section 1). For ReLU ``E relu(g)^2 = 1/2``.
- ``E ||grad f(x)||^2 = E[psi'(g)^2 ||w||^2]``; writing ``w = (g / d) x + w_perp`` with
  ``||w_perp||^2 ~ chi^2_{d-1} / d`` independent of ``g``,
  ``E ||grad f||^2 = E psi'(g)^2 + (E[psi'(g)^2 g^2] - E psi'(g)^2) / d``; for ReLU both
  expectations are 1/2, so ``E ||grad f||^2 = 1/2`` exactly at every ``d``.
- Linearised, the step that reaches the boundary has norm ``|f| / ||grad f||``: with
  ``||grad f||`` concentrated this is ``|N(0, 1)| * sqrt(E psi^2 / E ||grad f||^2)``, so a step
  of norm ``s`` flips the sign with probability ``erf(s / (sqrt(2) * ratio))``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from advrobust.errors import InvalidParameterError

__all__ = ["ACTIVATIONS", "Theory", "check_activation", "theory"]

# value and derivative of each supported activation
_Fn = Callable[[Tensor], Tensor]


def _relu(t: Tensor) -> Tensor:
    return t.clamp_min(0)


def _relu_grad(t: Tensor) -> Tensor:
    return (t > 0).to(t.dtype)


def _gelu_grad(t: Tensor) -> Tensor:
    cdf = 0.5 * (1 + torch.erf(t / math.sqrt(2)))
    return cdf + t * torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)


ACTIVATIONS: dict[str, tuple[_Fn, _Fn]] = {
    "relu": (_relu, _relu_grad),
    "softplus": (torch.nn.functional.softplus, torch.sigmoid),
    "gelu": (torch.nn.functional.gelu, _gelu_grad),
}


def check_activation(name: str, owner: str) -> str:
    """Return the activation name, or raise listing the supported ones."""
    if not isinstance(name, str) or name.strip().lower() not in ACTIVATIONS:
        raise InvalidParameterError(
            f"The 'activation' parameter of {owner} must be one of {sorted(ACTIVATIONS)}. "
            f"Got {name!r} instead.")
    return name.strip().lower()


@dataclass(frozen=True)
class Theory:
    """The theory's prediction for one activation and input dimension.

    Attributes:
        f_var: ``E f(x)^2 = E psi(g)^2``.
        grad_sq: ``E ||grad f(x)||^2``.
        f_abs_mean: ``E |f(x)|`` under the Gaussian limit, ``sqrt(2 f_var / pi)``.
        ratio: ``sqrt(f_var / grad_sq)``, the typical linearised step per unit of ``|N(0,1)|``.
    """

    f_var: float
    grad_sq: float

    @property
    def f_abs_mean(self) -> float:
        return math.sqrt(2 * self.f_var / math.pi)

    @property
    def ratio(self) -> float:
        return math.sqrt(self.f_var / self.grad_sq)

    def linear_flip_rate(self, step: float) -> float:
        """Probability that the linearised needed step ``|f| / ||grad f||`` is <= ``step``."""
        return math.erf(step / (math.sqrt(2) * self.ratio))

    def linear_step_median(self) -> float:
        """Median of ``|f| / ||grad f||`` (the median of ``|N(0, 1)|`` is 0.6745)."""
        return 0.6744897501960817 * self.ratio


def theory(activation: str, d: int) -> Theory:
    """Closed-form moments for ``activation`` at input dimension ``d`` (Gauss-Hermite, 80 nodes)."""
    activation = check_activation(activation, "theory")
    psi, dpsi = ACTIVATIONS[activation]
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    g = torch.as_tensor(nodes, dtype=torch.float64)
    w = torch.as_tensor(weights / math.sqrt(2 * math.pi), dtype=torch.float64)
    e_psi2 = float((w * psi(g) ** 2).sum())
    e_dpsi2 = float((w * dpsi(g) ** 2).sum())
    e_dpsi2_g2 = float((w * dpsi(g) ** 2 * g * g).sum())
    if activation == "relu":  # the kink defeats quadrature; the exact values are 1/2
        e_psi2 = e_dpsi2 = e_dpsi2_g2 = 0.5
    return Theory(f_var=e_psi2, grad_sq=e_dpsi2 + (e_dpsi2_g2 - e_dpsi2) / d)
