"""VNN-COMP instances: the benchmark's CSV, the competition's result file, one run per instance.

The result file (VNN-COMP 2021-2024 rules) is one word, ``sat``, ``unsat``, ``timeout`` or
``unknown``; after ``sat`` comes the counterexample ``((X_0 v) ... (Y_0 v) ...)``. An
``instances.csv`` lists ``onnx,vnnlib,timeout`` per line, paths relative to its folder; a
``known_answers.csv`` beside it (``network,property,timeout,truth``) scores the answers.
A benchmark runs each instance in a process of its own (:func:`decide_row` under
:func:`~advrobust.evaluation._isolated.run_isolated`), as the competition does.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from advrobust.errors import DataFormatError, InvalidParameterError, MissingFileError

__all__ = ["PRELOAD", "RESULTS", "Instance", "VnncompResult", "decide_row", "load_instances",
           "load_known_answers", "read_result", "run_instance", "write_result"]

#: The words a result file may start with.
RESULTS = ("sat", "unsat", "timeout", "unknown")


@dataclass(frozen=True)
class Instance:
    """One benchmark line: a network, a property and the competition's timeout (seconds)."""

    onnx: Path
    vnnlib: Path
    timeout: float


@dataclass(frozen=True)
class VnncompResult:
    """The answer to one instance.

    Attributes:
        result: one of :data:`RESULTS` (``timeout`` when the answer came after the limit).
        counterexample: (D,) input for ``sat``, else None.
        outputs: (num_outputs,) model outputs at the counterexample, else None.
        seconds: wall time from the start of the instance (loading included).
        details: per-row bounds, per-stage seconds and the exact stages' logs (JSON-ready).
    """

    result: str
    counterexample: Tensor | None
    outputs: Tensor | None
    seconds: float
    details: Mapping[str, object]


def check_timeout(timeout: float, name: str = "timeout") -> float:
    """``timeout`` if it is a finite number > 0, else a clear error."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not math.isfinite(timeout) or timeout <= 0:
        raise InvalidParameterError(
            f"The {name!r} of a VNN-COMP instance must be a number of seconds > 0. "
            f"Got {timeout!r} instead.")
    return float(timeout)


def load_instances(path: str | Path) -> list[Instance]:
    """Read an ``instances.csv`` (``onnx,vnnlib,timeout``, paths relative to its folder).

    Raises:
        MissingFileError: the CSV, or any file it names (every missing one is listed).
        DataFormatError: a line without three fields or with a timeout that is not > 0.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"instances CSV not found: {path}")
    rows: list[Instance] = []
    missing: list[str] = []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            lines = list(csv.reader(handle))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataFormatError(f"{path}: not an instances CSV text file ({exc})") from None
    for number, fields in enumerate(lines, start=1):
        if not fields or not "".join(fields).strip():
            continue
        if len(fields) != 3:
            raise DataFormatError(f"{path}, line {number}: expected 'onnx,vnnlib,timeout', "
                                  f"got {len(fields)} fields: {fields}")
        try:
            timeout = check_timeout(float(fields[2]))
        except (ValueError, InvalidParameterError):
            raise DataFormatError(f"{path}, line {number}: the timeout must be a number of "
                                  f"seconds > 0; got {fields[2]!r}") from None
        onnx, vnnlib = path.parent / fields[0].strip(), path.parent / fields[1].strip()
        missing += [str(p) for p in (onnx, vnnlib) if not p.is_file()]
        rows.append(Instance(onnx, vnnlib, timeout))
    if missing:
        unique = sorted(set(missing))
        raise MissingFileError(f"{path} names {len(unique)} missing files: " + ", ".join(unique))
    if not rows:
        raise DataFormatError(f"{path} lists no instance")
    return rows


def load_known_answers(path: str | Path) -> dict[tuple[str, str], str]:
    """``known_answers.csv`` as ``{(onnx, vnnlib) resolved paths: truth}``."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as handle:
        return {(str((path.parent / r["network"]).resolve()),
                 str((path.parent / r["property"]).resolve())): r["truth"].strip()
                for r in csv.DictReader(handle)}


def write_result(path: str | Path, result: str, counterexample: Tensor | None = None,
                 outputs: Tensor | None = None) -> None:
    """Write the competition's result file (``sat`` with its counterexample block)."""
    from advrobust.network.vnnlib import format_counterexample

    if result not in RESULTS:
        raise InvalidParameterError(f"A VNN-COMP result must be one of {RESULTS}. "
                                    f"Got {result!r} instead.")
    text = result + "\n"
    if result == "sat":
        if counterexample is None or outputs is None:
            raise InvalidParameterError("A 'sat' result needs its counterexample and outputs.")
        text += format_counterexample(counterexample, outputs) + "\n"
    Path(path).write_text(text, encoding="utf-8")


