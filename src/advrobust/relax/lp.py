"""The LP (triangle) relaxation of a ReLU network, solved with HiGHS.

Ehlers 2017, "Formal verification of piece-wise linear feed-forward neural networks"; Salman et
al. 2019, "A convex relaxation barrier to tight robustness verification of neural networks".
Every unstable ReLU is replaced by its triangle, with pre-activation bounds from CROWN; one LP
per sample, whose objective is swapped per spec row. With the same intermediate bounds it is at
least as tight as CROWN (CROWN's bound is one feasible point of the LP's dual).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from advrobust.core._validation import check_float, check_int
from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall
from advrobust.network.graph import Graph
from advrobust.network.ir import Network
from advrobust.relax._encoding import Encoding, check_linear_norm, encode_sample, row_cost
from advrobust.relax.base import Bounder, Bounds
from advrobust.relax.crown import root_bounds
from advrobust.solvers.highs import HighsSolver
from advrobust.solvers.program import SolveStatus

__all__ = ["LPRelaxation"]


class LPRelaxation(Bounder):
    """Triangle-relaxation LP bounds of every spec row (linf and l1 threats).

    The reported lower bound is the larger of the LP's safe dual bound (recomputed in float64
    from HiGHS's row duals, :mod:`advrobust.solvers._safe_bound`; OPTIMAL solves only) and
    CROWN's bound; the LP bounds are in ``stats["lp"]`` and the LP's primal inputs are
    re-evaluated through the model as candidate witnesses.

    Args:
        threads: HiGHS threads.
        time_limit: seconds per LP.
    """

    def __init__(self, *, threads: int = 1, time_limit: float = 60.0) -> None:
        self.threads = check_int(threads, "threads", "LPRelaxation", low=1)
        self.time_limit = check_float(time_limit, "time_limit", "LPRelaxation", low=0.0,
                                      low_open=True, allow_inf=True)

    def _bound(self, network: Network, x: Tensor, threat: LpBall, spec: Spec) -> Bounds:
        return self._relax(network, x, threat, spec)

    def _bound_graph(self, graph: Graph, x: Tensor, threat: LpBall, spec: Spec) -> Bounds:
        return self._relax(graph, x, threat, spec)

    def _relax(self, ir: Network | Graph, x: Tensor, threat: LpBall, spec: Spec) -> Bounds:
        """Chains and graphs alike (``root_bounds`` and ``encode_sample`` read both IRs)."""
        check_linear_norm(threat, "LPRelaxation")
        bounds, crown = root_bounds(ir, x, threat, spec)
        return self._solve(crown, x, spec, lambda s: encode_sample(
            ir, bounds, s, integer=False, threat=threat, x0=x))

    def _solve(self, crown: Tensor, x: Tensor, spec: Spec,
               encode: Callable[[int], Encoding]) -> Bounds:
        """One LP per sample (built by ``encode``), one objective per spec row."""
        n, k = crown.shape
        lp = torch.full((n, k), -math.inf, dtype=torch.float64)
        cand = x.unsqueeze(1).repeat_interleave(k, 1).clone()
        statuses: list[list[str]] = []
        for s in range(n):
            enc = encode(s)
            solver = HighsSolver(enc.program, time_limit=self.time_limit, threads=self.threads)
            row_status = []
            for j in range(k):
                sol = solver.minimize(row_cost(enc, spec.C[s, j]), float(spec.d[s, j]))
                row_status.append(sol.backend_status)
                if sol.status is SolveStatus.OPTIMAL:  # the solver's one gate: a safe bound
                    lp[s, j] = sol.bound
                if sol.x is not None:
                    point = torch.from_numpy(np.asarray(sol.x[enc.inputs]))
                    cand[s, j] = point.reshape(x.shape[1:]).to(x)
            statuses.append(row_status)
        lower = torch.maximum(crown, lp.to(crown))
        return Bounds(lower, candidates=cand,
                      stats={"lp": lp, "crown": crown, "solver_status": statuses})
