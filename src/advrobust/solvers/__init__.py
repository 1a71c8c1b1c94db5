"""LP / MILP programs and the HiGHS backend; nothing here knows about networks."""

from advrobust.solvers.highs import HighsSolver, highs_available
from advrobust.solvers.program import Program, Solution, SolveStatus

__all__ = ["HighsSolver", "Program", "Solution", "SolveStatus", "highs_available"]
