"""Certified training: minimise the cross-entropy of a verified lower bound on the margins.

For the margin rows ``e_y - e_t`` a sound lower bound ``lb_t <= min_{x' in S(x)} f_y - f_t``
gives worst-case logits ``z_y = 0, z_t = -lb_t``; their cross-entropy upper-bounds the robust
cross-entropy. The loss mixes it with the clean loss, ``kappa * CE(f(x), y) + (1 - kappa) *
CE(z(eps), y)``, while eps ramps up from 0 (Gowal et al. 2018). The bounds come from the
verification package's differentiable passes (:mod:`advrobust.relax`); no second bound pass
lives here. They are computed on the network IR, in which batch-norm layers use their running
statistics (the reference models have none).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall
from advrobust.errors import InvalidParameterError
from advrobust.network.graph import Graph
from advrobust.network.ir import Network
from advrobust.training.objective import Objective
from advrobust.training.ramps import EpsSchedule, Ramp

__all__ = ["CROWNIBP", "IBPTraining", "worst_case_cross_entropy"]


def worst_case_cross_entropy(lower: Tensor) -> Tensor:
    """Mean cross-entropy of the worst-case logits ``(0, -lower)`` with the true class first.

    Args:
        lower: (N, K) lower bounds on ``f_y - f_t`` for the K other classes.
    """
    logits = torch.cat([lower.new_zeros(lower.shape[0], 1), -lower], dim=1)
    return F.cross_entropy(logits, lower.new_zeros(lower.shape[0], dtype=torch.long))


def _check_ramp(value: object, name: str, owner: str) -> Ramp:
    if not isinstance(value, Ramp):
        raise InvalidParameterError(
            f"The '{name}' parameter of {owner} must be a Ramp (or EpsSchedule). "
            f"Got {type(value).__name__} instead.")
    return value


class _Certified(Objective):
    """Shared body: schedules, IR cache, clean / robust mixing."""

    threat: LpBall
    schedule: EpsSchedule
    kappa_schedule: Ramp

    def _setup(self, threat: LpBall, schedule: EpsSchedule, kappa_schedule: Ramp) -> None:
        owner = type(self).__name__
        if not isinstance(threat, LpBall):
            raise InvalidParameterError(
                f"The 'threat' parameter of {owner} must be an LpBall. "
                f"Got {type(threat).__name__} instead.")
        if not isinstance(schedule, EpsSchedule):
            raise InvalidParameterError(
                f"The 'schedule' parameter of {owner} must be an EpsSchedule. "
                f"Got {type(schedule).__name__} instead.")
        self._eps = schedule.resolve(threat.eps, owner)
        kappa = _check_ramp(kappa_schedule, "kappa_schedule", owner)
        if not (0 <= kappa.start <= 1 and 0 <= kappa.end <= 1):
            raise InvalidParameterError(
                f"The 'kappa_schedule' parameter of {owner} must stay in [0, 1]. Got "
                f"start={kappa.start!r}, end={kappa.end!r} instead.")
        self._network: tuple[int, tuple[int, ...], Network | Graph] | None = None

    def eps_at(self, progress: float) -> float:
        """The training eps at ``progress`` in [0, 1]."""
        return self._eps(progress)

    def prepare(self, model: nn.Module, input_shape: Sequence[int]) -> None:
        """Build the network IR now, so an unsupported layer fails before the first batch.

        Raises:
            UnsupportedLayerError: a layer the bound passes cannot represent.
        """
        self._ir(model, tuple(int(s) for s in input_shape))

    def _ir(self, model: nn.Module, shape: tuple[int, ...]) -> Network | Graph:
        """The chain IR of a Sequential, else the graph IR of any module torch.fx traces into
        registered ops (residual networks, concatenations, sigmoid / tanh ...)."""
        cached = self._network
        if cached is None or cached[0] != id(model) or cached[1] != shape:
            from advrobust.relax.base import as_ir

            self._network = cached = (id(model), shape, as_ir(model, shape))
        return cached[2]

    def _lower(self, network: Network | Graph, x: Tensor, spec: Spec, threat: LpBall,
               progress: float) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement _lower()")

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: float) -> Tensor:
        logits = model(x)
        clean = F.cross_entropy(logits, y)
        eps, kappa = self.eps_at(progress), self.kappa_schedule(progress)
        if eps == 0 or kappa == 1:
            return clean
        network = self._ir(model, tuple(x.shape[1:]))
        spec = Spec.margins(y, logits.shape[1])
        lower = self._lower(network, x, spec, self.threat.with_eps(eps), progress)
        return kappa * clean + (1 - kappa) * worst_case_cross_entropy(lower)


class IBPTraining(_Certified):
    """Interval bound propagation training.

    Gowal, Dvijotham, Stanforth, Bunel, Qin, Uesato, Arandjelovic, Mann & Kohli, "On the
    effectiveness of interval bound propagation for training verifiably robust models" (2018).
    Bounds: :func:`advrobust.relax.ibp.interval_bounds` with the spec folded into the last layer.

    Args:
        threat: the final threat set (its eps is the end of the ramp).
        schedule: the eps ramp (must not end above ``threat.eps``).
        kappa_schedule: weight of the clean loss (Gowal et al.: 1 down to 0.5).
    """

    def __init__(self, *, threat: LpBall, schedule: EpsSchedule | None = None,
                 kappa_schedule: Ramp | None = None) -> None:
        self.threat = threat
        self.schedule = schedule if schedule is not None else EpsSchedule()
        self.kappa_schedule = (kappa_schedule if kappa_schedule is not None
                               else Ramp(start=1.0, end=0.5, warmup=0.0, ramp=0.5))
        self._setup(threat, self.schedule, self.kappa_schedule)

    def _lower(self, network: Network | Graph, x: Tensor, spec: Spec, threat: LpBall,
               progress: float) -> Tensor:
        from advrobust.relax.ibp import interval_bounds

        lower, _ = interval_bounds(network, *threat.input_bounds(x), c=spec.C)
        return lower


class CROWNIBP(_Certified):
    """CROWN-IBP training: a mix of the CROWN and IBP lower bounds, IBP intermediate bounds.

    Zhang, Chen, Xiao, Gowal, Stanforth, Li, Boning & Hsieh, "Towards stable and efficient
    training of verifiably robust neural networks" (ICLR 2020). The lower bound is
    ``beta * CROWN(IBP intermediates) + (1 - beta) * IBP``, with ``beta`` ramped from 1 to 0 while
    eps ramps up. Bounds: :func:`advrobust.relax.crown_lower` on the layer bounds of
    :func:`advrobust.relax.interval_layer_bounds` (one interval pass serves both).

    Args:
        threat: the final threat set.
        schedule: the eps ramp (must not end above ``threat.eps``).
        beta_schedule: weight of the CROWN bound, in [0, 1] (default 1 down to 0).
        kappa_schedule: weight of the clean loss (default 1 down to 0.5).
    """

    def __init__(self, *, threat: LpBall, schedule: EpsSchedule | None = None,
                 beta_schedule: Ramp | None = None, kappa_schedule: Ramp | None = None) -> None:
        self.threat = threat
        self.schedule = schedule if schedule is not None else EpsSchedule()
        self.beta_schedule = (beta_schedule if beta_schedule is not None
                              else Ramp(start=1.0, end=0.0, warmup=0.0, ramp=0.5))
        self.kappa_schedule = (kappa_schedule if kappa_schedule is not None
                               else Ramp(start=1.0, end=0.5, warmup=0.0, ramp=0.5))
        self._setup(threat, self.schedule, self.kappa_schedule)
        beta = _check_ramp(self.beta_schedule, "beta_schedule", "CROWNIBP")
        if not (0 <= beta.start <= 1 and 0 <= beta.end <= 1):
            raise InvalidParameterError(
                "The 'beta_schedule' parameter of CROWNIBP must stay in [0, 1]. Got "
                f"start={beta.start!r}, end={beta.end!r} instead.")

    def _lower(self, network: Network | Graph, x: Tensor, spec: Spec, threat: LpBall,
               progress: float) -> Tensor:
        from advrobust.relax.crown import crown_lower
        from advrobust.relax.ibp import interval_layer_bounds, spec_interval

        bounds = interval_layer_bounds(network, *threat.input_bounds(x))
        ibp, _ = spec_interval(network, bounds, spec.C)
        beta = self.beta_schedule(progress)
        if beta == 0:
            return ibp
        crown = crown_lower(network, x, threat, spec.C, bounds=bounds)
        return beta * crown + (1 - beta) * ibp
