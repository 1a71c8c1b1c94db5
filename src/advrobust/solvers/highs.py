"""HiGHS backend (through ``highspy``): one model loaded once, objectives swapped per solve."""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from advrobust._interrupt import held_interrupt
from advrobust.errors import SolverUnavailableError
from advrobust.solvers._safe_bound import safe_lp_bound
from advrobust.solvers.program import Program, Solution, SolveStatus

__all__ = ["DEFAULT_OPTIONS", "HighsSolver", "highs_available"]


def highs_available() -> bool:
    """True if ``highspy`` can be imported."""
    try:
        import highspy  # noqa: F401
    except ImportError:
        return False
    return True


def _import_highspy() -> Any:
    try:
        import highspy
    except ImportError as err:  # pragma: no cover - highspy is a dependency
        raise SolverUnavailableError(
            "The HiGHS solver is needed for LP / MILP methods: pip install highspy") from err
    return highspy


_BANNER_LOCK = threading.Lock()
_banner_done = False


def _new_highs(highspy: Any) -> Any:
    """A silent ``highspy.Highs()``.

    HiGHS prints its copyright banner to the process's standard output (file descriptor 1, from
    C++) when the first solver of the process is constructed, before any option can turn output
    off. A library must not write to the user's stdout, so that one construction runs with fd 1
    pointed at the null device.
    """
    global _banner_done
    with _BANNER_LOCK:
        if _banner_done:
            return highspy.Highs()
        if sys.stdout is not None:
            sys.stdout.flush()
        try:
            saved = os.dup(1)
        except OSError:  # no standard output at all: nothing to protect
            _banner_done = True
            return highspy.Highs()
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 1)
            return highspy.Highs()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(null)
            _banner_done = True


#: HiGHS options set on every model. On verification MILPs (the ``small`` MNIST network) the
#: sub-MIP heuristics (RINS, RENS, root reduced cost) and presolve cost more time than they saved
#: in nodes (an earlier measurement: ~0.9 s -> ~0.55 s CPU per row). Re-checked on 2026-11-26 on
#: one hard row: presolve on 35 s -> 28 s, all heuristics on > 40 s; no setting comes near what
#: branch and bound on ReLU splits does (bench/RESULTS.md, issue 4 section (b); exact/bab.py).
DEFAULT_OPTIONS: dict[str, Any] = {
    "presolve": "off",
    "mip_heuristic_run_rins": False,
    "mip_heuristic_run_rens": False,
    "mip_heuristic_run_root_reduced_cost": False,
}

_STATUS = {
    "kOptimal": SolveStatus.OPTIMAL,
    "kInfeasible": SolveStatus.INFEASIBLE,
    "kUnbounded": SolveStatus.UNBOUNDED,
    "kUnboundedOrInfeasible": SolveStatus.UNBOUNDED,
    "kTimeLimit": SolveStatus.TIME_LIMIT,
    "kIterationLimit": SolveStatus.TIME_LIMIT,
    "kSolutionLimit": SolveStatus.STOPPED,
    "kInterrupt": SolveStatus.INTERRUPTED,
    "kHighsInterrupt": SolveStatus.INTERRUPTED,
    "kObjectiveBound": SolveStatus.STOPPED,
    "kObjectiveTarget": SolveStatus.STOPPED,
}

#: MIP statuses whose dual bound counts (the search stopped on time or on our own callback,
#: so its dual bound is the minimum over the open nodes). Every other status certifies nothing.
_MIP_BOUND_STATUSES = (SolveStatus.OPTIMAL, SolveStatus.TIME_LIMIT, SolveStatus.INTERRUPTED)

#: HiGHS's MIP dual bound is the minimum of node LP objectives solved to a dual feasibility
#: tolerance, not a safe bound; it is lowered by this fraction of the objective's magnitude
#: (sum of |cost_j| max(|lower_j|, |upper_j|) plus |offset|).
_MIP_BOUND_RTOL = 1e-6

#: HiGHS's log line when it gives up on a node's LP and prunes the node unsolved
_DROPPED_NODE = "Declaring node infeasible"


