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

#: One sample's search: ``(distance, lower, x_adv, status, per-row log)``.
_Run = tuple[float, float, Tensor, str, list[Any]]


def _lower_by(lower: float, known: float) -> str:
    """Which part proved the final lower end: the warm start, the solver, or neither."""
    return "none" if lower <= 0 else ("known" if known >= lower else "exact")


def _upper_by(distance: float, incumbent: float) -> str:
    return "none" if math.isinf(distance) else ("incumbent" if incumbent <= distance
                                                else "exact")


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


def checked_incumbents(model: nn.Module, incumbent: Tensor, x: Tensor, spec: Spec,
                       norm: Norm, lo: float, hi: float) -> list[tuple[float, Tensor | None]]:
    """``(distance, point)`` per sample for the candidate points that are real adversarial
    examples: inside ``[lo, hi]``, finite, and some spec row below 0 through ``model`` itself;
    ``(inf, None)`` for the others.

    Raises:
        InvalidParameterError: ``incumbent`` not a tensor shaped like ``x``.
    """
    if not torch.is_tensor(incumbent) or incumbent.shape != x.shape:
        got = tuple(incumbent.shape) if torch.is_tensor(incumbent) \
            else type(incumbent).__name__
        raise InvalidParameterError(
            "The 'incumbent' parameter of MinimalDistortion must be a tensor shaped like "
            f"x {tuple(x.shape)}, one candidate point per sample. Got {got} instead.")
    point = incumbent.detach().to(x)
    flat = point.reshape(x.shape[0], -1)
    inside = (flat >= lo).all(1) & (flat <= hi).all(1) & flat.isfinite().all(1)
    with torch.no_grad():
        adversarial = (spec.apply(model(point.nan_to_num())) < 0).any(1)
    dist = (point.double() - x.double()).reshape(x.shape[0], -1).norm(
        p={Norm.LINF: math.inf, Norm.L2: 2, Norm.L1: 1}[norm], dim=1)
    return [(float(dist[s]), point[s]) if bool(inside[s] & adversarial[s])
            else (math.inf, None) for s in range(x.shape[0])]


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
        tol: absolute bracket width at which the l2 cutting-plane loop stops; in every norm a
            sample cut by the time limit whose bracket (warm start included) is this narrow is
            reported "optimal".
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
                 hi: float = 1.0, spec: Spec | None = None, known_lower: Tensor | None = None,
                 incumbent: Tensor | None = None) -> DistortionResult:
        """Find the closest adversarial example of every sample.

        Args:
            model: a classifier returning logits: a supported ``nn.Sequential``, or a module
                torch.fx traces into ops with exact MILP encodings (residual additions,
                concatenations, ReLU ...).
            x: (N, ...) clean inputs in ``[lo, hi]``; y: (N,) labels.
            lo, hi: the finite input box.
            spec: rows whose violation counts as adversarial (default: margins).
            known_lower: (N,) a warm start from below: proven lower bounds on ``d*`` (e.g. the
                radii of :func:`~advrobust.relax.certified_radius` in the same norm). The
                result's ``lower`` is at least this, and a search stops once its bracket
                closes against it. Not checked: an unsound value gives an unsound bracket.
            incumbent: (N, ...) a warm start from above: candidate adversarial points (e.g. an
                attack's ``x_adv``). A point counts only where it lies in ``[lo, hi]`` and the
                model itself puts some spec row below 0 there; its distance is then the first
                upper bound, and the search covers only the ball of that radius (tighter MILP
                bounds). The others are ignored.

        Returns:
            :class:`DistortionResult`; ``stats["lower_by"]`` and ``stats["upper_by"]`` say per
            sample which part gave each end of the bracket: ``"known"`` (``known_lower``),
            ``"incumbent"``, ``"exact"`` (the solver), or ``"none"`` (0, inf).
        """
        radius = self.max_eps if self.max_eps is not None else hi - lo
        threat = LpBall(Norm.LINF, radius, lo, hi)
        norm = Norm.parse(self.norm)
        with eval_mode(model, who="MinimalDistortion"):
            clean = check_batch(model, x, y, threat, who="MinimalDistortion")
            spec = _check_spec(spec, y, clean)
            floor = self._known_lower(known_lower, x)
            start: list[tuple[float, Tensor | None]] = [(math.inf, None)] * x.shape[0]
            if incumbent is not None:
                start = checked_incumbents(model, incumbent, x, spec, norm, lo, hi)
            # bounds in float64, from a copy of the model, with rounding allowances
            network = _exact_ir(float64_copy(model), tuple(x.shape[1:]))
            x = x.detach()
            runs = self._solve_all(model, network, x, spec, threat, norm, floor, start)
            x_adv = torch.stack([r[2].to(x) for r in runs])
            with torch.no_grad():
                margin = spec.apply(model(x_adv)).amin(dim=1)
        return self._result(runs, x_adv, margin, floor, start)

    def _solve_all(self, model: nn.Module, network: Network | Graph, x: Tensor, spec: Spec,
                   threat: LpBall, norm: Norm, floor: Tensor,
                   start: list[tuple[float, Tensor | None]]) -> list[_Run]:
        """Search every sample in turn: within the ball of its incumbent where it has one
        inside the search radius, else in the search box ``threat`` (bounds shared by all)."""
        x64, spec64 = x.double(), Spec(spec.C.double(), spec.d.double())
        shared: tuple[LayerBounds, Tensor] | None = None
        runs = []
        for s in range(x.shape[0]):
            one = Spec(spec64.C[s:s + 1], spec64.d[s:s + 1])
            dist, point = start[s]
            ball = self._incumbent_ball(dist, norm, threat)
            if ball is not None:
                with torch.no_grad():
                    bounds, crown = _crown(network, x64[s:s + 1], ball, one)
                reach = ball.eps
            else:
                if shared is None:
                    with torch.no_grad():
                        shared = _crown(network, x64, threat, spec64)
                bounds = [(a[s:s + 1], b[s:s + 1]) for a, b in shared[0]]
                crown = shared[1][s:s + 1]
                reach = math.inf if self.max_eps is None else self.max_eps
            runs.append(self._solve_sample(model, network, bounds, x[s:s + 1], one, crown[0],
                                           norm, threat, reach, (float(floor[s]), dist, point)))
        return runs

    def _incumbent_ball(self, dist: float, norm: Norm, threat: LpBall) -> LpBall | None:
        """The ``norm`` ball of an incumbent at distance ``dist`` (widened by 1e-6 relative),
        where finite and inside the search radius: only a point closer than it matters."""
        if math.isfinite(dist) and (self.max_eps is None or dist * (1 + 1e-6) < threat.eps):
            return LpBall(norm, dist * (1 + 1e-6), threat.lo, threat.hi)
        return None

    def _solve_sample(self, model: nn.Module, network: Network | Graph, bounds: LayerBounds,
                      x: Tensor, spec: Spec, crown: Tensor, norm: Norm, threat: LpBall,
                      reach: float, start_bracket: tuple[float, float, Tensor | None]) -> _Run:
        """One sample by the method of its norm (l2: cutting planes or SCIP; else one MILP)."""
        if norm is Norm.L2:
            return self._solve_l2(model, network, bounds, x, spec, crown, threat.lo, threat.hi,
                                  reach, start_bracket)
        return self._solve(network, bounds, x, spec, crown, norm, reach, start_bracket)

    def _result(self, runs: list[_Run], x_adv: Tensor, margin: Tensor, floor: Tensor,
                start: list[tuple[float, Tensor | None]]) -> DistortionResult:
        """The runs gathered, a time-limited bracket within ``tol`` counted as optimal."""
        status = tuple("optimal" if r[3] == "time_limit" and r[0] - r[1] <= self.tol else r[3]
                       for r in runs)
        return DistortionResult(
            distance=torch.tensor([r[0] for r in runs], dtype=torch.float64),
            lower=torch.tensor([r[1] for r in runs], dtype=torch.float64),
            x_adv=x_adv, margin=margin, status=status,
            stats={"rows": [r[4] for r in runs],
                   "lower_by": tuple(_lower_by(r[1], float(f)) for r, f in zip(runs, floor,
                                                                              strict=True)),
                   "upper_by": tuple(_upper_by(r[0], d) for r, (d, _) in zip(runs, start,
                                                                            strict=True))})

    @staticmethod
    def _known_lower(known: Tensor | None, x: Tensor) -> Tensor:
        n = x.shape[0]
        if known is None:
            return torch.zeros(n, dtype=torch.float64)
        if not torch.is_tensor(known) or tuple(known.shape) != (n,):
            got = tuple(known.shape) if torch.is_tensor(known) else type(known).__name__
            raise InvalidParameterError(
                "The 'known_lower' parameter of MinimalDistortion must be a tensor of shape "
                f"({n},), one lower bound per sample. Got {got} instead.")
        known = known.detach().cpu().double()
        if not bool((known >= 0).all()) or bool(known.isnan().any()):
            raise InvalidParameterError(
                "The 'known_lower' parameter of MinimalDistortion holds lower bounds on "
                f"distances, so values >= 0. Got {known.tolist()} instead.")
        return known

    def _solve(self, network: Network | Graph, bounds: LayerBounds, x: Tensor, spec: Spec,
               crown: Tensor, norm: Norm, reach: float,
               start_bracket: tuple[float, float, Tensor | None]
               ) -> tuple[float, float, Tensor, str, list[Any]]:
        """One sample (``x`` (1, ...), ``bounds`` of it alone) searched within ``reach``."""
        start = time.perf_counter()
        x0 = x[0]
        enc = encode_sample(network, bounds, 0, integer=True)
        cost = self._distance(enc, x0, norm)
        c = spec.C[0].detach().cpu().double().numpy()
        rows = enc.program.add_rows(c, enc.outputs, -np.inf, np.inf)
        d = spec.d[0].detach().cpu().double().numpy()
        floor, best, point = start_bracket
        best_x = x0 if point is None else point
        lower, status, log = math.inf, "robust", list[Any]()
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
            elif sol.status in (SolveStatus.ERROR, SolveStatus.STOPPED):
                status = "error"
        lower = min(max(lower, floor), best, reach)
        if math.isfinite(best) and status == "robust":
            status = "optimal"
        return best, lower, best_x, status, log

    def _solve_l2(self, model: nn.Module, network: Network | Graph, bounds: LayerBounds,
                  x: Tensor, spec: Spec, crown: Tensor, lo: float, hi: float, reach: float,
                  start_bracket: tuple[float, float, Tensor | None]
                  ) -> tuple[float, float, Tensor, str, list[Any]]:
        from advrobust.exact.minimal_l2 import solve_sample_l2

        enc = encode_sample(network, bounds, 0, integer=True)
        best, lower, best_x, status, log = solve_sample_l2(
            model, enc, x[0], spec.C[0], spec.d[0], crown, lo, hi, self.time_limit,
            self.threads, self.tol, self.solver, start_bracket)
        return best, min(max(lower, start_bracket[0]), best, reach), best_x, status, log

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