def read_result(path: str | Path) -> tuple[str, Tensor | None, Tensor | None]:
    """Read a result file back: (result, X values (D,) or None, Y values or None).

    Raises:
        DataFormatError: not a result file (unknown first word, malformed counterexample).
    """
    from advrobust.network._smtlib import VnnlibError, parse_sexprs

    text = Path(path).read_text(encoding="utf-8")
    word, _, rest = text.strip().partition("\n")
    word = word.strip()
    if word not in RESULTS:
        raise DataFormatError(f"{path}: a result file starts with one of {RESULTS}; got "
                              f"{word!r}")
    if word != "sat":
        return word, None, None
    try:
        (block,) = parse_sexprs(rest)
    except (VnnlibError, ValueError):
        raise DataFormatError(f"{path}: the counterexample is not one '((X_0 v) ...)' "
                              "block") from None
    values: dict[str, dict[int, float]] = {"X": {}, "Y": {}}
    for pair in block if isinstance(block, list) else []:
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)
                and pair[0][:2] in ("X_", "Y_")):
            raise DataFormatError(f"{path}: unexpected item {pair!r} in the counterexample")
        values[pair[0][0]][int(pair[0][2:])] = float(str(pair[1]))
    out = []
    for kind in ("X", "Y"):
        got = values[kind]
        if sorted(got) != list(range(len(got))) or not got:
            raise DataFormatError(f"{path}: the counterexample's {kind} values must be "
                                  f"{kind}_0..{kind}_n-1")
        out.append(torch.tensor([got[i] for i in range(len(got))], dtype=torch.float64))
    return word, out[0], out[1]


def run_instance(instance: Instance, *, timeout: float | None = None, threads: int = 1,
                 seed: int = 0) -> VnncompResult:
    """Load and decide one instance within its timeout (loading included). A "sat" answer's
    counterexample is re-checked through the ONNX file under onnxruntime when that optional
    package is installed (:meth:`~advrobust.network.onnx.OnnxNetwork.runtime`).

    Args:
        instance: the files and the competition's timeout.
        timeout: seconds overriding ``instance.timeout``.
        threads: cores: HiGHS's threads, and BaB's worker processes (``BaB(workers=...)``;
            the caller sets torch's threads).
        seed: seed of the attack's random starts.

    Raises:
        MissingFileError, DataFormatError, UnsupportedLayerError: unreadable files.
        VnnlibError: a property outside the supported subset (the construct is named).
        InvalidInputError: the network's inputs do not match the property's X variables.
    """
    from advrobust.core._validation import check_seed
    from advrobust.evaluation.verify import verify_property
    from advrobust.network.onnx import import_onnx
    from advrobust.network.vnnlib import load_vnnlib

    check_seed(seed, "seed", "run_instance")
    start = time.perf_counter()
    limit = check_timeout(instance.timeout if timeout is None else timeout)
    net = import_onnx(instance.onnx)
    prop = load_vnnlib(instance.vnnlib)
    left = limit - (time.perf_counter() - start)
    if left <= 0:  # loading alone took the time
        return VnncompResult("timeout", None, None, time.perf_counter() - start,
                             {"skipped": ["everything: loading the files took the timeout"]})
    result = verify_property(net.model, prop, input_shape=net.input_shape, time_limit=left,
                             threads=threads, generator=torch.Generator().manual_seed(seed),
                             reference=net.runtime())
    seconds = time.perf_counter() - start
    answer = result.status
    if seconds > limit:
        answer = "timeout"  # the competition scores a late answer as a timeout
    elif answer == "unknown" and _ran_out(result.report.stats):
        answer = "timeout"
    report = result.report
    details = {
        "rows": [{"row": j, "lower": float(report.lower[0, j]), "upper": float(report.upper[0, j])}
                 for j in range(report.lower.shape[1])],
        "decided_by": report.decided_by[0] or None,
        "stage_seconds": dict(report.stage_seconds),
        **{k: v for k, v in report.stats.items()
           if k in ("bab", "milp", "attack", "skipped", "input_cases")}}
    if answer == "sat":
        return VnncompResult("sat", result.counterexample, result.outputs, seconds, details)
    return VnncompResult(answer, None, None, seconds, details)


def _ran_out(stats: Mapping[str, object]) -> bool:
    """True if some exact stage stopped on the time limit (else the methods gave up)."""
    for stage in ("bab", "milp"):
        logs = stats.get(stage)
        if isinstance(logs, Mapping):
            for rows in logs.values():
                for row in rows:
                    if "time" in str(row.get("status", "")) or "Time" in str(row.get("solver",
                                                                                      "")):
                        return True
    skipped = stats.get("skipped")
    return bool(skipped)


#: Modules the isolated instances' process server imports once (their children start with
#: them loaded; a missing optional one is skipped).
PRELOAD = ("advrobust.evaluation.vnncomp", "advrobust.evaluation.verify",
           "advrobust.network.onnx", "advrobust.network.vnnlib", "advrobust.exact",
           "advrobust.relax", "advrobust.attacks.spec_apgd", "onnx", "highspy")


def decide_row(instance: Instance, timeout: float | None, threads: int, seed: int
               ) -> dict[str, object]:
    """:func:`run_instance` as a benchmark row: ``result``, ``seconds`` and ``error`` (the
    message of a library error, which makes the result ``unknown``). Sets torch's threads and
    glibc's allocator as the command-line tool does: the body of an isolated instance
    (:func:`~advrobust.evaluation._isolated.run_isolated`)."""
    from advrobust._malloc import keep_freed_memory
    from advrobust.errors import AdvRobustError

    keep_freed_memory()
    torch.set_num_threads(threads)
    try:
        res = run_instance(instance, timeout=timeout, threads=threads, seed=seed)
    except AdvRobustError as exc:  # a bad instance is a row, not the end of the benchmark
        return {"result": "unknown", "seconds": 0.0, "error": str(exc)}
    return {"result": res.result, "seconds": round(res.seconds, 3), "error": ""}
