"""Parameter validation with one message format.

Messages follow scikit-learn's: ``The 'steps' parameter of PGD must be an int in [1, inf).
Got 0 instead.``
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

from advrobust.errors import InvalidParameterError

__all__ = ["MAX_SEED", "check_choice", "check_float", "check_int", "check_bool", "check_seed"]


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    lo = "-inf" if low is None else str(low) if isinstance(low, int) else f"{low:g}"
    hi = "inf" if high is None else str(high) if isinstance(high, int) else f"{high:g}"
    return f"{left}{lo}, {hi}{right}"


def _fail(name: str, owner: str, expected: str, value: Any,
          error: type[ValueError] = InvalidParameterError) -> ValueError:
    return error(f"The '{name}' parameter of {owner} must be {expected}. Got {value!r} instead.")


def check_int(value: Any, name: str, owner: str, low: int | None = None,
              high: int | None = None,
              error: type[ValueError] = InvalidParameterError) -> int:
    """Return ``value`` as an int, or raise naming the parameter and its allowed range."""
    expected = f"an int in {_interval(low, high, False, False)}"
    if isinstance(value, bool) or not isinstance(value, int):
        if not (hasattr(value, "__index__") and not isinstance(value, bool)):
            raise _fail(name, owner, expected, value, error)
        value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise _fail(name, owner, expected, value, error)
    return int(value)


def check_float(value: Any, name: str, owner: str, low: float | None = None,
                high: float | None = None, low_open: bool = False, high_open: bool = False,
                allow_inf: bool = False,
                error: type[ValueError] = InvalidParameterError) -> float:
    """Return ``value`` as a float inside the interval, or raise naming the parameter.

    NaN is always refused; infinities only with ``allow_inf``.
    """
    # With infinities allowed an unbounded end is closed: [-inf, inf] admits -inf and inf.
    interval = _interval(low, high, low_open, high_open)
    if allow_inf:
        interval = interval.replace("(-inf", "[-inf").replace("inf)", "inf]")
    expected = f"a float (not NaN) in {interval}" if allow_inf else f"a finite float in {interval}"
    if isinstance(value, bool):
        raise _fail(name, owner, expected, value, error)
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise _fail(name, owner, expected, value, error) from None
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise _fail(name, owner, expected, value, error)
    if low is not None and (v < low or (low_open and v == low)):
        raise _fail(name, owner, expected, value, error)
    if high is not None and (v > high or (high_open and v == high)):
        raise _fail(name, owner, expected, value, error)
    return v


def check_choice(value: Any, name: str, owner: str, choices: Collection[Any],
                 error: type[ValueError] = InvalidParameterError) -> Any:
    """Return ``value`` if it is one of ``choices``, or raise listing them."""
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise _fail(name, owner, f"one of {{{listed}}}", value, error)
    return value


def check_bool(value: Any, name: str, owner: str) -> bool:
    """Return ``value`` if it is a bool, or raise."""
    if not isinstance(value, bool):
        raise _fail(name, owner, "a bool", value)
    return value


#: Largest seed accepted (numpy's classic range; derived seeds such as ``seed * 1_000_003 + k``
#: then still fit torch's 64-bit generator state).
MAX_SEED = 2**32 - 1


def check_seed(value: Any, name: str, owner: str,
               error: type[ValueError] = InvalidParameterError) -> int:
    """Return ``value`` as a seed: an int in ``[0, 2**32 - 1]``, or raise naming the parameter.

    ``torch.Generator().manual_seed(-1)`` is accepted by torch (it wraps around), so a
    negative seed would silently mean another one; it is refused here instead.
    """
    return check_int(value, name, owner, low=0, high=MAX_SEED, error=error)
