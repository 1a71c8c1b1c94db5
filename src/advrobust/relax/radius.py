"""The largest radius a bounder certifies, per sample.

``certified_radius(CROWN(), model, x, y, "l2")`` answers "what is the certified radius of this
sample under this method?" without scanning eps by hand: in closed form for
:class:`~advrobust.relax.GlobalLipschitz` (``min_k g_k(x) / L_k``), by bisection on the radius
for every other bounder (IBP, CROWN, :class:`~advrobust.relax.LocalLipschitz`, the LP, MILP).
A radius is reported only where the bounder proved every spec row above
:data:`~advrobust.core.result.VERIFY_TOLERANCE` at that radius, so it is a certified radius even
when a bounder's bounds are not monotone in eps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from advrobust.core._validation import check_float, check_int
from advrobust.core.checks import check_batch
from advrobust.core.modes import eval_mode
from advrobust.core.progress import progress_bar
from advrobust.core.result import VERIFY_TOLERANCE
from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall, Norm
from advrobust.errors import InvalidParameterError
from advrobust.network.ir import Network, from_module
from advrobust.relax.base import Bounder, _check_ir, _check_spec
from advrobust.relax.lipschitz import GlobalLipschitz, _float64

__all__ = ["RadiusResult", "certified_radius"]


@dataclass(frozen=True)
class RadiusResult:
    """Certified radii.

    Attributes:
        radius: (N,) the largest radius certified (0 where none, e.g. misclassified samples;
            ``max_radius`` where the whole search range is certified).
        upper: (N,) the smallest radius tried and not certified (inf for the closed form or
            when none failed): the bisection's bracket is ``[radius, upper]``.
        method: the bounder's class name.
        norm: the threat norm.
        stats: ``calls``, ``seconds`` and ``cut``: the indices of the samples whose search the
            ``time_limit`` stopped early (their bracket is wider than ``rtol``, still sound).
    """

    radius: Tensor
    upper: Tensor
    method: str
    norm: str
    stats: dict[str, Any] = field(default_factory=dict)


def _certified(method: Bounder, network: Network, x: Tensor, spec: Spec, threat: LpBall,
               radius: float) -> bool:
    lower = method._bound(network, x, threat.with_eps(radius), spec).lower
    return bool((lower >= VERIFY_TOLERANCE).all())


def _bisect(method: Bounder, network: Network, x: Tensor, spec: Spec, threat: LpBall,
            start: float, max_radius: float, steps: int, rtol: float,
            deadline: float = math.inf) -> tuple[float, float, int, bool]:
    """Exponential search from ``start`` then bisection: (certified, failed, calls, cut).

    ``cut``: the clock passed ``deadline`` (checked before each bound call) with the bracket
    still open; ``[certified, failed]`` is then the bracket reached so far."""
    good, bad, calls = 0.0, math.inf, 0
    r = min(start, max_radius)
    while bad == math.inf and calls < steps:
        if time.perf_counter() >= deadline:
            return good, bad, calls, True
        calls += 1
        if _certified(method, network, x, spec, threat, r):
            good = r
            if r >= max_radius:
                return good, math.inf, calls, False
            r = min(2 * r, max_radius)
        else:
            bad = r
    while calls < steps and bad - good > rtol * max(bad, 1e-12):
        if time.perf_counter() >= deadline:
            return good, bad, calls, True
        mid = (good + bad) / 2
        calls += 1
        if _certified(method, network, x, spec, threat, mid):
            good = mid
        else:
            bad = mid
    return good, bad, calls, False


def certified_radius(method: Bounder, model: nn.Module, x: Tensor, y: Tensor,
                     norm: str | Norm = "linf", *, lo: float = 0.0, hi: float = 1.0,
                     spec: Spec | None = None, max_radius: float | None = None,
                     steps: int = 30, rtol: float = 1e-3, time_limit: float | None = None,
                     progress: bool = False) -> RadiusResult:
    """The largest radius that ``method`` certifies around each sample.

    Args:
        method: a configured bounder (``GlobalLipschitz()`` is solved in closed form).
        model: a supported ``nn.Sequential`` returning logits.
        x: (N, ...) clean inputs in ``[lo, hi]``; y: (N,) labels.
        norm: the threat norm (``"linf"``, ``"l2"``, ``"l1"``).
        lo, hi: the input box of the threat.
        spec: rows that must stay positive (default: margins ``e_y - e_t``).
        max_radius: the search stops there (default: the largest distance inside the box,
            ``(hi - lo)`` times 1, sqrt(d) or d for linf, l2, l1).
        steps: bound calls per sample (exponential search plus bisection).
        rtol: relative width of the final bracket.
        time_limit: wall-clock seconds for the whole bisection (None: no limit), checked before
            each bound call. The samples are searched in order, each with an equal share of
            the time left (what a sample does not use passes on to the next); a sample whose
            share runs out keeps the bracket it reached (``radius`` is still certified) and
            is listed in ``stats["cut"]``.
        progress: show a progress bar, one step per sample.

    Returns:
        :class:`RadiusResult`.

    Raises:
        InvalidParameterError: a method that is not a Bounder, or bad numbers.

    Examples::

        >>> res = certified_radius(CROWN(), model, x, y, "l2")
        >>> res.radius  # (N,)
    """
    if not isinstance(method, Bounder):
        raise InvalidParameterError(
            "The 'method' parameter of certified_radius must be a Bounder (IBP(), CROWN(), "
            f"GlobalLipschitz(), LocalLipschitz(), ...). Got {type(method).__name__} instead.")
    steps = check_int(steps, "steps", "certified_radius", low=1)
    rtol = check_float(rtol, "rtol", "certified_radius", low=0.0, low_open=True)
    if time_limit is not None:
        time_limit = check_float(time_limit, "time_limit", "certified_radius", low=0.0,
                                 low_open=True, allow_inf=True)
    norm = Norm.parse(norm, owner="certified_radius")
    dim = math.prod(x.shape[1:])
    default = (hi - lo) * {Norm.LINF: 1.0, Norm.L2: math.sqrt(dim), Norm.L1: float(dim)}[norm]
    max_r = default if max_radius is None else check_float(
        max_radius, "max_radius", "certified_radius", low=0.0, low_open=True)
    threat = LpBall(norm, max_r, lo, hi)
    name = type(method).__name__
    start = time.perf_counter()
    with eval_mode(model, who=name):
        clean = check_batch(model, x, y, threat, who=name)
        spec = _check_spec(spec, y, clean)
        network = from_module(model, tuple(x.shape[1:]))
        x = x.detach()
        with torch.no_grad():
            _check_ir(network, model, x, clean)  # refuse a custom forward the IR misses
            closed = GlobalLipschitz().closed_form_radius(network, x, spec, norm)
        if isinstance(method, GlobalLipschitz):
            radius = closed.clamp(max=max_r)
            upper = torch.full_like(radius, math.inf)
            calls, cut = 0, list[int]()
        else:
            deadline = math.inf if time_limit is None else start + time_limit
            # float64 copy once: the bisection's many bound calls share it (and its rounding)
            radius, upper, calls, cut = _per_sample(
                method, _float64(network), x.double(), spec, threat, closed, max_r, steps, rtol,
                deadline, progress_bar(total=x.shape[0], desc=f"radius ({name})",
                                       unit="sample", disable=not progress))
    return RadiusResult(radius=radius, upper=upper, method=name, norm=norm.value,
                        stats={"calls": calls, "seconds": time.perf_counter() - start,
                               "cut": cut})


def _per_sample(method: Bounder, network: Network, x: Tensor, spec: Spec, threat: LpBall,
                closed: Tensor, max_r: float, steps: int, rtol: float, deadline: float,
                bar: Any) -> tuple[Tensor, Tensor, int, list[int]]:
    n = x.shape[0]
    radius = torch.zeros(n, dtype=torch.float64)
    upper = torch.full((n,), math.inf, dtype=torch.float64)
    calls, cut = 0, list[int]()
    spec = Spec(spec.C.to(x.dtype), spec.d.to(x.dtype))
    with torch.no_grad():
        clean = spec.apply(network.forward(x))
    with bar:
        for s in range(n):
            if not bool((clean[s] > VERIFY_TOLERANCE).all()):
                upper[s] = 0.0  # misclassified (or on the boundary): nothing to certify
                bar.update(1)
                continue
            spec_s = Spec(spec.C[s:s + 1], spec.d[s:s + 1])
            # start near the cheap global certificate (a bounder at least as tight certifies it)
            start = float(closed[s]) if float(closed[s]) > 0 else 1e-3 * max_r
            now = time.perf_counter()  # an equal share of the time left, to every sample left
            own = now + (deadline - now) / (n - s) if math.isfinite(deadline) else math.inf
            good, bad, used, stopped = _bisect(method, network, x[s:s + 1], spec_s, threat,
                                               start, max_r, steps, rtol, own)
            radius[s], upper[s] = good, bad
            calls += used
            if stopped:
                cut.append(s)
            if cut:
                bar.set_postfix_str(f"{len(cut)} cut by the time limit", refresh=False)
            bar.update(1)
    return radius, upper, calls, cut
