"""A small LP / MILP program builder that knows nothing of networks.

Variables carry bounds and an integrality flag; constraints are ranges ``lower <= A x <= upper``
added in blocks (dense or scipy sparse coefficient blocks over a subset of the columns), stored
as coordinate triplets and handed to a backend as one CSR matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import scipy.sparse as sp

__all__ = ["Program", "Solution", "SolveStatus"]


class SolveStatus(str, Enum):
    """Outcome of one solve, independent of the backend."""

    OPTIMAL = "optimal"
    INFEASIBLE = "infeasible"
    UNBOUNDED = "unbounded"
    TIME_LIMIT = "time_limit"
    INTERRUPTED = "interrupted"  # stopped on purpose (e.g. a negative incumbent was found)
    STOPPED = "stopped"  # ended on another solver limit: no certified bound
    ERROR = "error"


@dataclass(frozen=True)
class Solution:
    """Result of minimising one objective.

    Attributes:
        status: how the solve ended.
        objective: value of the best primal point found (inf if none).
        bound: lower bound on the minimum through the backend's one gate: for an LP a safe
            dual bound recomputed in float64 from the row duals (OPTIMAL only), for a MIP the
            dual bound of a certifying status (OPTIMAL, TIME_LIMIT, INTERRUPTED); -inf if
            none; +inf for INFEASIBLE.
        x: the best primal point (num_vars,), or None.
        backend_status: the backend's own status string, for reports.
        seconds: wall-clock time of the solve.
    """

    status: SolveStatus
    objective: float
    bound: float
    x: np.ndarray | None
    backend_status: str
    seconds: float


class Program:
    """Variables, range constraints and integrality of a minimisation problem."""

    def __init__(self) -> None:
        self._lower: list[np.ndarray] = []
        self._upper: list[np.ndarray] = []
        self._integer: list[np.ndarray] = []
        self._rows: list[sp.coo_matrix] = []
        self._row_lower: list[np.ndarray] = []
        self._row_upper: list[np.ndarray] = []
        self.num_vars = 0
        self.num_rows = 0

    def add_vars(self, lower: np.ndarray, upper: np.ndarray, integer: bool = False) -> np.ndarray:
        """Add ``len(lower)`` variables with bounds; return their column indices."""
        lower = np.asarray(lower, dtype=np.float64).ravel()
        upper = np.asarray(upper, dtype=np.float64).ravel()
        if lower.shape != upper.shape:
            raise ValueError("variable bounds must have the same length")
        if np.any(lower > upper):
            raise ValueError("a variable has lower bound above its upper bound")
        idx = np.arange(self.num_vars, self.num_vars + lower.size)
        self._lower.append(lower)
        self._upper.append(upper)
        self._integer.append(np.full(lower.size, integer, dtype=bool))
        self.num_vars += lower.size
        return idx

    def add_rows(self, coeffs: np.ndarray | sp.spmatrix, cols: np.ndarray,
                 lower: np.ndarray | float, upper: np.ndarray | float) -> np.ndarray:
        """Add rows ``lower <= coeffs @ x[cols] <= upper``; return their row indices.

        Args:
            coeffs: (m, len(cols)) dense or sparse coefficients (zeros are dropped).
            cols: column indices the block's columns refer to.
            lower, upper: (m,) or scalar row bounds (use +-inf for one-sided rows).
        """
        import scipy.sparse as sp

        block = sp.coo_matrix(coeffs)
        cols = np.asarray(cols, dtype=np.int64).ravel()
        if block.shape[1] != cols.size:
            raise ValueError("coefficient block width must match the number of columns")
        m = block.shape[0]
        keep = block.data != 0
        self._rows.append(sp.coo_matrix(
            (block.data[keep], (block.row[keep] + self.num_rows, cols[block.col[keep]])),
            shape=(self.num_rows + m, max(self.num_vars, 1))))
        self._row_lower.append(np.broadcast_to(np.asarray(lower, dtype=np.float64), (m,)).copy())
        self._row_upper.append(np.broadcast_to(np.asarray(upper, dtype=np.float64), (m,)).copy())
        idx = np.arange(self.num_rows, self.num_rows + m)
        self.num_rows += m
        return idx

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Variable lower bounds, upper bounds and integrality flags, each (num_vars,)."""
        if not self._lower:
            empty = np.zeros(0)
            return empty, empty, np.zeros(0, dtype=bool)
        return (np.concatenate(self._lower), np.concatenate(self._upper),
                np.concatenate(self._integer))

    def matrix(self) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
        """The constraint matrix (num_rows, num_vars) in CSR form and the row bounds."""
        import scipy.sparse as sp

        rows, cols, vals = [], [], []
        for block in self._rows:
            rows.append(block.row)
            cols.append(block.col)
            vals.append(block.data)
        if rows:
            a = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                              shape=(self.num_rows, self.num_vars))
        else:
            a = sp.csr_matrix((self.num_rows, self.num_vars))
        a.sum_duplicates()
        lo = np.concatenate(self._row_lower) if self._row_lower else np.zeros(0)
        hi = np.concatenate(self._row_upper) if self._row_upper else np.zeros(0)
        return a, lo, hi

    @property
    def is_mip(self) -> bool:
        """True if some variable is integer."""
        return any(bool(i.any()) for i in self._integer)
