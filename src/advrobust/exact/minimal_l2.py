"""The exact minimal l2 distortion of one sample: a MILP with outer-approximation cuts of the norm.

``d*_2(x0) = min { ||x - x0||_2 : x in box, (C f(x) + d)_k <= 0 for some k }`` is a mixed-integer
*quadratic* program; HiGHS solves MILPs only. ``||z||_2 = max_{||u||_2 = 1} <u, z>``, so every
unit vector ``u`` gives a valid linear under-estimator ``t >= <u, x - x0>`` of the distance, and
the MILP ``min t`` over finitely many of them is a relaxation of the MIQP: its proven (dual)
bound is a sound **lower** bound on ``d*_2``. Its optimal point ``x_k`` is a point of the
network's graph with a violated row; its true distance, once the real model confirms that the
point is adversarial, is a sound **upper** bound. The cut at ``u = (x_k - x0) / ||x_k - x0||``
removes ``x_k`` unless it is already optimal (Kelley's cutting-plane / outer-approximation
method, Duran & Grossmann 1986), and the loop stops when the bracket closes to ``tol``.
The first cuts ``+-e_i`` make the first solve the linf problem.

Without the optional SCIP extra this is the only l2 solver; it converges fast in low input
dimension and returns the bracket it reached on a time-out in high dimension.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from advrobust.relax._encoding import Encoding
from advrobust.solvers.highs import HighsSolver
from advrobust.solvers.program import SolveStatus

__all__ = ["KelleyL2", "model_checked"]

#: Outward scalings tried when the solver's point sits on the decision boundary.
_PUSH = (0.0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3)


def model_checked(x0: Tensor, point: Tensor, is_adversarial: Callable[[Tensor], Tensor],
                  lo: float, hi: float) -> Tensor | None:
    """``point`` or the first slightly pushed-out copy ``x0 + (1 + s)(point - x0)`` (clipped to
    the box) that the real model classifies as adversarial; None if none is."""
    delta = point - x0
    cands = torch.stack([(x0 + (1 + s) * delta).clamp(lo, hi) for s in _PUSH])
    ok = is_adversarial(cands)
    if not bool(ok.any()):
        return None
    return cands[int(ok.to(torch.int64).argmax())]


class KelleyL2:
    """Outer-approximation loop for one sample and one spec row.

    Args:
        enc: the network's MILP encoding on the search box, with the row's switch rows.
        x0: (d,) float64 clean input.
        time_limit: seconds for this row.
        threads: HiGHS threads.
        tol: absolute bracket width at which the loop stops.
    """

    def __init__(self, enc: Encoding, x0: np.ndarray, time_limit: float, threads: int,
                 tol: float) -> None:
        self.enc, self.x0 = enc, x0
        self.time_limit, self.threads, self.tol = time_limit, threads, tol
        prog = enc.program
        self.t = prog.add_vars(np.zeros(1), np.full(1, np.inf))
        n = x0.size
        eye = np.eye(n)
        self._cut(np.vstack([eye, -eye]))

    def _cut(self, u: np.ndarray) -> None:
        """Rows ``t - <u_k, x> >= -<u_k, x0>``."""
        cols = np.concatenate([self.enc.inputs, self.t])
        block = np.hstack([-u, np.ones((u.shape[0], 1))])
        self.enc.program.add_rows(block, cols, -(u @ self.x0), np.inf)

    def run(self, row: tuple[np.ndarray, float, float],
            check: Callable[[np.ndarray], tuple[float, np.ndarray] | None],
            start_bracket: tuple[float, float] = (0.0, math.inf)
            ) -> tuple[float, float, np.ndarray | None, str, list[dict[str, Any]]]:
        """Solve; ``check(x)`` returns (distance, point) of a model-checked adversarial point.

        ``start_bracket``: ``(floor, incumbent)``, a proven lower bound on this row's distance
        and the distance of a model-checked point found before (another row's, a warm start);
        the loop stops as soon as the row cannot beat the incumbent by more than ``tol``.

        Returns:
            ``(lower, upper, x_best, status, log)``; ``x_best`` is None unless this row found
            a point closer than the incumbent.
        """
        start = time.perf_counter()
        rows, lo_b, hi_b = row
        cost = np.zeros(self.enc.program.num_vars)
        cost[self.t] = 1.0
        (lower, upper), best = start_bracket, None
        if math.isfinite(upper):  # only a closer point matters: prune the rest of the search
            self.enc.program.add_rows(np.ones((1, 1)), self.t, -np.inf, upper)
        log: list[dict[str, Any]] = []
        while True:
            if upper - lower <= self.tol:  # closed by the start bracket or the last solve
                return lower, upper, best, "optimal", log
            left = self.time_limit - (time.perf_counter() - start)
            if left <= 0:
                return lower, upper, best, "time_limit", log
            solver = HighsSolver(self.enc.program, time_limit=left, threads=self.threads)
            solver.set_row_bounds(rows, np.array([lo_b]), np.array([hi_b]))
            sol = solver.minimize(np.pad(cost, (0, self.enc.program.num_vars - cost.size)))
            log.append({"cuts": self.enc.program.num_rows, "status": sol.status.value,
                        "bound": sol.bound, "objective": sol.objective})
            if sol.status is SolveStatus.INFEASIBLE:
                return math.inf, upper, best, "robust", log
            lower = max(lower, sol.bound if math.isfinite(sol.bound) else 0.0)
            if sol.x is None or sol.status is not SolveStatus.OPTIMAL:
                status = "error" if sol.status is SolveStatus.ERROR else "time_limit"
                return lower, upper, best, status, log
            x = sol.x[self.enc.inputs]
            found = check(x)
            if found is not None and found[0] < upper:
                upper, best = found
            if upper - lower <= self.tol:
                continue
            z = x - self.x0
            norm = float(np.linalg.norm(z))
            if norm - sol.objective <= 1e-9 * max(1.0, norm):
                # the relaxation's optimum already has its true distance: no cut removes it;
                # the gap left is the model check's (a boundary point the model rounds away)
                return lower, upper, best, "time_limit" if best is None else "optimal", log
            self._cut((z / norm)[None, :])


def solve_sample_l2(model: Any, enc: Encoding, x0: Tensor, spec_c: Tensor, spec_d: Tensor,
                    crown: Tensor, lo: float, hi: float, time_limit: float, threads: int,
                    tol: float, solver: str = "highs",
                    start_bracket: tuple[float, float, Tensor | None] = (0.0, math.inf, None)
                    ) -> tuple[float, float, Tensor, str, list[Any]]:
    """Minimal l2 distortion of one sample over every spec row (the rows CROWN proves over the
    search box are skipped): outer-approximation cuts with HiGHS, or the MIQP with SCIP
    (``solver="scip"``). ``start_bracket``: ``(floor, distance, point)``, a proven lower bound
    on the distortion and a model-checked adversarial point with its distance (None, inf: no
    point): every row starts from that bracket and stops once it cannot beat the best point
    by more than ``tol``. Returns ``(distance, lower, x_adv, status, log)``."""
    start = time.perf_counter()
    floor = start_bracket[0]
    c = spec_c.detach().cpu().double().numpy()
    d = spec_d.detach().cpu().double().numpy()
    switch = enc.program.add_rows(c, enc.outputs, -np.inf, np.inf)
    x0_np = x0.detach().cpu().double().numpy().ravel()
    kelley = KelleyL2(enc, x0_np, time_limit, threads, tol) if solver == "highs" else None
    best, best_x = start_bracket[1], x0 if start_bracket[2] is None else start_bracket[2]
    lower, status, log = math.inf, "robust", list[Any]()

    for j in np.argsort(crown.cpu().numpy()).tolist():
        if float(crown[j]) > 0:
            continue  # no point of the search box violates this row

        def check(x: np.ndarray, j: int = j) -> tuple[float, np.ndarray] | None:
            point = torch.from_numpy(x).to(x0).reshape(x0.shape)

            def adversarial(cands: Tensor) -> Tensor:
                with torch.no_grad():
                    out = model(cands)
                return (out @ spec_c[j].to(out) + spec_d[j].to(out)) <= 0

            hit = model_checked(x0, point, adversarial, lo, hi)
            if hit is None:
                return None
            dist = float((hit.double() - x0.double()).norm())
            return dist, hit.detach().cpu().double().numpy()

        left = max(time_limit - (time.perf_counter() - start), 0.0)
        if kelley is None:
            low, up, point, row_status = _scip_row(enc, x0_np, c[j], -float(d[j]), left,
                                                   threads, check)
            low = max(low, floor)
            row_log: list[dict[str, Any]] = []
        else:
            kelley.time_limit = left
            low, up, point, row_status, row_log = kelley.run(
                (switch[j:j + 1], -math.inf, -float(d[j])), check, (floor, best))
        log.append({"row": j, "status": row_status, "lower": low, "upper": up,
                    "iterations": row_log})
        lower = min(lower, low)
        if point is not None and up < best:
            best, best_x = up, torch.from_numpy(point).to(x0).reshape(x0.shape)
        if row_status in ("time_limit", "error"):
            status = row_status
    if math.isfinite(best) and status == "robust":
        status = "optimal"
    return best, min(lower, best), best_x, status, log


def _scip_row(enc: Encoding, x0: np.ndarray, c: np.ndarray, upper: float, left: float,
              threads: int, check: Callable[[np.ndarray], tuple[float, np.ndarray] | None]
              ) -> tuple[float, float, np.ndarray | None, str]:
    from advrobust.exact._scip import solve_row_miqp

    low, _, x, status = solve_row_miqp(enc, x0, (c, upper), left, threads)
    found = None if x is None else check(x)
    if found is None:
        return low, math.inf, None, "time_limit" if status == "optimal" else status
    return low, found[0], found[1], status
