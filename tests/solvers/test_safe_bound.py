"""The safe LP dual bound: never above the LP optimum, whatever the multipliers; tight at the
solver's duals."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from advrobust.solvers import HighsSolver, Program, SolveStatus
from advrobust.solvers._safe_bound import safe_lp_bound


def _random_lp(seed: int) -> tuple[Program, np.ndarray]:
    """A feasible bounded LP: box columns, range rows around a known feasible point."""
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(2, 12)), int(rng.integers(1, 10))
    lo, hi = -rng.random(n) * 3, rng.random(n) * 3
    x_feas = lo + (hi - lo) * rng.random(n)
    a = rng.normal(size=(m, n)) * (rng.random((m, n)) < 0.7)
    ax = a @ x_feas
    prog = Program()
    cols = prog.add_vars(lo, hi)
    prog.add_rows(a, cols, ax - rng.random(m), np.where(rng.random(m) < 0.3, np.inf,
                                                        ax + rng.random(m)))
    return prog, rng.normal(size=n)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), noise=st.floats(0.0, 1.0))
def test_safe_bound_is_below_the_optimum_for_any_multipliers(seed: int, noise: float) -> None:
    prog, cost = _random_lp(seed)
    sol = HighsSolver(prog).minimize(cost, offset=0.25)
    assert sol.status is SolveStatus.OPTIMAL
    # at the solver's duals the safe bound is the optimum up to rounding
    assert sol.bound <= sol.objective + 1e-9 * (1 + abs(sol.objective))
    assert sol.bound >= sol.objective - 1e-6 * (1 + abs(sol.objective))
    # any other multipliers: still a lower bound (weak duality, computed safely)
    a, rlo, rhi = prog.matrix()
    clo, chi, _ = prog.columns()
    rng = np.random.default_rng(seed + 1)
    y = rng.normal(size=prog.num_rows) * noise * 10
    bound = safe_lp_bound(a, rlo, rhi, clo, chi, cost, 0.25, y)
    assert bound <= sol.objective + 1e-9 * (1 + abs(sol.objective))


def test_wrong_sign_multiplier_on_an_open_side_is_ignored() -> None:
    # min x s.t. x >= 1 (no upper side), x in [0, 5]: y = -3 would claim the upper side
    a = sp.csr_matrix(np.array([[1.0]]))
    bound = safe_lp_bound(a, np.array([1.0]), np.array([np.inf]), np.array([0.0]),
                          np.array([5.0]), np.array([1.0]), 0.0, np.array([-3.0]))
    assert bound <= 1.0
    assert safe_lp_bound(a, np.array([1.0]), np.array([np.inf]), np.array([0.0]),
                         np.array([5.0]), np.array([1.0]), 0.0, np.array([1.0])) \
        >= 1.0 - 1e-12


def test_unbounded_column_with_nonzero_reduced_cost_proves_nothing() -> None:
    # min -x over x >= 0 unbounded above: no finite bound, whatever y
    a = sp.csr_matrix(np.array([[1.0]]))
    bound = safe_lp_bound(a, np.array([0.0]), np.array([np.inf]), np.array([0.0]),
                          np.array([np.inf]), np.array([-1.0]), 0.0, np.array([0.5]))
    assert bound == -np.inf


def test_an_unbounded_column_keeps_its_exact_reduced_costs_sign() -> None:
    # min t s.t. t - x >= 0, x in [0.1, 1], t >= 0 (t unbounded above): the optimum is 0.1.
    # Duals a few ulps off 1 leave t's reduced cost 1 - y at +-1e-16: the rounded enclosure
    # straddles 0; the exact sign decides (>= 0: the term is 0 at t's lower end; < 0: nothing)
    a = sp.csr_matrix(np.array([[1.0, -1.0]]))
    args = (a, np.array([0.0]), np.array([np.inf]), np.array([0.0, 0.1]),
            np.array([np.inf, 1.0]), np.array([1.0, 0.0]), 0.0)
    below = np.nextafter(1.0, 0.0)  # reduced cost of t: 1 - y > 0, exactly
    bound = safe_lp_bound(*args, np.array([below]))
    assert 0.1 * below - 1e-15 <= bound <= 0.1
    above = np.nextafter(1.0, 2.0)  # 1 - y < 0: t's term is unbounded below
    assert safe_lp_bound(*args, np.array([above])) == -np.inf
    assert safe_lp_bound(*args, np.array([1.0])) == pytest.approx(0.1, abs=1e-15)
