"""Exact verification of ReLU networks as a mixed-integer linear program, solved with HiGHS.

Tjeng, Xiao & Tedrake 2019, "Evaluating robustness of neural networks with mixed integer
programming": every unstable ReLU gets one binary and the big-M rows built from tight
pre-activation bounds (here from CROWN, optionally tightened by LPs); stable ReLUs need none.
One program per sample, solved per spec row; rows CROWN already proves are
skipped; a solve stops at the first incumbent below zero (a counterexample).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from advrobust.core._validation import check_bool, check_float, check_int
from advrobust.core.result import VERIFY_TOLERANCE
from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall
from advrobust.network.ir import Network
from advrobust.network.relu import ReLUOp
from advrobust.relax._encoding import Encoding, check_linear_norm, encode_sample, row_cost
from advrobust.relax._rounding import sound_interval
from advrobust.relax.base import Bounder, Bounds
from advrobust.relax.crown import crown_layer_bounds, crown_lower
from advrobust.relax.ibp import LayerBounds
from advrobust.solvers.highs import HighsSolver
from advrobust.solvers.program import Solution, SolveStatus

__all__ = ["MILP", "lp_tighten_bounds"]


@dataclass
class _SampleRun:
    """Per-sample bookkeeping of the row solves."""

    lower: Tensor
    points: dict[int, Tensor] = field(default_factory=dict)
    rows: list[dict[str, object]] = field(default_factory=list)


def lp_tighten_bounds(network: Network, bounds: LayerBounds, index: int, threat: LpBall,
                      x0: Tensor, threads: int = 1) -> LayerBounds:
    """Tighten the pre-activation bounds of every unstable ReLU of one sample by LPs.

    Layer by layer, each unstable neuron's bounds are the min / max of its pre-activation over
    the triangle relaxation of the earlier layers (Salman et al. 2019's LP-all). Returns new
    layer bounds for sample ``index`` only (batch of one).
    """
    bounds = [(lo[index:index + 1].clone(), hi[index:index + 1].clone()) for lo, hi in bounds]
    for i, op in enumerate(network.ops):
        if isinstance(op, ReLUOp):
            prefix = Network(network.ops[:i], network.input_shape)
            enc = encode_sample(prefix, bounds[:i + 1], 0, integer=False, threat=threat,
                                x0=x0[index:index + 1])
            solver = HighsSolver(enc.program, threads=threads)
            lo, hi = bounds[i][0].flatten(), bounds[i][1].flatten()
            for j in ((lo < 0) & (hi > 0)).nonzero().flatten().tolist():
                cost = np.zeros(enc.program.num_vars)
                cost[enc.outputs[j]] = 1.0
                low, high = solver.minimize(cost), solver.minimize(-cost)
                if low.status is SolveStatus.OPTIMAL:
                    lo[j] = max(float(lo[j]), low.bound)
                if high.status is SolveStatus.OPTIMAL:
                    hi[j] = min(float(hi[j]), -high.bound)
            bounds[i] = (lo.reshape(bounds[i][0].shape), hi.reshape(bounds[i][1].shape))
        bounds[i + 1] = sound_interval(op, *bounds[i])
    return bounds


class MILP(Bounder):
    """Exact worst-case value of every spec row (linf and l1 threats), or the bracket reached.

    Args:
        time_limit: seconds per sample (all its rows together).
        threads: HiGHS threads.
        lp_tighten: tighten pre-activation bounds with LPs before building the MILP.
        early_stop: stop a sample at its first row with an incumbent below zero.
        skip_verified: skip rows whose CROWN lower bound already exceeds the tolerance.
        solver_options: extra HiGHS options by name (e.g. ``{"presolve": "on"}``).
        decide_only: stop a row's solve once its sign is decided (dual bound above the
            verification tolerance, or an incumbent below zero) instead of closing the gap;
            the lower bounds are then valid but not the exact minima.
    """

    def __init__(self, *, time_limit: float = 60.0, threads: int = 1, lp_tighten: bool = False,
                 early_stop: bool = True, skip_verified: bool = True,
                 decide_only: bool = False,
                 solver_options: Mapping[str, Any] | None = None) -> None:
        self.time_limit = check_float(time_limit, "time_limit", "MILP", low=0.0, low_open=True,
                                      allow_inf=True)
        self.threads = check_int(threads, "threads", "MILP", low=1)
        self.lp_tighten = check_bool(lp_tighten, "lp_tighten", "MILP")
        self.early_stop = check_bool(early_stop, "early_stop", "MILP")
        self.skip_verified = check_bool(skip_verified, "skip_verified", "MILP")
        self.decide_only = check_bool(decide_only, "decide_only", "MILP")
        self.solver_options = solver_options

    def _bound(self, network: Network, x: Tensor, threat: LpBall, spec: Spec) -> Bounds:
        check_linear_norm(threat, "MILP")
        with torch.no_grad():
            bounds = crown_layer_bounds(network, x, threat, rounding=True)
            crown = crown_lower(network, x, threat, spec.C, spec.d, bounds=bounds,
                                rounding=True)
            clean = spec.apply(network.forward(x))
        lower = crown.clone()
        cand = x.unsqueeze(1).repeat_interleave(spec.num_rows, 1).clone()
        samples = []
        for s in range(x.shape[0]):
            run = self._solve_sample(network, bounds, s, threat, x, spec, crown[s], clean[s])
            lower[s] = run.lower
            for j, p in run.points.items():
                cand[s, j] = p.reshape(x.shape[1:]).to(x)
            samples.append(run.rows)
        return Bounds(lower, candidates=cand, stats={"crown": crown, "samples": samples})

    def _solve_sample(self, network: Network, bounds: LayerBounds, s: int, threat: LpBall,
                      x: Tensor, spec: Spec, crown: Tensor, clean: Tensor) -> _SampleRun:
        run = _SampleRun(lower=crown.clone())
        todo = [j for j in clean.argsort().tolist()
                if not (self.skip_verified and float(crown[j]) > VERIFY_TOLERANCE)]
        if not todo:
            return run
        start = time.perf_counter()
        if self.lp_tighten:
            bounds = lp_tighten_bounds(network, bounds, s, threat, x, self.threads)
            s_local, x_local = 0, x[s:s + 1]
        else:
            s_local, x_local = s, x
        enc = encode_sample(network, bounds, s_local, integer=True, threat=threat, x0=x_local)
        for j in todo:
            left = self.time_limit - (time.perf_counter() - start)
            if left <= 0:
                run.rows.append({"row": j, "status": "skipped (time limit)"})
                continue
            # A fresh HiGHS model per row: re-solving one model with a new objective let
            # state of the previous solve leak into callbacks (see HighsSolver.minimize).
            solver = HighsSolver(enc.program, time_limit=left, threads=self.threads,
                                 options=self.solver_options)
            sol = solver.minimize(row_cost(enc, spec.C[s, j]), float(spec.d[s, j]),
                                  stop_below=-1e-6 if self.early_stop else -math.inf,
                                  stop_above=2 * VERIFY_TOLERANCE if self.decide_only
                                  else math.inf)
            self._record(run, j, sol, enc)
            if self.early_stop and sol.x is not None and self._violates(
                    network, enc, sol, spec, s, j):
                break
        return run

    @staticmethod
    def _record(run: _SampleRun, j: int, sol: Solution, enc: Encoding) -> None:
        if sol.status is SolveStatus.INFEASIBLE:
            # The program encodes a superset of a non-empty set (it holds the clean input):
            # "infeasible" is numerical trouble, never a proof.
            warnings.warn(f"MILP: HiGHS reported the program of row {j} infeasible although it "
                          "contains the clean input (numerical trouble); the row stays "
                          "unknown.", RuntimeWarning, stacklevel=4)
        elif math.isfinite(sol.bound):
            run.lower[j] = max(float(run.lower[j]), sol.bound)
        if sol.x is not None:
            point = torch.from_numpy(np.asarray(sol.x[enc.inputs]))
            run.points[j] = point
        run.rows.append({"row": j, "status": sol.status.value, "solver": sol.backend_status,
                         "objective": sol.objective, "bound": sol.bound,
                         "seconds": sol.seconds})

    @staticmethod
    def _violates(network: Network, enc: Encoding, sol: Solution, spec: Spec, s: int,
                  j: int) -> bool:
        """True if the solver's input point violates row ``j`` in the IR's own forward."""
        assert sol.x is not None
        point = torch.from_numpy(np.asarray(sol.x[enc.inputs])).to(spec.C)
        with torch.no_grad():
            out = network.forward(point.reshape((1,) + network.input_shape))
        value = (spec.C[s, j] * out[0]).sum() + spec.d[s, j]
        return bool(value < 0)
