"""Exact verification of ReLU networks as a mixed-integer linear program, solved with HiGHS.

Tjeng, Xiao & Tedrake 2019, "Evaluating robustness of neural networks with mixed integer
programming": every unstable ReLU gets one binary and the big-M rows built from tight
pre-activation bounds (here from CROWN, optionally tightened by LPs); stable ReLUs need none.
One program per sample, solved per spec row; rows CROWN already proves are
skipped; a solve stops at the first incumbent below zero (a counterexample).

Chains and graphs (residual additions, concatenations, ...) share one code path: every node's
registered op adds its own rows. Ops without an exact MILP encoding (sigmoid, tanh, max
pooling, LeakyReLU) enter through their LP relaxation, with a warning: the result is then a
sound lower bound, not the exact minimum (``stats["exact"]`` says which).
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
from advrobust.network.graph import Graph
from advrobust.network.graph.graph import as_graph
from advrobust.network.ir import Network
from advrobust.relax._encoding import Encoding, check_linear_norm, encode_sample, row_cost
from advrobust.relax.base import Bounder, Bounds
from advrobust.relax.crown import root_bounds
from advrobust.relax.dag import refine_mask
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


def lp_tighten_bounds(network: Network | Graph, bounds: LayerBounds, index: int,
                      threat: LpBall, x0: Tensor, threads: int = 1) -> LayerBounds:
    """Tighten the bounds of every node that feeds a nonlinear op, for one sample, by LPs.

    Node by node in topological order, each node's bounds are the interval of its op over the
    (already tightened) bounds of its inputs, intersected with the given ones; where a
    nonlinear consumer depends on them (a ReLU's unstable neurons), they become the min / max
    of the node over the LP relaxation of the nodes before it (Salman et al. 2019's LP-all).
    Returns new node bounds for sample ``index`` only (batch of one).
    """
    with torch.no_grad():
        return _lp_tighten(as_graph(network), bounds, index, threat, x0, threads)


def _lp_tighten(graph: Graph, bounds: LayerBounds, index: int, threat: LpBall, x0: Tensor,
                threads: int) -> LayerBounds:
    given = [(lo[index:index + 1], hi[index:index + 1]) for lo, hi in bounds]
    new: LayerBounds = [given[0]]
    for i, node in enumerate(graph.nodes[1:], start=1):
        assert node.op is not None
        lo, hi = node.op.sound_interval(*(new[j] for j in node.inputs))
        lo, hi = torch.maximum(lo, given[i][0]), torch.minimum(hi, given[i][1])
        new.append((lo, hi))
        mask = refine_mask(graph, i, lo, hi) if graph.needs_bounds(i) else None
        if mask is not None and bool(mask.any()):
            new[i] = _lp_bounds(graph, new, i, mask, threat, x0[index:index + 1], threads)
    return new


def _lp_bounds(graph: Graph, bounds: LayerBounds, i: int, mask: Tensor, threat: LpBall,
               x0: Tensor, threads: int) -> tuple[Tensor, Tensor]:
    """Node ``i``'s bounds (batch of one), its ``mask`` neurons tightened by LPs."""
    enc = encode_sample(graph, bounds, 0, integer=False, threat=threat, x0=x0, upto=i)
    solver = HighsSolver(enc.program, threads=threads)
    lo, hi = bounds[i][0].flatten().clone(), bounds[i][1].flatten().clone()
    for j in mask.flatten().nonzero().flatten().tolist():
        cost = np.zeros(enc.program.num_vars)
        cost[enc.outputs[j]] = 1.0
        low, high = solver.minimize(cost), solver.minimize(-cost)
        if low.status is SolveStatus.OPTIMAL:  # the solver's gate: a safe dual bound
            lo[j] = max(float(lo[j]), low.bound)
        if high.status is SolveStatus.OPTIMAL:
            hi[j] = min(float(hi[j]), -high.bound)
    return lo.reshape(bounds[i][0].shape), hi.reshape(bounds[i][1].shape)


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

    reuses_layer_bounds = True

    def _bound(self, network: Network, x: Tensor, threat: LpBall, spec: Spec, *,
               layer_bounds: LayerBounds | None = None) -> Bounds:
        check_linear_norm(threat, "MILP")
        bounds, crown = root_bounds(network, x, threat, spec, layer_bounds=layer_bounds)
        return self._run(network.graph, bounds, crown, x, threat, spec)

    def _bound_graph(self, graph: Graph, x: Tensor, threat: LpBall, spec: Spec, *,
                     layer_bounds: LayerBounds | None = None) -> Bounds:
        check_linear_norm(threat, "MILP")
        bounds, crown = root_bounds(graph, x, threat, spec, layer_bounds=layer_bounds)
        return self._run(graph, bounds, crown, x, threat, spec)

    def _run(self, network: Graph, bounds: LayerBounds, crown: Tensor, x: Tensor,
             threat: LpBall, spec: Spec) -> Bounds:
        """Solve every sample's program, starting from its node ``bounds`` and ``crown``."""
        relaxed = [n for n in network.nodes[1:] if n.op is not None and not n.op.milp_exact]
        if relaxed:
            warnings.warn(
                "MILP: " + ", ".join(f"node {n.name} ({type(n.op).__name__})" for n in relaxed)
                + " has no exact MILP encoding; its LP relaxation is used, so the MILP bounds "
                "are sound lower bounds but not the exact minima (a sample may stay "
                "UNKNOWN).", RuntimeWarning, stacklevel=4)
        with torch.no_grad():
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
        return Bounds(lower, candidates=cand, stats={"crown": crown, "samples": samples,
                                                     "exact": not relaxed})

    def _solve_sample(self, network: Graph, bounds: LayerBounds, s: int, threat: LpBall,
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
    def _violates(network: Graph, enc: Encoding, sol: Solution, spec: Spec, s: int,
                  j: int) -> bool:
        """True if the solver's input point violates row ``j`` in the IR's own forward."""
        assert sol.x is not None
        point = torch.from_numpy(np.asarray(sol.x[enc.inputs])).to(spec.C)
        with torch.no_grad():
            out = network.forward(point.reshape((1,) + network.input_shape))
        value = (spec.C[s, j] * out[0]).sum() + spec.d[s, j]
        return bool(value < 0)
