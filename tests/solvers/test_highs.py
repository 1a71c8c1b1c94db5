"""The program builder and the HiGHS backend on problems with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from advrobust.solvers import HighsSolver, Program, SolveStatus


def knapsack() -> Program:
    """max 5a + 4b + 3c s.t. 2a + 3b + c <= 5, 4a + b + 2c <= 11, 3a + 4b + 2c <= 8 (a,b,c int)."""
    prog = Program()
    v = prog.add_vars(np.zeros(3), np.full(3, 10.0), integer=True)
    prog.add_rows(np.array([[2, 3, 1], [4, 1, 2], [3, 4, 2]]), v, -np.inf, [5, 11, 8])
    return prog


def test_lp_and_mip_optima() -> None:
    prog = knapsack()
    sol = HighsSolver(prog).minimize(np.array([-5.0, -4.0, -3.0]))
    assert sol.status is SolveStatus.OPTIMAL
    assert sol.objective == pytest.approx(-13.0)  # a=2, c=1
    assert sol.bound <= sol.objective + 1e-9
    lp = Program()
    x = lp.add_vars(np.zeros(2), np.full(2, np.inf))
    lp.add_rows(np.array([[1.0, 1.0]]), x, 1.0, np.inf)
    res = HighsSolver(lp).minimize(np.array([2.0, 3.0]), offset=1.5)
    assert res.objective == pytest.approx(3.5) and res.bound == pytest.approx(3.5)


def test_stop_below_interrupts_on_the_first_good_incumbent() -> None:
    sol = HighsSolver(knapsack()).minimize(np.array([-5.0, -4.0, -3.0]), stop_below=-1.0)
    assert sol.x is not None and sol.objective < -1.0
    assert sol.status in (SolveStatus.INTERRUPTED, SolveStatus.OPTIMAL)


def test_infeasible_and_bad_programs() -> None:
    prog = Program()
    x = prog.add_vars(np.zeros(1), np.ones(1))
    prog.add_rows(np.array([[1.0]]), x, 2.0, np.inf)
    sol = HighsSolver(prog).minimize(np.array([1.0]))
    assert sol.status is SolveStatus.INFEASIBLE and sol.bound == math.inf and sol.x is None
    with pytest.raises(ValueError, match="lower bound above"):
        prog.add_vars(np.ones(1), np.zeros(1))
    with pytest.raises(ValueError, match="width"):
        prog.add_rows(np.ones((1, 2)), x, 0.0, 1.0)


def test_solving_prints_nothing_to_stdout() -> None:
    # HiGHS writes a banner from C++ on the first solver of a process: run a fresh process.
    import subprocess
    import sys

    code = ("import numpy as np\n"
            "from advrobust.solvers.highs import HighsSolver\n"
            "from advrobust.solvers.program import Program\n"
            "p = Program(); x = p.add_vars(np.zeros(2), np.ones(2))\n"
            "p.add_rows(np.array([[1.0, 1.0]]), x, 1.0, np.inf)\n"
            "s = HighsSolver(p).minimize(np.array([1.0, 2.0]))\n"
            "print('objective', round(s.objective, 6))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out == "objective 1.0\n"


class _NoProof:
    """A HiGHS handle whose dual ray is replaced by ``ray`` (has_ray, values)."""

    def __init__(self, real: object, ray: tuple[bool, np.ndarray]) -> None:
        self._real, self._ray = real, ray

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)

    def getDualRay(self) -> tuple[object, bool, np.ndarray]:  # noqa: N802 - HiGHS's name
        return None, self._ray[0], self._ray[1]


def test_an_lp_is_infeasible_only_with_a_farkas_certificate(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def program() -> Program:
        prog = Program()
        x = prog.add_vars(np.zeros(2), np.ones(2))
        prog.add_rows(np.array([[1.0, 1.0]]), x, 2.5, np.inf)  # x0 + x1 >= 2.5 in [0, 1]^2
        return prog

    solver = HighsSolver(program())
    sol = solver.minimize(np.array([1.0, 0.0]))
    assert sol.status is SolveStatus.INFEASIBLE and sol.bound == math.inf  # the ray checks
    for ray in [(False, np.zeros(0)), (True, np.array([0.0])), (True, np.array([1e-300])),
                (True, np.array([np.nan]))]:
        solver = HighsSolver(program())
        monkeypatch.setattr(solver, "_h", _NoProof(solver._h, ray))
        sol = solver.minimize(np.array([1.0, 0.0]))
        # "infeasible" without a certificate proves nothing: no bound, no point
        assert sol.status is SolveStatus.ERROR and sol.bound == -math.inf and sol.x is None
        assert "not a proof" in sol.backend_status


@pytest.mark.parametrize("seed", range(8))
def test_wildly_scaled_programs_give_the_unscaled_answers(seed: int) -> None:
    """Columns and rows scaled by 1e-9 .. 1e9 (the same problem in other units): the scaled
    backend returns points of the original program and the same optimum, its safe bound below."""
    scipy_optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(seed)
    n, m = 6, 5
    a = rng.normal(size=(m, n))
    x_in = rng.uniform(0.2, 0.8, size=n)  # a feasible interior point
    rhs = a @ x_in + rng.uniform(0.1, 1.0, size=m)
    cost = rng.normal(size=n)
    col = 10.0 ** rng.uniform(-9, 9, size=n)  # x = col * u, u in [0, 1]
    row = 10.0 ** rng.uniform(-9, 9, size=m)
    prog = Program()
    v = prog.add_vars(np.zeros(n), col)
    prog.add_rows((a / col) * row[:, None], v, -np.inf, rhs * row)
    sol = HighsSolver(prog).minimize(cost / col)
    ref = scipy_optimize.linprog(cost, A_ub=a, b_ub=rhs, bounds=[(0, 1)] * n, method="highs")
    assert sol.status is SolveStatus.OPTIMAL and ref.status == 0
    assert sol.bound <= ref.fun + 1e-9 * (1 + abs(ref.fun))
    assert sol.objective == pytest.approx(ref.fun, rel=1e-6, abs=1e-7)
    assert sol.x is not None
    u = sol.x / col
    assert bool(np.all(u >= -1e-9)) and bool(np.all(u <= 1 + 1e-9))
    assert bool(np.all(a @ u <= rhs + 1e-7 * (1 + np.abs(rhs))))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mip", [False, True])
def test_wildly_scaled_objectives_give_the_scaled_answers(seed: int, mip: bool) -> None:
    """The same program minimised for ``k * cost``, ``k`` in 1e-12 .. 1e19 (a network's
    margin with weights ~1e6 per layer has costs ~1e19): the optimum is ``k`` times the
    unscaled one, the bound below it. HiGHS's dual tolerances are absolute, so the backend
    must hand it an objective near 1."""
    rng = np.random.default_rng(100 + seed)
    n, m = 8, 6
    a = rng.normal(size=(m, n))
    x_in = rng.uniform(0.2, 0.8, size=n)
    rhs = a @ x_in + rng.uniform(0.1, 1.0, size=m)
    cost = rng.normal(size=n)
    prog = Program()
    v = prog.add_vars(np.zeros(n), np.full(n, 3.0), integer=mip)
    prog.add_rows(a, v, -np.inf, rhs)
    ref = HighsSolver(prog).minimize(cost)
    assert ref.status is SolveStatus.OPTIMAL
    for k in (1e-12, 1e-3, 1e7, 1e13, 1e19):
        sol = HighsSolver(prog).minimize(k * cost, offset=k)
        assert sol.status is SolveStatus.OPTIMAL
        want = k * (ref.objective + 1.0)
        # within the solvers' gaps (1e-6 of the objective's size, both solves)
        magnitude = 1 + abs(ref.objective) + 3 * float(np.abs(cost).sum())
        assert sol.objective == pytest.approx(want, rel=1e-6, abs=1e-5 * k * magnitude)
        assert sol.bound <= sol.objective
        assert sol.bound >= want - 1e-5 * k * magnitude


def _drop_a_node(solver: HighsSolver, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next solve behave as if HiGHS had pruned a node it could not solve."""
    from types import SimpleNamespace

    run = solver._run

    def run_and_drop() -> None:
        run()
        solver._on_log(SimpleNamespace(message="WARNING: Failed to solve node with all "
                                       "integer columns fixed. Declaring node infeasible.\n"))
    monkeypatch.setattr(solver, "_run", run_and_drop)


