"""Campaign configuration: one TOML file, validated as a whole before any work starts.

A campaign file names models, a dataset slice, threat models (a norm and an eps grid each),
attacks, certificates, time limits and a seed::

    seed = 0
    batch_size = 25                      # samples per task (the scheduling granularity)

    [data]
    name = "mnist"                       # digits | mnist | cifar10
    dir = "../shared/data/mnist"         # optional; relative paths are relative to the file
    split = "test"
    start = 0
    n = 200

    [[models]]
    name = "ibp"                         # label used in the store and the report
    checkpoint = "ibp.pt"                # or: onnx = "net.onnx"

    [[threats]]
    norm = "linf"
    eps = [0.01, 0.02, 0.05, 0.1]

    [[attacks]]                          # run in this order, each on what is still open
    name = "pgd"                         # any registered attack name, or "strongest"
    params = { steps = 50, restarts = 1 }
    # norms = ["linf"]                   # optional: the threats it applies to

    [certify]
    methods = ["crown", "bab"]           # ibp, crown, lp (bounds), bab, milp (exact), or "auto"
    time_limit = 10.0                    # seconds per sample for each exact method (and LP)

Every problem found (unknown keys, bad values, unknown names, parameters an attack does not
take, an attack whose norm does not match a threat, missing files) is collected and reported in
one :class:`~advrobust.errors.CampaignConfigError`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from advrobust.errors import InvalidParameterError

__all__ = ["AttackSpec", "CampaignConfig", "CampaignConfigError", "ModelSpec", "ThreatSpec",
           "load_config", "parse_config", "BOUNDERS", "EXACT"]

#: Certificate names run in the bound stage (batched) and in the exact stage (per sample).
BOUNDERS = ("ibp", "crown", "lp")
EXACT = ("bab", "milp")
NORMS = ("linf", "l2", "l1")
DATASETS = ("digits", "mnist", "cifar10")
_TOP = {"seed", "batch_size", "threads", "data", "models", "threats", "attacks", "certify"}
_DATA = {"name", "dir", "split", "start", "n", "indices"}
_MODEL = {"name", "checkpoint", "onnx"}
_THREAT = {"norm", "eps"}
_ATTACK = {"name", "params", "norms"}
_CERTIFY = {"methods", "time_limit"}


class CampaignConfigError(InvalidParameterError):
    """A campaign file with one or more problems; ``problems`` lists them all."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the campaign config:\n{lines}")


@dataclass(frozen=True)
class ModelSpec:
    """A model of the campaign: its label and file (a checkpoint or an ONNX network)."""

    name: str
    path: str
    kind: str  # "checkpoint" | "onnx"
    sha256: str


@dataclass(frozen=True)
class ThreatSpec:
    """A norm and its eps grid (sorted, distinct)."""

    norm: str
    eps: tuple[float, ...]


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack name (or ``strongest``), its parameters and the norms it runs on."""

    name: str
    params: Mapping[str, Any]
    norms: tuple[str, ...]


@dataclass(frozen=True)
class CampaignConfig:
    """A validated campaign; :meth:`identity` is what a store is tied to."""

    seed: int
    batch_size: int
    threads: int
    data: Mapping[str, Any]
    models: tuple[ModelSpec, ...]
    threats: tuple[ThreatSpec, ...]
    attacks: tuple[AttackSpec, ...]
    certify: tuple[str, ...]
    time_limit: float
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (without the source path)."""
        out = asdict(self)
        out.pop("source")
        return json.loads(json.dumps(out))

    def identity(self) -> str:
        """SHA-256 of the canonical JSON (model file hashes included)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def certify_for(self, norm: str) -> tuple[list[str], list[str]]:
        """(bounders, exact methods) to run on a threat of ``norm`` (``auto`` expanded)."""
        names: list[str] = []
        for m in self.certify:
            if m == "auto":
                names += ["crown"] + (["bab", "milp"] if norm == "linf" else
                                      ["milp"] if norm == "l1" else [])
            else:
                names.append(m)
        names = list(dict.fromkeys(names))
        exact = [m for m in names if m in EXACT]
        return [m for m in names if m in BOUNDERS], exact


def _read_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    with open(path, "rb") as fh:
        try:
            return tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise CampaignConfigError(str(path), [f"not valid TOML: {exc}"]) from None
        except UnicodeDecodeError as exc:
            raise CampaignConfigError(str(path), [
                f"not a TOML text file (byte {exc.start} is not UTF-8 text)"]) from None


def load_config(path: str | Path) -> CampaignConfig:
    """Read and validate a campaign TOML file.

    Raises:
        MissingFileError: ``path`` does not exist.
        CampaignConfigError: every problem of the file, listed.
    """
    from advrobust.errors import MissingFileError

    file = Path(path)
    if not file.is_file():
        raise MissingFileError(f"campaign config not found: {file}")
    return parse_config(_read_toml(file), base=file.parent, source=str(file))


def _unknown(where: str, got: Mapping[str, Any], allowed: set[str], out: list[str]) -> None:
    for key in got:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            out.append(f"{where}: unknown key {key!r}{hint}; allowed: "
                       f"{{{', '.join(sorted(allowed))}}}")


def _int(value: Any, where: str, low: int, out: list[str], default: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        out.append(f"{where} must be an int >= {low}. Got {value!r}.")
        return default
    return value


def _table(raw: Any, where: str, out: list[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        out.append(f"{where} must be a table. Got {raw!r}.")
        return {}
    return raw


def _tables(raw: Any, where: str, out: list[str]) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        out.append(f"{where} must be a non-empty array of tables ([[{where}]]). Got {raw!r}.")
        return []
    return [_table(t, f"{where}[{i}]", out) for i, t in enumerate(raw)]


def parse_config(raw: Mapping[str, Any], base: str | Path = ".",
                 source: str = "<config>") -> CampaignConfig:
    """Validate a parsed TOML mapping; relative file paths are taken from ``base``.

    Raises:
        CampaignConfigError: listing every problem found.
    """
    from advrobust.evaluation.campaign._check import (
        check_attacks,
        check_certify,
        check_data,
        check_models,
        check_threats,
    )

    out: list[str] = []
    base = Path(base)
    _unknown("top level", raw, _TOP, out)
    seed = _int(raw.get("seed", 0), "seed", 0, out, 0)
    batch_size = _int(raw.get("batch_size", 25), "batch_size", 1, out, 25)
    threads = _int(raw.get("threads", 1), "threads", 1, out, 1)
    data = check_data(_table(raw.get("data", {}), "data", out), base, out)
    models = check_models(_tables(raw.get("models"), "models", out), base, out)
    threats = check_threats(_tables(raw.get("threats"), "threats", out), out)
    attacks = check_attacks(_tables(raw.get("attacks", [{"name": "pgd"}]), "attacks", out),
                            threats, out)
    certify, time_limit = check_certify(_table(raw.get("certify", {}), "certify", out), out)
    for m in certify:
        if any(t.norm == "l2" for t in threats) and m in ("lp",) + EXACT:
            out.append(f"certify.methods: {m!r} handles linf and l1 threats only, and the "
                       "campaign has an l2 threat; use 'crown' / 'ibp' (or 'auto', which "
                       "picks per norm) for it.")
    if out:
        raise CampaignConfigError(source, out)
    return CampaignConfig(seed=seed, batch_size=batch_size, threads=threads, data=data,
                          models=tuple(models), threats=tuple(threats),
                          attacks=tuple(attacks), certify=certify, time_limit=time_limit,
                          source=source)


def finite_positive(value: Any) -> bool:
    """Whether ``value`` is a real number > 0 (not bool, not NaN / inf)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)
