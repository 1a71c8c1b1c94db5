"""The ReLU op: forward, intervals, the linear relaxation and the LP / MILP encoding.

The relaxation is the triangle (Ehlers 2017; Wong & Kolter 2018): for an unstable neuron with
pre-activation bounds ``l < 0 < u``, ``relu(z) <= u (z - l) / (u - l)`` and
``relu(z) >= alpha z`` for any ``alpha`` in [0, 1]. The encoding is the big-M formulation of
Tjeng et al. 2019 with the tight bounds as the constants; relaxing its binary to [0, 1] gives
exactly the triangle, so the LP and the MILP differ only in integrality.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from advrobust.core.threat import Norm
from advrobust.network.ops import Op

if TYPE_CHECKING:
    from advrobust.network.graph.base import GraphOp
    from advrobust.solvers.program import Program

__all__ = ["ReLUOp", "ReluRelaxation"]


class ReluRelaxation:
    """Slopes and intercepts of the linear bounds ``low * z <= relu(z) <= up * z + up_b``."""

    def __init__(self, low: Tensor, up: Tensor, up_b: Tensor) -> None:
        self.low, self.up, self.up_b = low, up, up_b


class ReLUOp(Op):
    """Elementwise ``max(z, 0)``: exact in floating point, 1-Lipschitz in every lp norm."""

    exact = True
    nonlinear = True
    bounded_slopes = True

    def __init__(self, shape: tuple[int, ...], name: str) -> None:
        super().__init__(shape, shape, name)

    @property
    def patchable(self) -> bool:
        return len(self.in_shape) == 3

    def patch_relaxation(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        rel = self.relaxation(lo, hi)
        return rel.low, rel.up - rel.low, rel.up_b

    def l2_estimate(self, v: Tensor | None, init: Callable[[tuple[int, ...]], Tensor],
                    iterations: int) -> tuple[Tensor | None, Tensor | None]:
        return None, None  # 1-Lipschitz

    def forward(self, x: Tensor) -> Tensor:
        return x.clamp_min(0)

    def interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        return lo.clamp_min(0), hi.clamp_min(0)

    def operator_norm(self, norm: Norm) -> float:
        return 1.0

    def jacobian_backward(self, mid: Tensor, rad: Tensor, lo: Tensor, hi: Tensor
                          ) -> tuple[Tensor, Tensor]:
        """The derivative is 1 (active), 0 (inactive) or anything in [0, 1] (unstable)."""
        lo, hi = lo.unsqueeze(1), hi.unsqueeze(1)
        on = lo >= 0
        unstable = (lo < 0) & (hi > 0)
        g_lo = torch.where(unstable, (mid - rad).clamp(max=0), (mid - rad) * on)
        g_hi = torch.where(unstable, (mid + rad).clamp(min=0), (mid + rad) * on)
        return (g_hi + g_lo) / 2, (g_hi - g_lo) / 2

    def to_graph_op(self) -> GraphOp:
        from advrobust.network.graph.ops.chain import ReLUAdapter

        return ReLUAdapter(self)

    @staticmethod
    def relaxation(lo: Tensor, hi: Tensor, alpha: Tensor | None = None) -> ReluRelaxation:
        """The triangle relaxation for pre-activation bounds ``lo <= z <= hi`` (N, *shape).

        Args:
            lo, hi: pre-activation bounds.
            alpha: lower slopes of unstable neurons in [0, 1] (broadcastable); None for the
                adaptive choice of CROWN (1 where ``hi > -lo``, else 0).

        Returns:
            Slopes of the lower bound, slopes and intercepts of the upper bound.
        """
        active = lo >= 0
        unstable = (lo < 0) & (hi > 0)
        lo_c, hi_c = lo.clamp(max=0), hi.clamp(min=0)
        denom = torch.where(unstable, hi_c - lo_c, torch.ones_like(hi_c))
        slope = torch.where(unstable, hi_c / denom, active.to(lo.dtype))
        up_b = torch.where(unstable, -slope * lo_c, torch.zeros_like(lo))
        if alpha is None:
            low_unstable = (hi > -lo).to(lo.dtype)
        else:
            low_unstable = alpha.clamp(0, 1)
        low = torch.where(unstable, low_unstable, active.to(lo.dtype))
        return ReluRelaxation(low, slope, up_b)

    def backward(self, a: Tensor, lo: Tensor, hi: Tensor, alpha: Tensor | None = None
                 ) -> tuple[Tensor, Tensor]:
        """Lower-bound ``<a, relu(z)>`` by ``<a', z> + c`` over the relaxation.

        Args:
            a: coefficients (N, K, *shape).
            lo, hi: pre-activation bounds (N, *shape).
            alpha: lower slopes (N, K, *shape) or broadcastable, or None (adaptive).

        Returns:
            ``a'`` (N, K, *shape) and the constant ``c`` (N, K).
        """
        rel = self.relaxation(lo.unsqueeze(1), hi.unsqueeze(1), alpha)
        neg = a.clamp(max=0)
        # pos * low + neg * up == a * low + neg * (up - low): fewer passes over (N, K, n)
        out = torch.addcmul(a * rel.low, neg, rel.up - rel.low)
        up_b = rel.up_b.flatten(2).transpose(1, 2)  # (N, n, 1): one intercept per neuron
        const = torch.matmul(neg.flatten(2), up_b).squeeze(-1)
        return out, const

    def encode(self, program: Program, z: np.ndarray, lo: np.ndarray, hi: np.ndarray,
               integer: bool) -> np.ndarray:
        """Add ``a = relu(z)`` for one sample to ``program``; return the columns of ``a``.

        Stable neurons get no new constraint (active: ``a`` is ``z``; inactive: a column fixed
        at 0). Unstable ones get the big-M rows with a binary ``d`` (continuous in [0, 1] when
        ``integer`` is False, which is the triangle relaxation):
        ``a >= z``, ``a <= z - l (1 - d)``, ``a <= u d``, ``0 <= a <= u``.

        Args:
            program: the program to extend.
            z: (n,) columns of the pre-activations.
            lo, hi: (n,) finite pre-activation bounds.
            integer: MILP (binary ``d``) or LP (``d`` in [0, 1]).
        """
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            raise ValueError(f"{self.name}: big-M encoding needs finite pre-activation bounds")
        out = z.copy()
        dead = hi <= 0
        out[dead] = program.add_vars(np.zeros(int(dead.sum())), np.zeros(int(dead.sum())))
        unstable = np.flatnonzero((lo < 0) & (hi > 0))
        m = unstable.size
        if m == 0:
            return out
        l_u, u_u = lo[unstable], hi[unstable]
        a = program.add_vars(np.zeros(m), u_u)
        d = program.add_vars(np.zeros(m), np.ones(m), integer=integer)
        import scipy.sparse as sp

        eye = sp.identity(m, format="csr")
        cols = np.concatenate([a, z[unstable], d])
        # a - z >= 0
        program.add_rows(sp.hstack([eye, -eye, 0 * eye]), cols, 0.0, np.inf)
        # a - z - l d <= -l
        program.add_rows(sp.hstack([eye, -eye, sp.diags(-l_u)]), cols, -np.inf, -l_u)
        # a - u d <= 0
        program.add_rows(sp.hstack([eye, 0 * eye, sp.diags(-u_u)]), cols, -np.inf, 0.0)
        out[unstable] = a
        return out
