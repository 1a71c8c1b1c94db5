"""The minimal adversarial distortion ``d*`` of each sample, exactly, as a MILP.

``d*(x0) = min { ||x - x0||_p : lo <= x <= hi, some (C f(x) + d)_k <= 0 }`` for p = inf or 1
(Tjeng et al. 2019, "minimise the distortion"; l2 by outer-approximation cuts, see
:mod:`advrobust.exact.minimal_l2`). One program per sample holds the network (big-M,
pre-activation bounds from CROWN over the whole search box) and one switchable row per spec row;
each row is solved in turn (a fresh HiGHS model per row) and the smallest distance is kept.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from advrobust.core._validation import check_choice, check_float, check_int
from advrobust.core.checks import check_batch
from advrobust.core.config import Configurable
from advrobust.core.modes import eval_mode
from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall, Norm
from advrobust.errors import InvalidParameterError, UnsupportedLayerError
from advrobust.network.graph import Graph
from advrobust.network.graph.graph import as_graph
from advrobust.network.ir import Network
from advrobust.relax._encoding import Encoding, add_l1_ball, encode_sample
from advrobust.relax.base import _check_spec, verifiable_ir
from advrobust.relax.crown import crown_layer_bounds, crown_lower
from advrobust.relax.ibp import LayerBounds
from advrobust.relax.witness import float64_copy
from advrobust.solvers.highs import HighsSolver
from advrobust.solvers.program import SolveStatus

__all__ = ["DistortionResult", "MinimalDistortion"]


def _exact_ir(model: nn.Module, shape: tuple[int, ...]) -> Network | Graph:
    """The chain IR, or the graph IR when every op has an exact MILP encoding (residual adds,
    concatenations, ReLU ...): a relaxed op would make the solver's point a non-adversarial
    one, so such a graph is refused naming its node."""
    ir = verifiable_ir(model, shape, "MinimalDistortion", graph_ok=True)
    relaxed = [n for n in as_graph(ir).nodes[1:] if n.op is not None and not n.op.milp_exact]
    if relaxed:
        node = relaxed[0]
        raise UnsupportedLayerError(
            f"MinimalDistortion needs an exact MILP of the network; node {node.name} "
            f"({type(node.op).__name__}) has only an LP relaxation. Ops with exact encodings: "
            "linear layers, residual additions, concatenations, reshapes, ReLU.")
    return ir


def _crown(network: Network | Graph, x: Tensor, threat: LpBall, spec: Spec
           ) -> tuple[LayerBounds, Tensor]:
    """Node bounds and CROWN's lower bounds of the spec rows over the search box."""
    if isinstance(network, Graph):  # the IR's shape: a DAG takes the graph driver
        from advrobust.relax.dag import graph_crown_bounds

        bounds = graph_crown_bounds(network, x, threat, rounding=True)
    else:
        bounds = crown_layer_bounds(network, x, threat, rounding=True)
    return bounds, crown_lower(network, x, threat, spec.C, spec.d, bounds=bounds,
                               rounding=True)


@dataclass(frozen=True)
class DistortionResult:
    """Closest adversarial examples.

    Attributes:
        distance: (N,) distance of the best adversarial point found (``d*`` when the status is
            "optimal"; inf where none exists within the search radius).
        lower: (N,) proven lower bound on ``d*``.
        x_adv: (N, ...) the best point (the clean input where none was found).
        margin: (N,) minimum spec value at ``x_adv`` recomputed by the model (<= 0 up to solver
            tolerances at the boundary).
        status: per sample: "optimal", "robust" (no adversarial point within the radius),
            "time_limit" (bracket ``[lower, distance]``) or "error".
        stats: solver statuses and timings.
    """

    distance: Tensor
    lower: Tensor
    x_adv: Tensor
    margin: Tensor
    status: tuple[str, ...]
    stats: dict[str, Any] = field(default_factory=dict)


