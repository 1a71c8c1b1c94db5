"""Attack registry and construction for ``advrobust attack``: names -> configured objects.

Attack classes are found by their ``cli_name``; each is built from its constructor signature
(common flags to parameters of the same name, ``--param NAME=VALUE`` for any other, converted
to the parameter's annotated type).
"""

from __future__ import annotations

import argparse
import inspect
import json
import textwrap
import typing
from typing import Any

from advrobust.cli._common import load_model
from advrobust.errors import InvalidParameterError

#: Common flags and the constructor parameter each one sets.
COMMON_FLAGS = {"steps": "steps", "step_size": "step_size", "restarts": "restarts",
                "dictionary": "dictionary"}
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}
#: Attacks built from other attacks, with how the command line configures them.
COMPOSITES = {
    "ensemble": "--members NAME,NAME,... (each configured by --param NAME.PARAM=VALUE and the "
                "common flags it takes); cascade=True",
    "transfer": "--source-model CKPT --source-attack NAME (default pgd; the common flags and "
                "--param configure it); transfer rate reported",
}


def attack_classes() -> dict[str, type]:
    """Every attack usable by name (:func:`advrobust.attacks.attack_classes`)."""
    from advrobust.attacks import attack_classes as registered

    return registered()


#: Every attack of :func:`advrobust.attacks.attack_classes`: its norms and its parameters
#: with their defaults (the composites: how the command line configures them), spelled out so
#: that ``attack --help`` does not import torch (tests/cli/test_cli_help_no_torch.py keeps this
#: equal to :func:`describe_attacks`).
ATTACKS: dict[str, tuple[str, str]] = {
    "apgd": ("l2,linf", "loss='ce' steps=100 restarts=1 rho=0.75 random_start=True"),
    "apgd-t": ("l2,linf", "steps=100 n_target_classes=9 restarts=1 rho=0.75 random_start=True"),
    "boundary": ("l2", "steps=5000 spherical_step=0.01 source_step=0.01 init='uniform'"),
    "cw": ("l2,linf", "norm='l2' confidence=0.0 steps=100 lr=0.1 binary_search_steps=5 "
                      "initial_const=0.1 abort_early=True"),
    "deepfool": ("l2,linf", "norm='l2' overshoot=0.02 steps=50 candidates=10"),
    "dictionary": ("l1,l2,linf", "dictionary=<required> method='sparse' steps=20 step_size=1.0 "
                                 "lambda1=None lambda2=None loss=None kappa=None delta=0.5 "
                                 "beta=0.0001 dataset=None"),
    "ensemble": ("l1,l2,linf", COMPOSITES["ensemble"]),
    "fab-t": ("l2,linf", "steps=100 n_target_classes=9 restarts=1 alpha_max=0.1 eta=1.05 "
                         "beta=0.9"),
    "fgsm": ("l1,l2,linf", "loss='ce' targeted_loss='target-vs-true' l1_sparsity=0.0"),
    "hopskipjump": ("l2", "steps=40 init_num_evals=100 max_num_evals=10000 gamma=1.0"),
    "jsma": ("l1,l2,linf", "theta=1.0 gamma=0.1"),
    "lbfgs": ("l2,linf", "c_init=0.01 search_steps=5 max_iter=100"),
    "onepixel": ("l1,l2,linf", "pixels=1 popsize=400 iterations=100"),
    "pgd": ("l1,l2,linf", "steps=40 step_size=None restarts=1 random_start=True loss='ce' "
                          "targeted_loss='target-vs-true' l1_sparsity=0.01"),
    "square": ("l2,linf", "queries=5000 p_init=0.8 restarts=1"),
    "strongest": ("l2,linf", "steps=100 n_target_classes=9 queries=5000 fab=False"),
    "transfer": ("l1,l2,linf", COMPOSITES["transfer"]),
    "universal": ("l1,l2,linf", "method='deepfool' max_passes=5 target_fooling_rate=0.8 "
                                "overshoot=0.02 deepfool_steps=50 batch_size=1 step_size=None "
                                "penalty=0.1"),
    "universal-apply": ("l1,l2,linf", "perturbation=<required>"),
}


