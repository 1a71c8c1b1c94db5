"""Ramp schedules of certified training: eps, the IBP/CROWN mixing beta and the loss weight kappa.

A :class:`Ramp` holds ``start`` for the first ``warmup`` fraction of training, moves linearly to
``end`` over the next ``ramp`` fraction, and holds ``end`` afterwards (Gowal et al. 2018 ramp eps
up from 0 this way; Zhang et al. 2020 ramp beta down from 1).
"""

from __future__ import annotations

from advrobust.core._validation import check_float
from advrobust.core.config import Configurable
from advrobust.errors import InvalidParameterError

__all__ = ["EpsSchedule", "Ramp"]


class Ramp(Configurable):
    """Piecewise-linear schedule ``progress in [0, 1] -> value``.

    Args:
        start: value during warm-up.
        end: value after the ramp.
        warmup: fraction of training at ``start``, in [0, 1].
        ramp: fraction of training spent moving from ``start`` to ``end``, in [0, 1];
            ``warmup + ramp`` must not exceed 1.

    Raises:
        InvalidParameterError: a fraction outside [0, 1] or ``warmup + ramp > 1``.
    """

    def __init__(self, *, start: float, end: float, warmup: float = 0.0,
                 ramp: float = 0.5) -> None:
        owner = type(self).__name__
        self.start = check_float(start, "start", owner)
        self.end = check_float(end, "end", owner)
        self.warmup = check_float(warmup, "warmup", owner, low=0.0, high=1.0)
        self.ramp = check_float(ramp, "ramp", owner, low=0.0, high=1.0)
        if self.warmup + self.ramp > 1.0 + 1e-12:
            raise InvalidParameterError(
                f"The 'warmup' and 'ramp' parameters of {owner} must add up to at most 1 "
                f"(fractions of training). Got warmup={warmup!r} + ramp={ramp!r} instead.")

    def __call__(self, progress: float) -> float:
        """The value at ``progress`` (clipped to [0, 1])."""
        p = min(max(float(progress), 0.0), 1.0)
        if p <= self.warmup:
            return self.start
        t = 1.0 if self.ramp == 0 else (p - self.warmup) / self.ramp
        if t >= 1.0 - 1e-9:  # rounding of warmup + ramp must not leave the end unreached
            return self.end
        return self.start + (self.end - self.start) * t


class EpsSchedule(Ramp):
    """The eps ramp of certified training: ``start`` (default 0) up to ``end``.

    ``end=None`` means the threat's eps; the objective that uses the schedule checks that
    ``end`` does not exceed its final eps.

    Raises:
        InvalidParameterError: ``start`` or ``end`` negative, ``start > end``, bad fractions.
    """

    def __init__(self, *, warmup: float = 0.0, ramp: float = 0.5, start: float = 0.0,
                 end: float | None = None) -> None:
        check_float(start, "start", "EpsSchedule", low=0.0)
        if end is not None:
            check_float(end, "end", "EpsSchedule", low=0.0)
            if end < start:
                raise InvalidParameterError(
                    f"The 'end' parameter of EpsSchedule must be >= start ({start!r}): eps "
                    f"ramps up. Got {end!r} instead.")
        super().__init__(start=start, end=start if end is None else end, warmup=warmup,
                         ramp=ramp)
        self.end = end  # type: ignore[assignment]  # stored verbatim; None = the threat's eps

    def resolve(self, final_eps: float, owner: str) -> Ramp:
        """A concrete ramp ending at ``end`` (or ``final_eps``); raise if it overshoots."""
        end = final_eps if self.end is None else float(self.end)
        if end > final_eps + 1e-12:
            raise InvalidParameterError(
                f"The eps schedule of {owner} must end at or below the threat's eps "
                f"({final_eps:g}). Got end={end!r} instead.")
        if self.start > end:
            raise InvalidParameterError(
                f"The eps schedule of {owner} must start at or below its end ({end:g}). "
                f"Got start={self.start!r} instead.")
        return Ramp(start=self.start, end=end, warmup=self.warmup, ramp=self.ramp)

    def __call__(self, progress: float) -> float:
        """The eps at ``progress``; needs a concrete ``end`` (else use :meth:`resolve`)."""
        if self.end is None:
            raise InvalidParameterError(
                "This EpsSchedule ends at the threat's eps (end=None): call "
                "resolve(final_eps, owner) first.")
        return super().__call__(progress)