class MinimalDistortion(Configurable):
    """Exact minimal linf, l1 or l2 distortion by MILP.

    l2 is solved by outer approximation: MILPs whose distance is a growing set of linear cuts
    of the l2 norm (:mod:`advrobust.exact.minimal_l2`); the lower bound is the last MILP's
    proven bound, the upper bound a point the real model classifies as adversarial.

    Args:
        norm: "linf", "l1" or "l2".
        time_limit: seconds per sample.
        threads: HiGHS threads.
        max_eps: search radius (None: the whole input box); a smaller radius gives tighter
            big-M constants and faster solves.
        tol: l2 only: absolute bracket width at which the cutting-plane loop stops.
        solver: l2 only: "highs" (cutting planes, no extra dependency) or "scip" (the MIQP;
            needs ``pip install 'advrobust[scip]'``).
    """

    def __init__(self, *, norm: str = "linf", time_limit: float = 60.0, threads: int = 1,
                 max_eps: float | None = None, tol: float = 1e-4, solver: str = "highs") -> None:
        self.norm = check_choice(norm, "norm", "MinimalDistortion", ("linf", "l1", "l2"))
        self.time_limit = check_float(time_limit, "time_limit", "MinimalDistortion", low=0.0,
                                      low_open=True, allow_inf=True)
        self.threads = check_int(threads, "threads", "MinimalDistortion", low=1)
        self.max_eps = max_eps if max_eps is None else check_float(
            max_eps, "max_eps", "MinimalDistortion", low=0.0, low_open=True)
        self.tol = check_float(tol, "tol", "MinimalDistortion", low=0.0, low_open=True)
        self.solver = check_choice(solver, "solver", "MinimalDistortion", ("highs", "scip"))
        if self.solver == "scip":
            if self.norm != "l2":
                raise InvalidParameterError(
                    "The 'solver' parameter of MinimalDistortion may be 'scip' only with "
                    f"norm='l2' (linf and l1 are MILPs for HiGHS). Got norm={self.norm!r}.")
            from advrobust.exact._scip import import_scip

            import_scip()  # fail now, naming the extra, rather than after the bound passes

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *, lo: float = 0.0,
                 hi: float = 1.0, spec: Spec | None = None) -> DistortionResult:
        """Find the closest adversarial example of every sample.

        Args:
            model: a classifier returning logits: a supported ``nn.Sequential``, or a module
                torch.fx traces into ops with exact MILP encodings (residual additions,
                concatenations, ReLU ...).
            x: (N, ...) clean inputs in ``[lo, hi]``; y: (N,) labels.
            lo, hi: the finite input box.
            spec: rows whose violation counts as adversarial (default: margins).

        Returns:
            :class:`DistortionResult`.
        """
        radius = self.max_eps if self.max_eps is not None else hi - lo
        threat = LpBall(Norm.LINF, radius, lo, hi)
        norm = Norm.parse(self.norm)
        with eval_mode(model, who="MinimalDistortion"):
            clean = check_batch(model, x, y, threat, who="MinimalDistortion")
            spec = _check_spec(spec, y, clean)
            # bounds in float64, from a copy of the model, with rounding allowances
            network = _exact_ir(float64_copy(model), tuple(x.shape[1:]))
            x = x.detach()
            x64, spec64 = x.double(), Spec(spec.C.double(), spec.d.double())
            with torch.no_grad():
                bounds, crown = _crown(network, x64, threat, spec64)
            if norm is Norm.L2:
                runs = [self._solve_l2(model, network, bounds, s, x, spec64, crown[s], lo, hi)
                        for s in range(x.shape[0])]
            else:
                runs = [self._solve(network, bounds, s, x, spec64, crown[s], norm)
                        for s in range(x.shape[0])]
            x_adv = torch.stack([r[2].to(x) for r in runs])
            with torch.no_grad():
                margin = spec.apply(model(x_adv)).amin(dim=1)
        return DistortionResult(
            distance=torch.tensor([r[0] for r in runs], dtype=torch.float64),
            lower=torch.tensor([r[1] for r in runs], dtype=torch.float64),
            x_adv=x_adv, margin=margin, status=tuple(r[3] for r in runs),
            stats={"rows": [r[4] for r in runs]})

    def _solve(self, network: Network | Graph, bounds: LayerBounds, s: int, x: Tensor, spec: Spec,
               crown: Tensor, norm: Norm) -> tuple[float, float, Tensor, str, list[Any]]:
        start = time.perf_counter()
        x0 = x[s]
        enc = encode_sample(network, bounds, s, integer=True)
        cost = self._distance(enc, x0, norm)
        c = spec.C[s].detach().cpu().double().numpy()
        rows = enc.program.add_rows(c, enc.outputs, -np.inf, np.inf)
        d = spec.d[s].detach().cpu().double().numpy()
        best, best_x, lower, status, log = math.inf, x0, math.inf, "robust", []
        for j in np.argsort(crown.cpu().numpy()).tolist():
            if float(crown[j]) > 0:
                continue  # no point of the search box violates this row
            left = self.time_limit - (time.perf_counter() - start)
            if left <= 0:
                lower, status = 0.0, "time_limit"
                continue
            solver = HighsSolver(enc.program, time_limit=left, threads=self.threads)
            solver.set_row_bounds(rows[j:j + 1], np.array([-np.inf]), np.array([-d[j]]))
            sol = solver.minimize(cost)
            log.append({"row": j, "status": sol.status.value, "solver": sol.backend_status,
                        "objective": sol.objective, "bound": sol.bound})
            lower = min(lower, max(sol.bound, 0.0))
            if sol.x is not None and sol.objective < best:
                best = sol.objective
                best_x = torch.from_numpy(sol.x[enc.inputs]).reshape(x0.shape)
            if sol.status in (SolveStatus.TIME_LIMIT, SolveStatus.INTERRUPTED):
                status = "time_limit"
            elif sol.status is SolveStatus.ERROR:
                status = "error"
        lower = min(lower, best, math.inf if self.max_eps is None else self.max_eps)
        if math.isfinite(best) and status == "robust":
            status = "optimal"
        return best, lower, best_x, status, log

    def _solve_l2(self, model: nn.Module, network: Network | Graph, bounds: LayerBounds, s: int,
                  x: Tensor, spec: Spec, crown: Tensor, lo: float, hi: float
                  ) -> tuple[float, float, Tensor, str, list[Any]]:
        from advrobust.exact.minimal_l2 import solve_sample_l2

        enc = encode_sample(network, bounds, s, integer=True)
        best, lower, best_x, status, log = solve_sample_l2(
            model, enc, x[s], spec.C[s], spec.d[s], crown, lo, hi, self.time_limit,
            self.threads, self.tol, self.solver)
        return best, min(lower, math.inf if self.max_eps is None else self.max_eps), best_x, \
            status, log

    def _distance(self, enc: Encoding, x0: Tensor, norm: Norm) -> np.ndarray:
        """Add the distance variables; return the objective vector."""
        prog, xc = enc.program, enc.inputs
        x0_np = x0.detach().cpu().double().numpy().ravel()
        if norm is Norm.L1:
            t = add_l1_ball(prog, xc, x0_np, math.inf)
        else:
            t = prog.add_vars(np.zeros(1), np.full(1, np.inf))
            n = xc.size
            ones = sp.csr_matrix(np.ones((n, 1)))
            eye = sp.identity(n, format="csr")
            cols = np.concatenate([xc, t])
            prog.add_rows(sp.hstack([eye, -ones]), cols, -np.inf, x0_np)
            prog.add_rows(sp.hstack([eye, ones]), cols, x0_np, np.inf)
        cost = np.zeros(prog.num_vars)
        cost[t] = 1.0
        return cost
