"""Defense names -> configured training objectives (what ``advrobust train --defense`` uses).

``build_objective("pgd", eps=0.3, steps=10)`` turns a name and keyword parameters into an
:class:`~advrobust.training.Objective`. Parameters given as None are dropped (so a CLI can pass
every option it has); any other parameter the defense does not take is an error naming the ones
it does.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from advrobust.core.threat import LpBall, Norm
from advrobust.errors import InvalidParameterError
from advrobust.training.objective import Objective
from advrobust.training.ramps import EpsSchedule, Ramp

__all__ = ["DEFENSES", "build_objective", "describe_objective"]


def _threat(eps: float, norm: str) -> LpBall:
    return LpBall(Norm.parse(norm, owner="build_objective"), eps)


def _standard() -> Objective:
    from advrobust.training.objectives import Standard

    return Standard()


def _schedule(warmup: float, ramp: float | None) -> EpsSchedule | None:
    return None if ramp is None else EpsSchedule(warmup=warmup, ramp=ramp)


def _pgd(*, eps: float, norm: str = "linf", steps: int = 10, step_size: float | None = None,
         seed: int | None = None, warmup: float = 0.0, ramp: float | None = None) -> Objective:
    from advrobust.training.adversarial import AdversarialPGD

    return AdversarialPGD(threat=_threat(eps, norm), steps=steps, step_size=step_size, seed=seed,
                          schedule=_schedule(warmup, ramp))


def _fgsm(*, eps: float, norm: str = "linf", alpha: float | None = None,
          seed: int | None = None, warmup: float = 0.0, ramp: float | None = None) -> Objective:
    from advrobust.training.adversarial import FastFGSM

    return FastFGSM(threat=_threat(eps, norm), alpha=alpha, seed=seed,
                    schedule=_schedule(warmup, ramp))


def _trades(*, eps: float, norm: str = "linf", beta: float = 6.0, steps: int = 10,
            step_size: float | None = None, seed: int | None = None, warmup: float = 0.0,
            ramp: float | None = None) -> Objective:
    from advrobust.training.adversarial import TRADES

    return TRADES(threat=_threat(eps, norm), beta=beta, steps=steps, step_size=step_size,
                  seed=seed, schedule=_schedule(warmup, ramp))


def _tv(*, eps: float, norm: str = "linf", h: float = 1e-2,
        double_backprop: bool = False) -> Objective:
    from advrobust.training.regularizers import GradientNormPenalty

    return GradientNormPenalty(eps=eps, norm=norm, h=h, double_backprop=double_backprop)


def _tv_lip(*, eps: float, norm: str = "linf", lam: float = 0.01, h: float = 1e-2,
            double_backprop: bool = False) -> Objective:
    from advrobust.training.regularizers import GradientNormPenalty, LipschitzPenalty

    tv = GradientNormPenalty(eps=eps, norm=norm, h=h, double_backprop=double_backprop)
    return LipschitzPenalty(lam=lam, norm=norm, h=h, double_backprop=double_backprop, base=tv)


def _ibp(*, eps: float, norm: str = "linf", warmup: float = 0.1, ramp: float = 0.5,
         kappa_end: float = 0.5) -> Objective:
    from advrobust.training.certified import IBPTraining

    return IBPTraining(threat=_threat(eps, norm), schedule=EpsSchedule(warmup=warmup, ramp=ramp),
                       kappa_schedule=Ramp(start=1.0, end=kappa_end, warmup=warmup, ramp=ramp))


def _crown_ibp(*, eps: float, norm: str = "linf", warmup: float = 0.1, ramp: float = 0.5,
               kappa_end: float = 0.5) -> Objective:
    from advrobust.training.certified import CROWNIBP

    return CROWNIBP(threat=_threat(eps, norm), schedule=EpsSchedule(warmup=warmup, ramp=ramp),
                    beta_schedule=Ramp(start=1.0, end=0.0, warmup=warmup, ramp=ramp),
                    kappa_schedule=Ramp(start=1.0, end=kappa_end, warmup=warmup, ramp=ramp))


def _noise(*, sigma: float, seed: int | None = None) -> Objective:
    from advrobust.training.noise import NoiseAugmentation

    return NoiseAugmentation(sigma=sigma, seed=seed)


def _consistency(*, sigma: float, m: int = 2, lam: float = 5.0, eta: float = 0.5,
                 seed: int | None = None) -> Objective:
    from advrobust.training.smoothing import ConsistencyRegularization

    return ConsistencyRegularization(sigma=sigma, m=m, lam=lam, eta=eta, seed=seed)


def _smoothadv(*, sigma: float, eps: float = 1.0, steps: int = 2, m: int = 1,
               warmup: float = 0.1, seed: int | None = None) -> Objective:
    from advrobust.training.smoothing import SmoothAdv

    return SmoothAdv(sigma=sigma, eps=eps, steps=steps, m=m, warmup=warmup, seed=seed)


def _dict_adv(*, dictionary: str, steps: int = 5, step_size: float = 1.0,
              augmented_weight: float = 0.5) -> Objective:
    from advrobust.training.dictionary import DictionaryAdversarialTraining

    return DictionaryAdversarialTraining(dictionary=dictionary, steps=steps,
                                         step_size=step_size, augmented_weight=augmented_weight)


def _dict_noise(*, dictionary: str, scale: float | None = None, augmented_weight: float = 0.5,
                seed: int | None = None) -> Objective:
    from advrobust.training.dictionary import DictionaryNoiseTraining

    return DictionaryNoiseTraining(dictionary=dictionary, scale=scale,
                                   augmented_weight=augmented_weight, seed=seed)


def _gloro(*, eps: float, norm: str = "l2", warmup: float = 0.0, ramp: float | None = None,
           beta: float | None = None, seed: int | None = None) -> Objective:
    from advrobust.training.gloro import GloRo

    return GloRo(threat=_threat(eps, norm), schedule=_schedule(warmup, ramp), beta=beta,
                 seed=seed)


_FACTORIES: dict[str, Callable[..., Objective]] = {
    "standard": _standard,
    "pgd": _pgd,
    "fgsm": _fgsm,
    "trades": _trades,
    "tv": _tv,
    "tv-lip": _tv_lip,
    "ibp": _ibp,
    "crown-ibp": _crown_ibp,
    "noise": _noise,
    "gaussian": _noise,  # the name randomized smoothing papers use
    "consistency": _consistency,
    "smoothadv": _smoothadv,
    "dict-adv": _dict_adv,
    "dict-noise": _dict_noise,
    "gloro": _gloro,
}

#: Names accepted by :func:`build_objective` (and ``advrobust train --defense``).
DEFENSES: tuple[str, ...] = tuple(_FACTORIES)


def defense_params(name: str) -> dict[str, Any]:
    """The parameters a defense takes, with their defaults (``inspect.Parameter.empty`` if
    required)."""
    factory = _factory(name)
    return {n: p.default for n, p in inspect.signature(factory).parameters.items()}


def _factory(name: str) -> Callable[..., Objective]:
    if name not in _FACTORIES:
        raise InvalidParameterError(
            f"Unknown defense {name!r}. Valid defenses: {', '.join(DEFENSES)}.")
    return _FACTORIES[name]


def build_objective(name: str, **params: Any) -> Objective:
    """The training objective of a named defense.

    Args:
        name: one of :data:`DEFENSES`: ``standard``, ``pgd`` (Madry et al. 2018), ``fgsm``
            (fast FGSM, Wong et al. 2020), ``trades`` (Zhang et al. 2019), ``tv`` (gradient-norm
            penalty), ``tv-lip`` (gradient-norm plus Lipschitz penalty; Finlay & Oberman),
            ``ibp`` (Gowal et al. 2018), ``crown-ibp`` (Zhang et al. 2020), ``noise``
            (Gaussian noise augmentation, Cohen et al. 2019; alias ``gaussian``),
            ``consistency`` (noise training with consistency regularisation, Jeong & Shin
            2020), ``smoothadv`` (adversarial training of the smoothed classifier, Salman
            et al. 2019), ``dict-adv`` / ``dict-noise``
            (training on a learned adversarial dictionary's perturbations / Laplace noise in
            its span, issue 7), ``gloro`` (Lipschitz-margin training, Leino et al. 2021;
            l2 only).
        **params: the defense's parameters (``eps`` is required by the attack, regulariser
            and certified defenses, ``sigma`` by ``noise`` and the smoothing defenses,
            ``dictionary`` (a ``.npz`` path) by ``dict-*``; ``norm`` defaults to linf).
            None values are ignored. The defaults give a usable model on digits (clean
            accuracy within a few points of standard training); ``tv-lip``'s ``lam`` defaults
            to 0.01: with 0.1 the Lipschitz term dominates and clean accuracy fell to 0.41
            (bench/RESULTS.md).

    Returns:
        The configured objective; ``type(obj).__name__`` and ``obj.get_params()`` describe it
        for a checkpoint.

    Raises:
        InvalidParameterError: unknown name (lists the valid ones), a parameter the defense does
            not take (lists the ones it does), a missing ``eps``, or an invalid value.
    """
    factory = _factory(name)
    given = {k: v for k, v in params.items() if v is not None}
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        allowed = ", ".join(accepted) or "none"
        raise InvalidParameterError(
            f"The defense {name!r} does not take the parameter(s) {', '.join(unknown)}. "
            f"It takes: {allowed}.")
    missing = [n for n, p in accepted.items() if p.default is p.empty and n not in given]
    if missing:
        raise InvalidParameterError(
            f"The defense {name!r} needs the parameter(s) {', '.join(missing)}.")
    return factory(**given)


def describe_objective(objective: Objective) -> dict[str, Any]:
    """``{"type": class name, "params": ...}`` with only primitives, for checkpoint metadata.

    Threat sets become ``{"norm", "eps", "lo", "hi"}``; schedules and nested objectives are
    described recursively.
    """
    return {"type": type(objective).__name__, "params": _primitive(objective.get_params())}


def _primitive(value: Any) -> Any:
    from advrobust.core.config import Configurable

    if isinstance(value, LpBall):
        return {"norm": value.norm.value, "eps": value.eps, "lo": value.lo, "hi": value.hi}
    if isinstance(value, Objective):
        return describe_objective(value)
    if isinstance(value, Configurable):
        return {"type": type(value).__name__, "params": _primitive(value.get_params())}
    if isinstance(value, dict):
        return {str(k): _primitive(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_primitive(v) for v in value]
    from advrobust.models import to_primitive

    return to_primitive(value)  # numbers, strings, paths; any other object as its repr
