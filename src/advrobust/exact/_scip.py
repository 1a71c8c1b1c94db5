"""The minimal l2 distortion as a mixed-integer quadratic program, solved by SCIP (optional).

``min s`` subject to the network's big-M MILP encoding, one violated spec row and the convex
quadratic constraint ``||x - x0||_2^2 <= s`` (the course's MIQP formulation). Needs the
``pyscipopt`` package (``pip install 'advrobust[scip]'``). The square root of SCIP's dual bound is
the lower bound; its point, once the real model confirms it is adversarial, the upper bound.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from advrobust.errors import SolverUnavailableError
from advrobust.relax._encoding import Encoding

__all__ = ["import_scip", "solve_row_miqp"]


def import_scip() -> Any:
    """``pyscipopt``, or a :class:`SolverUnavailableError` naming the extra to install."""
    try:
        import pyscipopt
    except ImportError:
        raise SolverUnavailableError(
            "MinimalDistortion(norm='l2', solver='scip') needs the optional SCIP solver: "
            "pip install 'advrobust[scip]' (the pyscipopt package). Without it use "
            "solver='highs' (outer-approximation cuts).") from None
    return pyscipopt


def solve_row_miqp(enc: Encoding, x0: np.ndarray, row: tuple[np.ndarray, float],
                   time_limit: float, threads: int
                   ) -> tuple[float, float, np.ndarray | None, str]:
    """One spec row: ``(lower, objective, x, status)`` with distances (not squared).

    Args:
        enc: the network encoding (its rows and columns are copied into a SCIP model).
        x0: (d,) clean input.
        row: ``(c, upper)``: the violated-row constraint ``c @ outputs <= upper``.
        time_limit: seconds.
        threads: unused by SCIP's sequential solver; kept for a uniform signature.
    """
    scip = import_scip()
    model = scip.Model()
    model.hideOutput()
    model.setParam("limits/time", max(float(time_limit), 1e-3))
    model.setParam("numerics/feastol", 1e-7)
    lo, hi, integer = enc.program.columns()
    cols = [model.addVar(lb=None if math.isinf(a) else float(a),
                         ub=None if math.isinf(b) else float(b),
                         vtype="B" if flag and a >= 0 and b <= 1 else ("I" if flag else "C"))
            for a, b, flag in zip(lo, hi, integer, strict=True)]
    a, rlo, rhi = enc.program.matrix()
    for r in range(a.shape[0]):
        start, end = a.indptr[r], a.indptr[r + 1]
        expr = scip.quicksum(float(v) * cols[int(j)]
                             for j, v in zip(a.indices[start:end], a.data[start:end],
                                             strict=True))
        if math.isfinite(rlo[r]) and math.isfinite(rhi[r]) and rlo[r] == rhi[r]:
            model.addCons(expr == float(rlo[r]))
            continue
        if math.isfinite(rlo[r]):
            model.addCons(expr >= float(rlo[r]))
        if math.isfinite(rhi[r]):
            model.addCons(expr <= float(rhi[r]))
    c, upper = row
    model.addCons(scip.quicksum(float(v) * cols[int(j)]
                                for j, v in zip(enc.outputs, c, strict=True) if v != 0)
                  <= float(upper))
    s = model.addVar(lb=0.0, ub=None, vtype="C")
    xs = [cols[int(j)] for j in enc.inputs]
    model.addCons(scip.quicksum((xi - float(v)) * (xi - float(v))
                                for xi, v in zip(xs, x0, strict=True)) <= s)
    model.setObjective(s, "minimize")
    model.optimize()
    status = model.getStatus()
    if status == "infeasible":
        return math.inf, math.inf, None, "robust"
    bound = max(float(model.getDualbound()), 0.0)
    lower = math.sqrt(bound) if math.isfinite(bound) else 0.0
    if model.getNSols() == 0:
        return lower, math.inf, None, "time_limit"
    sol = model.getBestSol()
    x = np.array([sol[v] for v in xs], dtype=np.float64)
    objective = float(np.linalg.norm(x - x0))
    return lower, objective, x, "optimal" if status == "optimal" else "time_limit"
