"""A rigorous lower bound of an LP from any dual vector (Neumaier & Shcherbina 2004).

Neumaier & Shcherbina, "Safe bounds in linear and mixed-integer linear programming" (Math.
Program. 99, 2004). For ``min c x`` s.t. ``rl <= A x <= ru``, ``xl <= x <= xu`` and *any* row
multipliers ``y``, weak duality gives

    c x = y (A x) + (c - A^T y) x >= sum_i min(y_i rl_i, y_i ru_i) + sum_j min_{x_j} r_j x_j,

with ``r = c - A^T y``. Computed in float64 with the rounding of ``r`` enclosed in an interval
and the final sum rounded down, the result is a lower bound of the LP's minimum whatever ``y``
the solver returned (inexact, slightly infeasible, from a stopped solve): a solver's primal
objective is never taken as a proof.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import scipy.sparse as sp

__all__ = ["safe_lp_bound"]

_U = np.finfo(np.float64).eps / 2
_SAFETY = 4.0


def _mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a * b`` with ``0 * inf = 0`` (a zero multiplier ignores an infinite bound)."""
    with np.errstate(invalid="ignore"):
        out = a * b
    return np.where((a == 0) | (b == 0), 0.0, out)


def _exact_reduced_costs(at: sp.csr_matrix, cost: np.ndarray, y: np.ndarray,
                         col_lower: np.ndarray, col_upper: np.ndarray, r_lo: np.ndarray,
                         r_hi: np.ndarray) -> None:
    """On columns with an infinite bound whose rounded reduced cost straddles 0, recompute it
    exactly (rationals) and enclose that value tightly: a basic column's reduced cost is 0 or
    a few ulps off it, and an enclosure ``[-tiny, tiny]`` times an infinite bound would throw
    the whole bound away, where the exact sign (e.g. ``+1e-16`` on a column ``t >= 0``) keeps
    its term at 0."""
    open_ = ~(np.isfinite(col_lower) & np.isfinite(col_upper)) & (r_lo < 0) & (r_hi > 0)
    for j in np.flatnonzero(open_)[:10_000].tolist():
        lo, hi = at.indptr[j], at.indptr[j + 1]
        exact = Fraction(float(cost[j])) - sum(
            (Fraction(float(v)) * Fraction(float(y[i]))
             for v, i in zip(at.data[lo:hi], at.indices[lo:hi], strict=True)), Fraction(0))
        try:
            r_lo[j], r_hi[j] = _enclose(exact)
        except OverflowError:  # beyond float range: keep the rounded enclosure
            continue


def _enclose(value: Fraction) -> tuple[float, float]:
    """The nearest floats below and above an exact rational (equal when it is a float)."""
    near = float(value)
    below = near if Fraction(near) <= value else math.nextafter(near, -math.inf)
    above = near if Fraction(near) >= value else math.nextafter(near, math.inf)
    return below, above


def safe_lp_bound(a: sp.csr_matrix, row_lower: np.ndarray, row_upper: np.ndarray,
                  col_lower: np.ndarray, col_upper: np.ndarray, cost: np.ndarray,
                  offset: float, y: np.ndarray) -> float:
    """Lower bound of ``min cost @ x + offset`` over the LP, valid for any ``y``.

    Args:
        a: (m, n) constraint matrix.
        row_lower, row_upper: (m,) row bounds (+-inf allowed).
        col_lower, col_upper: (n,) column bounds (+-inf allowed).
        cost: (n,) objective.
        offset: objective constant.
        y: (m,) row multipliers (e.g. the solver's row duals; any values are allowed).

    Returns:
        A float64 lower bound (``-inf`` when the multipliers prove nothing finite).
    """
    y = np.nan_to_num(np.asarray(y, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    # a multiplier may only lean on a finite side of its row
    y = np.where((y > 0) & ~np.isfinite(row_lower), 0.0, y)
    y = np.where((y < 0) & ~np.isfinite(row_upper), 0.0, y)
    row_terms = np.where(y > 0, _mul(y, row_lower), _mul(y, row_upper))
    at = a.T.tocsr()
    r = cost - at @ y
    per_col = np.diff(at.indptr) + 2  # terms per reduced cost
    r_err = _SAFETY * _U * per_col * (abs(at) @ np.abs(y) + np.abs(cost))
    r_lo, r_hi = r - r_err, r + r_err
    _exact_reduced_costs(at, cost, y, col_lower, col_upper, r_lo, r_hi)
    corners = np.stack([_mul(r_lo, col_lower), _mul(r_lo, col_upper),
                        _mul(r_hi, col_lower), _mul(r_hi, col_upper)])
    col_terms = np.nan_to_num(corners, nan=-np.inf).min(axis=0)
    terms = np.concatenate([row_terms, col_terms, [offset]])
    if not np.all(np.isfinite(terms)):
        return -math.inf
    total = math.fsum(terms)  # correctly rounded sum of the (rounded) products
    slack = _SAFETY * _U * (math.fsum(np.abs(terms)) + abs(total)) + 1e-300
    return total - slack
