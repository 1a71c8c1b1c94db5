"""The checks behind :func:`~advrobust.evaluation.campaign.config.parse_config`.

Each ``check_*`` appends every problem it finds to ``out`` and returns its best reading of the
section, so that one pass reports all the problems of a file.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from pathlib import Path
from typing import Any

from advrobust.evaluation.campaign.config import (
    _ATTACK,
    _CERTIFY,
    _DATA,
    _MODEL,
    _THREAT,
    BOUNDERS,
    DATASETS,
    EXACT,
    NORMS,
    AttackSpec,
    ModelSpec,
    ThreatSpec,
    _unknown,
    finite_positive,
)

#: Attacks assembled from other attacks or needing files: not available by name in a campaign.
_NOT_BY_NAME = {"ensemble", "transfer", "dictionary", "universal", "universal-apply", "strongest"}
_STRONGEST_NORMS = ("linf", "l2")


def attack_classes() -> dict[str, type]:
    """Registered attacks usable by name in a campaign, by their ``cli_name``."""
    from advrobust.attacks import attack_classes as registered

    return {name: cls for name, cls in registered().items() if name not in _NOT_BY_NAME}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_data(raw: dict[str, Any], base: Path, out: list[str]) -> dict[str, Any]:
    """``[data]``: name, dir, split, start / n or indices."""
    _unknown("data", raw, _DATA, out)
    name = raw.get("name", "digits")
    if name not in DATASETS:
        out.append(f"data.name must be one of {{{', '.join(DATASETS)}}}. Got {name!r}.")
    split = raw.get("split", "test")
    if split not in ("train", "test"):
        out.append(f"data.split must be one of {{train, test}}. Got {split!r}.")
    data: dict[str, Any] = {"name": name, "split": split, "dir": None}
    if raw.get("dir") is not None:
        folder = (base / str(raw["dir"])).resolve()
        if not folder.is_dir():
            out.append(f"data.dir: no such folder {str(folder)!r}.")
        data["dir"] = str(folder)
    if "indices" in raw:
        idx = raw["indices"]
        if ("start" in raw or "n" in raw):
            out.append("data: give either 'indices' or 'start' / 'n', not both.")
        if (not isinstance(idx, list) or not idx
                or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                           for i in idx) or len(set(idx)) != len(idx)):
            out.append(f"data.indices must be a non-empty list of distinct ints >= 0. Got {idx!r}.")
        data["indices"] = list(idx) if isinstance(idx, list) else []
        return data
    start, n = raw.get("start", 0), raw.get("n", 100)
    for key, value, low in (("start", start, 0), ("n", n, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            out.append(f"data.{key} must be an int >= {low}. Got {value!r}.")
    data["indices"] = list(range(start, start + n)) if isinstance(start, int) and \
        isinstance(n, int) and n > 0 and start >= 0 else []
    return data


def check_models(tables: list[dict[str, Any]], base: Path, out: list[str]) -> list[ModelSpec]:
    """``[[models]]``: a unique name and exactly one existing checkpoint / onnx file."""
    models: list[ModelSpec] = []
    for i, t in enumerate(tables):
        where = f"models[{i}]"
        _unknown(where, t, _MODEL, out)
        name = t.get("name", f"model{i}")
        if not isinstance(name, str) or not name:
            out.append(f"{where}.name must be a non-empty string. Got {name!r}.")
            continue
        if any(m.name == name for m in models):
            out.append(f"{where}.name {name!r} is used twice; model names must be unique.")
        kinds = [k for k in ("checkpoint", "onnx") if k in t]
        if len(kinds) != 1:
            out.append(f"{where} needs exactly one of 'checkpoint' or 'onnx'. Got {kinds}.")
            continue
        path = (base / str(t[kinds[0]])).resolve()
        if not path.is_file():
            out.append(f"{where}.{kinds[0]}: no such file {str(path)!r}.")
            continue
        models.append(ModelSpec(name=name, path=str(path), kind=kinds[0], sha256=_sha256(path)))
    return models


def check_threats(tables: list[dict[str, Any]], out: list[str]) -> list[ThreatSpec]:
    """``[[threats]]``: a norm and a non-empty grid of finite eps > 0; one table per norm."""
    threats: list[ThreatSpec] = []
    for i, t in enumerate(tables):
        where = f"threats[{i}]"
        _unknown(where, t, _THREAT, out)
        norm, eps = t.get("norm"), t.get("eps")
        if norm not in NORMS:
            out.append(f"{where}.norm must be one of {{{', '.join(NORMS)}}}. Got {norm!r}.")
            continue
        if any(th.norm == norm for th in threats):
            out.append(f"{where}: a second {norm} threat; put all its radii in one eps list.")
        grid = eps if isinstance(eps, list) else [eps]
        bad = [e for e in grid if not finite_positive(e)]
        if not grid or bad or eps is None:
            out.append(f"{where}.eps must be a non-empty list of finite numbers > 0. Got "
                       f"{eps!r}" + (f" (bad: {bad})." if bad else "."))
            continue
        threats.append(ThreatSpec(norm=str(norm),
                                  eps=tuple(sorted({float(e) for e in grid if e is not None}))))
    return threats


def _attack_norms(name: str) -> tuple[str, ...]:
    if name == "strongest":
        return _STRONGEST_NORMS
    cls = attack_classes()[name]
    return tuple(sorted(n.value for n in cls.norms))  # type: ignore[attr-defined]


def _accepted(name: str) -> list[str]:
    from advrobust.attacks import strongest

    fn: Any = strongest if name == "strongest" else attack_classes()[name].__init__  # type: ignore[misc]
    return [p.name for p in inspect.signature(fn).parameters.values()  # type: ignore[arg-type]
            if p.kind is p.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD
                                            and p.name not in ("self", "threat"))]


def build_attack(spec: AttackSpec, norm: str, threat: Any = None) -> Any:
    """The configured attack object for a threat of ``norm`` (``norm`` parameter filled in)."""
    from advrobust.attacks import strongest
    from advrobust.core.threat import LpBall

    if spec.name == "strongest":
        return strongest(threat if threat is not None else LpBall(norm, 0.1), **spec.params)
    cls = attack_classes()[spec.name]
    params = dict(spec.params)
    if "norm" in inspect.signature(cls.__init__).parameters:  # type: ignore[misc]
        params.setdefault("norm", norm)
    return cls(**params)


def check_attacks(tables: list[dict[str, Any]], threats: list[ThreatSpec],
                  out: list[str]) -> list[AttackSpec]:
    """``[[attacks]]``: known names, parameters they take, norms matching the threats."""
    known = attack_classes()
    specs: list[AttackSpec] = []
    threat_norms = [t.norm for t in threats]
    for i, t in enumerate(tables):
        where = f"attacks[{i}]"
        _unknown(where, t, _ATTACK, out)
        name, params = t.get("name"), t.get("params", {})
        if name != "strongest" and name not in known:
            out.append(f"{where}.name must be 'strongest' or one of {{{', '.join(known)}}}. "
                       f"Got {name!r}.")
            continue
        if not isinstance(params, dict):
            out.append(f"{where}.params must be a table. Got {params!r}.")
            continue
        supported = _attack_norms(name)
        norms = t.get("norms", [n for n in threat_norms])
        if not isinstance(norms, list) or any(n not in NORMS for n in norms):
            out.append(f"{where}.norms must be a list of {{{', '.join(NORMS)}}}. Got {norms!r}.")
            continue
        own = params.get("norm")
        for n in norms:
            if n not in supported:
                out.append(f"{where}: {name} supports the norms {{{', '.join(supported)}}} but "
                           f"runs on the {n} threat; restrict it with norms = [...].")
            elif own is not None and own != n:
                out.append(f"{where}: params.norm = {own!r} does not match the {n} threat it "
                           f"runs on; drop params.norm (it follows the threat) or set norms.")
        spec = AttackSpec(name=name, params=dict(params), norms=tuple(norms))
        accepted = _accepted(name)
        wrong = [k for k in params if k not in accepted]
        if wrong:
            cls_name = "strongest" if name == "strongest" else known[name].__name__
            out.append(f"{where}.params: {cls_name} has no parameter "
                       f"{', '.join(repr(k) for k in wrong)}; it takes "
                       f"{{{', '.join(accepted)}}}.")
            continue
        for n in [n for n in norms if n in supported][:1]:
            try:
                build_attack(spec, n)
            except (TypeError, ValueError) as exc:
                out.append(f"{where}: {name} rejects params {params!r}: {exc}")
        specs.append(spec)
    return specs


def check_certify(raw: dict[str, Any], out: list[str]) -> tuple[tuple[str, ...], float]:
    """``[certify]``: method names and the per-sample time limit of exact methods."""
    _unknown("certify", raw, _CERTIFY, out)
    methods = raw.get("methods", ["crown"])
    allowed = BOUNDERS + EXACT + ("auto",)
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(methods, list):
        out.append(f"certify.methods must be a list. Got {methods!r}.")
        methods = []
    for m in methods:
        if m not in allowed:
            out.append(f"certify.methods: {m!r} is not one of {{{', '.join(allowed)}}}.")
    limit = raw.get("time_limit", 10.0)
    if not finite_positive(limit) and limit != math.inf:
        out.append(f"certify.time_limit must be a number > 0 (seconds). Got {limit!r}.")
        limit = 10.0
    return tuple(m for m in methods if m in allowed), float(limit)
