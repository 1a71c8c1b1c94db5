"""Lipschitz certificates: margin lower bounds ``m(x) - L * eps`` (Tsuzuku et al. 2018).

If every spec row ``g_k = (C f + d)_k`` is ``L_k``-Lipschitz w.r.t. the threat's norm on the
ball, then ``min_{||x' - x|| <= eps} g_k(x') >= g_k(x) - L_k * eps``, and the certified radius is
``g_k(x) / L_k`` in closed form (Hein & Andriushchenko 2017; the Finlay talk: "the Lipschitz
constant gives a certifiable minimum adversarial perturbation").

- :class:`GlobalLipschitz`: ``L_k = ||c_k^T W_L||_q * prod_l ||W_l||_{p->p}``, the spec row
  folded into the trailing affine layers (rows of ``W_last`` differenced, never ``2 ||W||``)
  and certified upper bounds of the other layers' operator norms (:mod:`._opnorm`); ReLU and
  :class:`~advrobust.models.minmax.MinMax` blocks count 1.
- :class:`LocalLipschitz`: the Jacobian of each row over the ball bounded elementwise from the
  ReLU derivative intervals that CROWN's pre-activation bounds allow (Fast-Lip, Weng et al.
  2018, "Towards fast computation of certified robustness for ReLU networks"), then its dual
  norm; never looser than the global constant (the minimum of both is used).

Both compute in float64 on a copy of the model and inflate the constant by a relative 1e-9
(rounding), so the bounds stay sound whatever the weights.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from advrobust.core._validation import check_choice
from advrobust.core.result import VERIFY_TOLERANCE
from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall, Norm
from advrobust.network.ir import Network, from_module
from advrobust.relax._opnorm import INFLATE, dual_norm, network_prefix_norm, network_split
from advrobust.relax.base import Bounder, Bounds
from advrobust.relax.crown import crown_layer_bounds

__all__ = ["GlobalLipschitz", "LocalLipschitz", "lipschitz_constants", "spec_values"]


def _float64(network: Network) -> Network:
    """The same network on a float64 copy of its module (the caller's model is untouched)."""
    if network.module is None or all(p.dtype == torch.float64
                                      for p in network.module.parameters()):
        return network
    module = copy.deepcopy(network.module).double()
    return from_module(module, network.input_shape)


def spec_values(network: Network, x: Tensor, spec: Spec) -> Tensor:
    """A float64 lower bound (N, K) on ``C f(x) + d`` at the points ``x`` themselves.

    The forward pass is an interval pass over the degenerate box ``[x, x]`` with the rounding
    allowance of every op, so the value is a lower bound whatever the weights' magnitudes (a
    plain float64 forward pass can round a margin up); the network should be a
    :func:`_float64` copy.
    """
    from advrobust.relax._rounding import add_offset
    from advrobust.relax.ibp import interval_layer_bounds, spec_interval

    x = x.double()
    with torch.no_grad():
        bounds = interval_layer_bounds(network, x, x, rounding=True)
        lower, _ = spec_interval(network, bounds, spec.C.double(), rounding=True)
    return add_offset(lower, spec.d.double())


def _fold_tail(network: Network, c: Tensor) -> tuple[Tensor, int]:
    """Spec rows carried back through the affine ops after the last nonlinearity (exact)."""
    start = network_split(network)
    a = c.double()
    for op in reversed(network.ops[start:]):  # affine: no activation after ``start``
        a = op.backward(a)  # type: ignore[attr-defined]
    return a, start


def lipschitz_constants(network: Network, c: Tensor, norm: Norm) -> Tensor:
    """Certified global Lipschitz constants (N, K) of the rows ``c`` (N, K, num_outputs)."""
    with torch.no_grad():
        a, start = _fold_tail(network, c)
        head = network_prefix_norm(network, start, norm)
        return dual_norm(a, norm) * head * (1 + INFLATE)


def jacobian_bound(network: Network, bounds: list[tuple[Tensor, Tensor]], c: Tensor
                   ) -> tuple[Tensor, Tensor]:
    """Elementwise bounds ``mid +- rad`` (N, K, *input_shape) of the gradient of each row of
    ``c`` w.r.t. the input, over all inputs whose pre-activations lie in ``bounds`` (every
    op's ``jacobian_backward``)."""
    mid = c.double()
    rad = torch.zeros_like(mid)
    for i in reversed(range(len(network.ops))):
        lo, hi = (b.double() for b in bounds[i])
        mid, rad = network.ops[i].jacobian_backward(mid, rad, lo, hi)
    return mid, rad


class GlobalLipschitz(Bounder):
    """``m(x) - L * eps`` with a global Lipschitz constant per spec row (linf, l2 or l1).

    The constant is the product of certified per-layer operator norms with the spec row folded
    into the last layers; see :mod:`advrobust.relax.lipschitz`. The input box is ignored (the
    ball contains the set), so the bound is sound and cheap but loose.
    """

    def __init__(self) -> None:
        pass

    def constants(self, network: Network, spec: Spec, norm: Norm) -> Tensor:
        """Lipschitz constants (N, K) of the spec rows (float64)."""
        return lipschitz_constants(_float64(network), spec.C, norm)

    def closed_form_radius(self, network: Network, x: Tensor, spec: Spec, norm: Norm
                           ) -> Tensor:
        """Certified radius ``max(0, min_k (g_k(x) - tol) / L_k)`` per sample (N,), float64,
        with ``tol`` = :data:`~advrobust.core.result.VERIFY_TOLERANCE` (the radius at which the
        bound still gives a VERIFIED verdict)."""
        net = _float64(network)
        values = spec_values(net, x, spec) - VERIFY_TOLERANCE
        consts = lipschitz_constants(net, spec.C, norm)
        ratio = torch.where(consts > 0, values / consts.clamp_min(1e-300),
                            torch.where(values > 0, math.inf, 0.0))
        return ratio.amin(1).clamp_min(0.0)

    def _bound(self, network: Network, x: Tensor, threat: LpBall, spec: Spec) -> Bounds:
        net = _float64(network)
        values = spec_values(net, x, spec)
        consts = lipschitz_constants(net, spec.C, threat.norm)
        return Bounds(values - consts * threat.eps,
                      stats={"lipschitz": consts.float()})


class LocalLipschitz(Bounder):
    """``m(x) - L_loc * eps`` with a Lipschitz constant valid on the ball only (Fast-Lip).

    Args:
        intermediate: how the ReLU pre-activation bounds over the ball are found: ``"crown"``
            (tighter) or ``"ibp"``.
    """

    def __init__(self, *, intermediate: str = "crown") -> None:
        self.intermediate = check_choice(intermediate, "intermediate", "LocalLipschitz",
                                         ("crown", "ibp"))

    def constants(self, network: Network, x: Tensor, threat: LpBall, spec: Spec) -> Tensor:
        """Local Lipschitz constants (N, K) over ``threat`` around ``x`` (float64)."""
        net = _float64(network)
        with torch.no_grad():
            bounds = crown_layer_bounds(net, x.double(), threat, intermediate=self.intermediate)
            mid, rad = jacobian_bound(net, bounds, spec.C)
            local = dual_norm(mid.abs() + rad, threat.norm) * (1 + INFLATE)
        return torch.minimum(local, lipschitz_constants(net, spec.C, threat.norm))

    def _bound(self, network: Network, x: Tensor, threat: LpBall, spec: Spec) -> Bounds:
        consts = self.constants(network, x, threat, spec)
        values = spec_values(_float64(network), x, spec)
        return Bounds(values - consts * threat.eps, stats={"lipschitz": consts.float()})