def describe_attacks() -> dict[str, tuple[str, str]]:
    """:data:`ATTACKS` as the registered classes describe themselves (imports torch)."""
    described = {}
    for name, cls in attack_classes().items():
        norms = ",".join(sorted(n.value for n in cls.norms))  # type: ignore[attr-defined]
        params = " ".join(f"{p.name}={_default_text(p)}" for p in _parameters(cls).values())
        described[name] = (norms, COMPOSITES.get(name) or params or "(no parameters)")
    return described


def attack_help() -> str:
    """The ``--help`` table: every attack, its norms and its parameters with their defaults."""
    lines = ["attacks (NAME [norms]: parameters and defaults; set any of them with --param "
             "NAME=VALUE,", "steps / step_size / restarts also with --steps, --step-size, "
             "--restarts; an attack's own 'norm' follows --norm):"]
    for name, (norms, described) in ATTACKS.items():
        lines.append(textwrap.fill(f"{name:<16}[{norms}] {described}", width=98,
                                   initial_indent="  ", subsequent_indent=" " * 20,
                                   break_on_hyphens=False))
    return "\n".join(lines)


def _default_text(param: inspect.Parameter) -> str:
    return "<required>" if param.default is inspect.Parameter.empty else repr(param.default)


def _parameters(cls: type) -> dict[str, inspect.Parameter]:
    sig = inspect.signature(cls.__init__)  # type: ignore[misc]
    return {n: p for n, p in sig.parameters.items()
            if n != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def _target_type(cls: type, param: inspect.Parameter) -> Any:
    """The type a ``--param`` value converts to: the default's, else the annotation's."""
    if param.default is not inspect.Parameter.empty and param.default is not None:
        return type(param.default)
    try:
        hint = typing.get_type_hints(cls.__init__).get(param.name)  # type: ignore[misc]
    except Exception:  # unresolvable annotations: keep the raw string
        return str
    options = typing.get_args(hint) or (hint,)
    for t in (bool, int, float, str):
        if t in options:
            return t
    return str


def convert_value(cls: type, param: inspect.Parameter, raw: str) -> Any:
    """Convert the text of ``--param NAME=VALUE`` to the parameter's type."""
    if raw.strip().lower() in ("none", "null") and param.default is None:
        return None
    kind = _target_type(cls, param)
    try:
        if kind is bool:
            if raw.strip().lower() not in _TRUE | _FALSE:
                raise ValueError(raw)
            return raw.strip().lower() in _TRUE
        if kind in (int, float, str):
            return kind(raw)
        return json.loads(raw)
    except ValueError:
        raise InvalidParameterError(
            f"--param {param.name}={raw}: the '{param.name}' parameter of {cls.__name__} takes "
            f"{getattr(kind, '__name__', kind)} values. Got {raw!r} instead.") from None


def _split_params(items: list[str]) -> list[tuple[str, str]]:
    """``--param`` values as (name, raw value) pairs."""
    pairs = []
    for item in items:
        pname, sep, raw = item.partition("=")
        if not sep or not pname:
            raise InvalidParameterError(f"--param must be NAME=VALUE. Got {item!r} instead.")
        pairs.append((pname, raw))
    return pairs


def _common_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The common flags given on the command line, by constructor parameter."""
    return {pname: getattr(args, flag) for flag, pname in COMMON_FLAGS.items()
            if getattr(args, flag, None) is not None}


def _threat_norm(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults taken from the run: ``--norm`` for an attack's own ``norm`` parameter (C&W,
    DeepFool), so that ``--attack cw --norm linf`` runs the linf variant, and ``--data`` for a
    ``dataset`` parameter (a dictionary file recorded on another data set is refused);
    ``--param`` still wins."""
    norm, data = getattr(args, "norm", None), getattr(args, "data", None)
    defaults = {} if norm is None else {"norm": str(norm).lower()}
    return defaults if data is None else {**defaults, "dataset": str(data)}


def _construct(name: str, flags: dict[str, Any], params: list[tuple[str, str]],
               strict_flags: bool = True, defaults: dict[str, Any] | None = None,
               flag: str = "--attack") -> Any:
    """The attack called ``name`` from common-flag values and ``--param`` pairs.

    With ``strict_flags`` a common flag the attack does not take is an error; otherwise (for
    ensemble members) it is skipped. ``defaults`` fill the parameters the attack has and that
    nothing else set. ``flag`` names the option that named the attack, for errors.
    """
    classes = attack_classes()
    if name not in classes or (name in COMPOSITES and flag != "--attack"):
        allowed = [n for n in classes if n not in COMPOSITES or flag == "--attack"]
        raise InvalidParameterError(
            f"{flag} must be one of {{{', '.join(allowed)}}}. Got {name!r} instead.")
    cls = classes[name]
    accepted = _parameters(cls)
    kwargs: dict[str, Any] = {k: v for k, v in (defaults or {}).items() if k in accepted}
    for pname, value in flags.items():
        if pname in accepted:
            kwargs[pname] = value
        elif strict_flags:
            common = next(f for f, p in COMMON_FLAGS.items() if p == pname)
            raise InvalidParameterError(
                f"--{common.replace('_', '-')} does not apply to {name}: {cls.__name__} takes "
                f"{{{', '.join(accepted) or 'no parameters'}}}.")
    for pname, raw in params:
        if pname not in accepted:
            raise InvalidParameterError(
                f"--param {pname}: {cls.__name__} has no parameter {pname!r}; it takes "
                f"{{{', '.join(accepted) or 'no parameters'}}}.")
        kwargs[pname] = convert_value(cls, accepted[pname], raw)
    missing = [p for p, par in accepted.items()
               if par.default is inspect.Parameter.empty and p not in kwargs]
    if missing:
        prefix = "" if flag == "--attack" else f"{name}."
        hints = []
        for pname in missing:
            flags_for = [f for f, q in COMMON_FLAGS.items() if q == pname]
            via = f"--{flags_for[0].replace('_', '-')} VALUE or " if flags_for else ""
            hints.append(f"{pname!r} (give {via}--param {prefix}{pname}=VALUE)")
        raise InvalidParameterError(f"{flag} {name} needs {', '.join(hints)}. Got none.")
    return cls(**kwargs)


def build_attack(name: str, args: argparse.Namespace) -> Any:
    """The attack called ``name``, configured from the common flags and ``--param`` values.

    ``ensemble`` and ``transfer`` are assembled from the attacks named by ``--members`` and
    ``--source-attack`` (see the module docstring).
    """
    params = _split_params(getattr(args, "param", None) or [])
    if name == "ensemble":
        return _build_ensemble(args, params)
    if name == "transfer":
        return _build_transfer(args, params)
    return _construct(name, _common_flags(args), params, defaults=_threat_norm(args))


def _build_ensemble(args: argparse.Namespace, params: list[tuple[str, str]]) -> Any:
    from advrobust.attacks import Ensemble

    members = [m.strip() for m in (getattr(args, "members", None) or "").split(",") if m.strip()]
    if not members:
        raise InvalidParameterError(
            "--attack ensemble needs --members NAME,NAME,... (e.g. apgd,apgd-t,square). Got none.")
    own = [(k, v) for k, v in params if "." not in k]
    for pname, _ in own:
        if pname != "cascade":
            raise InvalidParameterError(
                f"--param {pname}: the ensemble takes {{cascade}}; configure a member with "
                "--param MEMBER.NAME=VALUE.")
    for key, _ in params:
        if "." in key and key.partition(".")[0] not in members:
            raise InvalidParameterError(
                f"--param {key}: {key.partition('.')[0]!r} is not one of --members "
                f"{{{', '.join(members)}}}.")
    built = [_construct(m, _common_flags(args),
                        [(k.partition(".")[2], v) for k, v in params if k.partition(".")[0] == m],
                        strict_flags=False, defaults=_threat_norm(args), flag="--members")
             for m in members]
    cascade = True
    for _, raw in own:
        cascade = convert_value(Ensemble, _parameters(Ensemble)["cascade"], raw)
    return Ensemble(built, cascade=cascade)


def _build_transfer(args: argparse.Namespace, params: list[tuple[str, str]]) -> Any:
    from advrobust.attacks import Transfer

    if getattr(args, "source_model", None) is None:
        raise InvalidParameterError(
            "--attack transfer needs --source-model CKPT (the surrogate the attack is crafted "
            "on). Got none.")
    inner = _construct(getattr(args, "source_attack", None) or "pgd", _common_flags(args),
                       params, defaults=_threat_norm(args), flag="--source-attack")
    return Transfer(load_model(args.source_model).model, inner)
