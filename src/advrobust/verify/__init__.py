"""The verification problem and the one cascade driver every entry point uses.

:class:`Problem` holds the network (the caller's classifier and its float64 twin), the input set,
the specification and the per-layer bounds computed so far with their provenance
(:class:`BoundRecord`); :func:`run` (:mod:`advrobust.verify.cascade`) decides which stage runs
on it (CROWN, the attack, BaB, the MILP ...) with how much of one wall-clock :class:`Budget`, and
returns the :class:`Bracket` it reached. ``verify_dataset``, ``verify_property``, ``advrobust
verify`` and ``advrobust vnncomp`` all go through it.

Example::

    problem = Problem.of(model, x, y, LpBall("linf", 0.03))
    bracket = run(problem, Policy(method="auto", time_limit=10), Budget.of(60))
    bracket.verdicts()
"""

from advrobust.verify.bracket import Bracket
from advrobust.verify.budget import Budget
from advrobust.verify.cascade import METHODS, Policy, run
from advrobust.verify.problem import BoundRecord, Problem

__all__ = ["METHODS", "BoundRecord", "Bracket", "Budget", "Policy", "Problem", "run"]
