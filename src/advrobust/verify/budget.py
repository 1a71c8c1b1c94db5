"""One wall-clock budget for a whole verification call, and the guards every stage keeps.

A :class:`Budget` turns the caller's limit into a deadline; the cascade driver
(:mod:`advrobust.verify.cascade`) hands each stage what the policy gives it out of what is left.
The constants below are measured defaults (bench/RESULTS.md, issue 11): VNN-COMP answers must
arrive within the competition's limit on a loaded machine.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

__all__ = ["EXACT_KEEP_MAX", "EXACT_SHARE", "GUARD_SECONDS", "GUARD_SHARE", "GUARD_SHARE_UPTO",
           "Budget", "exact_share"]

#: Seconds of the wall-clock limit kept back for what follows the last stage (re-checking the
#: witness, building the report, HiGHS returning after its own limit): on VNN-COMP mnist_fc 256x2
#: at 30 s under a load average of 16-20 on 2 cores, answers came up to 2.7 s late with a guard
#: of 0.9 s (bench/RESULTS.md, issue 11); the guard is 0.5 s plus 5 % of the limit's first
#: :data:`GUARD_SHARE_UPTO` seconds (those overruns are a stage's last step, not a share of the
#: limit: at 300 s a 5 % guard left 15 s idle), never more than a quarter of the limit, and an
#: exact stage also leaves out twice a measured bound pass (its own CROWN pass before the
#: solver's clock starts).
GUARD_SECONDS = 0.5
GUARD_SHARE = 0.05
GUARD_SHARE_UPTO = 60.0
#: Share of its time an exact stage hands its method as the method's own limit (see
#: :func:`advrobust.verify.stages.exact_stage`), keeping back at most :data:`EXACT_KEEP_MAX`
#: seconds (the method's set-up: ~1 s over an 8 s limit under load, not a share of long limits;
#: BaB on mnist_fc 256x4 at 30 s, two processes on two cores, returns within 0.02 s of the
#: 24 s it is given, so a longer keep only idles: bench/RESULTS.md, issue 11, session 15).
EXACT_SHARE = 0.9
EXACT_KEEP_MAX = 1.5


def exact_share(left: float) -> float:
    """The seconds of ``left`` an exact stage hands its method (before its bound passes)."""
    return left - min((1 - EXACT_SHARE) * left, EXACT_KEEP_MAX)


@dataclass(frozen=True)
class Budget:
    """A wall-clock deadline (``time.perf_counter()`` value; ``inf`` for none)."""

    deadline: float = math.inf

    @classmethod
    def of(cls, seconds: float | None) -> Budget:
        """The budget of a call limited to ``seconds`` from now (None: unlimited), less the
        guard."""
        if seconds is None or math.isinf(seconds):
            return cls()
        guard = min(GUARD_SECONDS + GUARD_SHARE * min(seconds, GUARD_SHARE_UPTO), seconds / 4)
        return cls(time.perf_counter() + seconds - guard)

    @property
    def limited(self) -> bool:
        """True if there is a deadline."""
        return self.deadline != math.inf

    def left(self) -> float:
        """Seconds until the deadline (may be negative; ``inf`` if unlimited)."""
        return self.deadline - time.perf_counter()

    def share(self, seconds: float) -> float:
        """``seconds``, or what is left if that is less (never negative)."""
        return max(0.0, min(seconds, self.left()))

    def part(self, fraction: float) -> Budget:
        """A budget ending once ``fraction`` of what is left now has passed."""
        if not self.limited:
            return self
        return Budget(time.perf_counter() + fraction * self.left())