class HighsSolver:
    """A :class:`Program` loaded into HiGHS, minimised for one objective at a time.

    Args:
        program: the variables and constraints (integrality included).
        time_limit: seconds per :meth:`minimize` call.
        threads: HiGHS threads (its global scheduler keeps the first value it is given).
        mip_rel_gap, mip_abs_gap: MIP termination gaps.
        options: further HiGHS options by name (they override the defaults above and
            :data:`DEFAULT_OPTIONS`).
    """

    def __init__(self, program: Program, *, time_limit: float = math.inf, threads: int = 1,
                 mip_rel_gap: float = 1e-6, mip_abs_gap: float = 1e-6,
                 options: Mapping[str, Any] | None = None) -> None:
        highspy = _import_highspy()
        self._h = _new_highs(highspy)
        self._h.silent()
        opts = {"time_limit": float(time_limit), "threads": int(threads),
                "mip_rel_gap": mip_rel_gap, "mip_abs_gap": mip_abs_gap,
                "random_seed": 0, **DEFAULT_OPTIONS, **(options or {})}
        for key, value in opts.items():
            self._h.setOptionValue(key, value)
        self.num_vars = program.num_vars
        self.is_mip = program.is_mip
        self._stop_below = -math.inf
        self._found_below = False
        self._stop_above = math.inf
        self._rejected = ""
        self._load(highspy, program)
        self._pressed = False  # Ctrl-C came during the running solve
        # HiGHS's interrupt checks (older highspy has none: Ctrl-C then waits for the solve)
        self._interruptible = hasattr(self._h, "cbSimplexInterrupt")
        if self._interruptible:
            self._h.cbSimplexInterrupt.subscribe(self._on_check)
            self._h.cbIpmInterrupt.subscribe(self._on_check)
            self._h.cbMipInterrupt.subscribe(self._on_mip_check if self.is_mip
                                             else self._on_check)
        if self.is_mip:
            self._h.cbMipImprovingSolution.subscribe(self._on_incumbent)
        # HiGHS's log, read (never printed) for the one event that voids a MIP dual bound
        # (LP bounds need no such check: they are recomputed from the duals). It costs ~3 ms
        # a MIP solve (the ``small`` MNIST MILP bench: 23.3 -> 23.9 s).
        self._dropped_node = False
        if self.is_mip and hasattr(self._h, "cbLogging"):
            self._h.setOptionValue("output_flag", True)
            self._h.setOptionValue("log_to_console", False)
            self._h.cbLogging.subscribe(self._on_log)

    def _load(self, highspy: Any, program: Program) -> None:
        lo, hi, integer = program.columns()
        a, rlo, rhi = program.matrix()
        # kept for the safe dual bound of LP solves
        self._a, self._row_lo, self._row_hi = a, rlo.copy(), rhi.copy()
        self._col_lo, self._col_hi = lo, hi
        self._cost, self._offset = np.zeros(program.num_vars), 0.0
        self._scale: float | None = 0.0
        self._obj_scale = 1.0  # HiGHS's objective is ours divided by this (a power of two)
        # HiGHS sees x = col_scale * x', rows divided by row_scale (powers of two: exact)
        self._col_scale, self._row_scale, scaled = _equilibrate(a, lo, hi, integer)
        inf = highspy.kHighsInf
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = program.num_vars, program.num_rows
        lp.col_cost_ = np.zeros(program.num_vars)
        lp.col_lower_ = np.where(np.isinf(lo), -inf, lo / self._col_scale)
        lp.col_upper_ = np.where(np.isinf(hi), inf, hi / self._col_scale)
        lp.row_lower_ = np.where(np.isinf(rlo), -inf, rlo / self._row_scale)
        lp.row_upper_ = np.where(np.isinf(rhi), inf, rhi / self._row_scale)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        lp.a_matrix_.start_ = scaled.indptr.astype(np.int32)
        lp.a_matrix_.index_ = scaled.indices.astype(np.int32)
        lp.a_matrix_.value_ = scaled.data.astype(np.float64)
        if self.is_mip:
            kinds = [highspy.HighsVarType.kContinuous, highspy.HighsVarType.kInteger]
            lp.integrality_ = [kinds[int(i)] for i in integer]
        status = self._h.passModel(lp)
        if status != highspy.HighsStatus.kOk and status != highspy.HighsStatus.kWarning:
            # e.g. coefficients beyond HiGHS's limits (extreme weights): every solve then
            # answers ERROR (no bound, no point) instead of raising
            self._rejected = f"HiGHS rejected the model ({status}): coefficients out of range?"

    def _on_log(self, event: Any) -> None:
        # When a node's LP fails with every integer fixed (simplex, then IPM), HiGHS logs
        # this and prunes the node as if it were infeasible: a guess, not a proof, so the
        # dual bound of that search excludes a region nobody bounded (seen with weights ~1e6).
        if _DROPPED_NODE in str(getattr(event, "message", "")):
            self._dropped_node = True

    def _on_incumbent(self, event: Any) -> None:
        if event.data_out.objective_function_value * self._obj_scale < self._stop_below:
            self._found_below = True

    # The interrupt flag is written both ways at every check: HiGHS keeps it across runs (a
    # solve after one that was stopped stopped at once, with no bound).
    def _on_check(self, event: Any) -> None:
        event.data_in.user_interrupt = self._pressed

    def _on_mip_check(self, event: Any) -> None:
        # the bound that will be reported is the dual bound lowered by the MIP slack
        dual = event.data_out.mip_dual_bound * self._obj_scale
        bound = dual - self._mip_slack(abs(dual))
        event.data_in.user_interrupt = (self._pressed or self._found_below
                                        or bound > self._stop_above)

    def _press(self) -> None:
        self._pressed = True

    def _run(self) -> None:
        """``run()`` that Ctrl-C stops within a fraction of a second, the KeyboardInterrupt
        raised once HiGHS has returned.

        The solve runs in this thread with Ctrl-C held back (:func:`held_interrupt`): HiGHS's
        interrupt checks call Python code here, where a held Ctrl-C is noticed and the solve
        told to stop. (highspy's threaded ``startSolve`` / ``wait`` let a KeyboardInterrupt
        escape while its solver thread still ran, which aborted the process at exit, or get
        lost.)
        """
        if not self._interruptible:
            self._h.run()
            return
        self._pressed = False
        with held_interrupt(self._press):
            self._h.run()

    def set_time_limit(self, seconds: float) -> None:
        """Seconds allowed to the next :meth:`minimize` calls."""
        self._h.setOptionValue("time_limit", float(seconds))

    def set_row_bounds(self, rows: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> None:
        """Change the bounds of existing rows (use +-inf to switch a row off)."""
        rows = np.asarray(rows, dtype=np.int32)
        inf = 1e30  # HiGHS treats |bound| >= 1e20 as infinite
        lo = np.clip(np.asarray(lower, dtype=np.float64), -inf, inf)
        hi = np.clip(np.asarray(upper, dtype=np.float64), -inf, inf)
        self._row_lo[rows] = np.where(lo <= -inf, -np.inf, lo)
        self._row_hi[rows] = np.where(hi >= inf, np.inf, hi)
        scale = self._row_scale[rows]
        self._h.changeRowsBounds(rows.size, rows,
                                 np.where(lo <= -inf, -inf, lo / scale),
                                 np.where(hi >= inf, inf, hi / scale))

    def minimize(self, cost: np.ndarray, offset: float = 0.0,
                 stop_below: float = -math.inf, stop_above: float = math.inf) -> Solution:
        """Minimise ``cost @ x + offset``.

        Args:
            cost: (num_vars,) objective coefficients.
            offset: constant added to the objective.
            stop_below: MIP only: stop as soon as an incumbent with objective below this value
                is found (status INTERRUPTED, the incumbent returned).
            stop_above: MIP only: stop as soon as the dual bound exceeds this value (status
                INTERRUPTED, the bound returned). Use a fresh solver per objective with it: the
                dual bound HiGHS reports to callbacks early in a re-solve can be the previous
                solve's.

        Note:
            HiGHS's own ``objective_bound`` cutoff is deliberately not used: with it, HiGHS
            1.15 reported "Optimal" with objective values above the true minimum on our
            verification MILPs (an unsound lower bound).

        Returns:
            The :class:`Solution`; solver failures come back as a status, never raised.
        """
        if self._rejected:
            return Solution(SolveStatus.ERROR, math.inf, -math.inf, None, self._rejected, 0.0)
        h = self._h
        self._cost, self._offset = np.asarray(cost, dtype=np.float64).copy(), float(offset)
        self._scale = self._objective_scale()
        # the objective HiGHS sees is divided by a power of two (exact) that brings its
        # largest cost near 1: its dual feasibility tolerance is absolute, and on networks
        # with weights ~1e6 (costs ~1e19) HiGHS 1.16 declared node LPs infeasible and then
        # ran far past its time limit in its node queue (bench/RESULTS.md, issue 10, session 26)
        scaled_cost = self._cost * self._col_scale
        self._obj_scale = float(_power_of_two(np.array([np.abs(scaled_cost).max(initial=0.0)]))[0])
        h.changeColsCost(self.num_vars, np.arange(self.num_vars, dtype=np.int32),
                         scaled_cost / self._obj_scale)
        h.changeObjectiveOffset(float(offset) / self._obj_scale)
        self._stop_below, self._found_below = stop_below, False
        self._stop_above = stop_above
        self._dropped_node = False
        start = time.perf_counter()
        try:
            self._run()
        except Exception as err:  # noqa: BLE001 - a solver crash is reported, never raised
            return Solution(SolveStatus.ERROR, math.inf, -math.inf, None, repr(err),
                            time.perf_counter() - start)
        return self._read(time.perf_counter() - start)

    def _read(self, seconds: float) -> Solution:
        h = self._h
        name = h.modelStatusToString(h.getModelStatus())
        raw = str(h.getModelStatus()).split(".")[-1]
        status = _STATUS.get(raw, SolveStatus.ERROR)
        info = h.getInfo()
        sol = h.getSolution()
        has_x = bool(sol.value_valid) and len(sol.col_value) == self.num_vars
        x = np.asarray(sol.col_value, dtype=np.float64) * self._col_scale if has_x else None
        objective = float(info.objective_function_value) * self._obj_scale if has_x else math.inf
        if self._dropped_node:
            name += " (HiGHS pruned a node it could not solve: no bound)"
            if status is SolveStatus.INFEASIBLE:  # not proved either
                return Solution(SolveStatus.ERROR, math.inf, -math.inf, None, name, seconds)
        if status is SolveStatus.INFEASIBLE:  # no feasible point: drop whatever HiGHS left
            if not self.is_mip and not self._infeasibility_proved():
                # an LP's "infeasible" counts only with a Farkas certificate that checks
                # in float64; without one it proves nothing (no bound, no point)
                return Solution(SolveStatus.ERROR, math.inf, -math.inf, None,
                                f"{name} (no Farkas certificate: not a proof)", seconds)
            return Solution(status, math.inf, math.inf, None, name, seconds)
        bound = self._mip_bound(status, info, objective) if self.is_mip \
            else self._lp_bound(status, sol)
        if self._dropped_node:  # the incumbent is still a point; the bound proves nothing
            bound = -math.inf
            if status is SolveStatus.OPTIMAL:
                status = SolveStatus.STOPPED
        if math.isnan(bound):
            bound = -math.inf
        return Solution(status, objective, bound, x, name, seconds)

    def _lp_bound(self, status: SolveStatus, sol: Any) -> float:
        """The one gate for LP bounds: a safe dual bound from the row duals, OPTIMAL only."""
        if status is not SolveStatus.OPTIMAL or not bool(sol.dual_valid) \
                or len(sol.row_dual) != self._a.shape[0]:
            return -math.inf
        # the scaled rows' multipliers, as multipliers of the original rows (exact)
        y = np.asarray(sol.row_dual, dtype=np.float64) * (self._obj_scale / self._row_scale)
        return safe_lp_bound(self._a, self._row_lo, self._row_hi, self._col_lo, self._col_hi,
                             self._cost, self._offset, y)

    def _infeasibility_proved(self) -> bool:
        """Whether HiGHS's dual ray proves the LP infeasible, checked like a safe bound: for
        the zero objective, a lower bound above 0 from any multipliers means no point exists
        (Neumaier & Shcherbina 2004)."""
        try:
            _, has_ray, ray = self._h.getDualRay()
        except Exception:  # noqa: BLE001 - an older highspy or no ray: nothing proved
            return False
        if not has_ray or len(ray) != self._a.shape[0]:
            return False
        y = np.asarray(ray, dtype=np.float64) / self._row_scale
        zero = np.zeros(self.num_vars)
        return any(safe_lp_bound(self._a, self._row_lo, self._row_hi, self._col_lo, self._col_hi,
                                 zero, 0.0, sign * y) > 0 for sign in (1.0, -1.0))

    def _objective_scale(self) -> float | None:
        """``sum |cost_j| max(|lower_j|, |upper_j|)``, or None if a costed column is unbounded."""
        used = self._cost != 0
        if bool(np.any(used & ~(np.isfinite(self._col_lo) & np.isfinite(self._col_hi)))):
            return None
        mag = np.maximum(np.abs(self._col_lo[used]), np.abs(self._col_hi[used]))
        return float(np.abs(self._cost[used]) @ mag)

    def _mip_slack(self, fallback: float) -> float:
        """``_MIP_BOUND_RTOL`` times the objective's magnitude (``fallback`` when unknown)."""
        scale = self._scale if self._scale is not None else fallback
        return _MIP_BOUND_RTOL * (self._obj_scale + scale + abs(self._offset))

    def _mip_bound(self, status: SolveStatus, info: Any, objective: float) -> float:
        """The one gate for MIP bounds: certifying statuses only, lowered by a relative slack."""
        if status not in _MIP_BOUND_STATUSES:
            return -math.inf
        bound = float(info.mip_dual_bound) * self._obj_scale
        if status is SolveStatus.OPTIMAL:
            bound = min(bound, objective)
        if not math.isfinite(bound):
            return bound if bound == math.inf else -math.inf
        return bound - self._mip_slack(abs(bound))


def _power_of_two(v: np.ndarray) -> np.ndarray:
    """The largest power of two not above each positive finite ``v`` (1 elsewhere), within
    ``2^+-_MAX_EXP``."""
    ok = np.isfinite(v) & (v > 0)
    _, exp = np.frexp(np.where(ok, v, 1.0))  # v = m 2^exp, m in [0.5, 1)
    return np.where(ok, np.ldexp(1.0, np.clip(exp - 1, -_MAX_EXP, _MAX_EXP)), 1.0)


def _equilibrate(a: Any, lower: np.ndarray, upper: np.ndarray, integer: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, Any]:
    """Power-of-two column and row scales of a program, and the scaled matrix.

    A continuous column is scaled by its bounds' magnitude, then each row by its largest
    coefficient, so that HiGHS sees values and coefficients near 1 whatever the network's
    weights: its tolerances are absolute, and on a verification program with weights ~1e7
    and activations ~1e13 unscaled, HiGHS 1.16 reported "optimal" MIP values ~1e13 above the
    true minimum (``tests/exact/test_extreme_weights.py``). Powers of two make the scaled
    program exactly the original one (values and the safe bound's multipliers convert without
    rounding; a coefficient scaled into the subnormals would not, but the safe bound is
    computed on the original program from any multipliers, so it stays a bound).
    """
    import scipy.sparse as sp

    magnitude = np.maximum(np.abs(lower), np.abs(upper))
    cols = np.where(np.asarray(integer, dtype=bool), 1.0, _power_of_two(magnitude))
    scaled = sp.csr_matrix(a @ sp.diags(cols))
    if scaled.shape[0]:
        largest = np.asarray(abs(scaled).max(axis=1).todense()).ravel()
    else:
        largest = np.zeros(0)
    rows = _power_of_two(largest)
    scaled = sp.csr_matrix(sp.diags(1.0 / rows) @ scaled)
    return cols, rows, scaled


#: Largest exponent of a scale factor (keeps scaled values far from over- and underflow).
_MAX_EXP = 400