def test_a_node_highs_could_not_solve_voids_the_mip_bound(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # HiGHS prunes such a node as if it were infeasible (a guess): its dual bound, its
    # "optimal" and its "infeasible" then prove nothing; the incumbent is still a point
    solver = HighsSolver(knapsack())
    _drop_a_node(solver, monkeypatch)
    sol = solver.minimize(np.array([-5.0, -4.0, -3.0]))
    assert sol.bound == -math.inf and sol.status is SolveStatus.STOPPED
    assert sol.x is not None and sol.objective == pytest.approx(-13.0)
    assert "could not solve" in sol.backend_status
    prog = Program()
    x = prog.add_vars(np.zeros(1), np.ones(1), integer=True)
    prog.add_rows(np.array([[1.0]]), x, 2.0, np.inf)
    empty = HighsSolver(prog)
    _drop_a_node(empty, monkeypatch)
    sol = empty.minimize(np.array([1.0]))
    assert sol.status is SolveStatus.ERROR and sol.bound == -math.inf and sol.x is None
    # the next solve of the same solver starts clean
    monkeypatch.undo()
    assert solver.minimize(np.array([-5.0, -4.0, -3.0])).bound > -14.0


def test_highs_log_reaches_the_dropped_node_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    # the gate reads HiGHS's own log (never printed): a line every MIP solve logs stands in
    # for the dropped-node warning, and must void the bound
    import advrobust.solvers.highs as backend

    solver = HighsSolver(knapsack())
    if not hasattr(solver._h, "cbLogging"):
        pytest.skip("this highspy has no log callback")
    assert solver.minimize(np.array([-5.0, -4.0, -3.0])).bound > -14.0
    monkeypatch.setattr(backend, "_DROPPED_NODE", "nonzeros")
    assert solver.minimize(np.array([-5.0, -4.0, -3.0])).bound == -math.inf
