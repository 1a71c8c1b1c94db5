"""``advrobust vnncomp``: decide VNN-COMP instances and write the competition's result files."""

from __future__ import annotations

import argparse
import csv
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from advrobust.cli._common import add_json_arg, add_memory_arg, apply_memory_arg, emit
from advrobust.errors import InvalidParameterError, MissingFileError

__all__ = ["register", "run"]

EXAMPLE = """examples:
  advrobust vnncomp mnist-net_256x2.onnx prop_0_0.03.vnnlib --timeout 120 --out result.txt
  advrobust vnncomp --instances mnist_fc/instances.csv --timeout 30 --out results.csv

The result file holds sat (followed by the counterexample ((X_0 v) ... (Y_0 v) ...)), unsat,
timeout or unknown. --timeout bounds the whole instance, loading the files included (Python's
start-up excluded); the answer is written within it. With --instances the CSV's own timeouts
apply unless --timeout is given, and known_answers.csv beside it (or --answers) scores them;
each instance runs in a fresh process (as in the competition): one that crashes is a row with
an error, one that overruns its timeout is killed and counted as a timeout.
"""

#: Seconds before the timeout at which a single-instance run stops waiting for the cascade and
#: writes ``timeout`` (the cascade keeps its own, larger guard: this only catches a stage that
#: overran its deadline).
HARD_GUARD = 0.05


def register(sub: Any) -> None:
    """Add the ``vnncomp`` command."""
    p = sub.add_parser(
        "vnncomp", help="decide VNN-COMP instances (ONNX + VNNLIB) and write result files",
        description="Run the verification cascade on VNN-COMP instances within their "
                    "timeouts and write the competition's result format.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("onnx", nargs="?", type=Path, help="the network (.onnx)")
    p.add_argument("vnnlib", nargs="?", type=Path, help="the property (.vnnlib)")
    p.add_argument("--instances", type=Path, metavar="CSV",
                   help="run every line 'onnx,vnnlib,timeout' of this CSV, each instance in a "
                        "process of its own (killed if it overruns its timeout)")
    p.add_argument("--one-process", action="store_true",
                   help="with --instances: run the instances one after another in this "
                        "process (no isolation: for debugging)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="seconds per instance (required for one instance; overrides the "
                        "CSV's timeouts)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help="the result file (one instance) or the results CSV (--instances)")
    p.add_argument("--answers", type=Path, metavar="CSV",
                   help="known answers (network,property,timeout,truth); default: "
                        "known_answers.csv beside --instances, if present")
    p.add_argument("--threads", type=int, default=1,
                   help="cores: torch and solver threads, and BaB's worker processes, which "
                        "share its rows (Linux) (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the attack's random starts")
    add_memory_arg(p)
    add_json_arg(p)
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    from advrobust.evaluation.vnncomp import check_timeout

    if args.instances is None and (args.onnx is None or args.vnnlib is None):
        raise InvalidParameterError("vnncomp needs ONNX and VNNLIB paths, or --instances CSV. "
                                    "Got neither.")
    if args.instances is not None and (args.onnx is not None or args.vnnlib is not None):
        raise InvalidParameterError("vnncomp takes ONNX VNNLIB or --instances, not both.")
    if args.instances is None and args.timeout is None:
        raise InvalidParameterError("--timeout is required for one instance (seconds > 0). "
                                    "Got none.")
    if args.timeout is not None:
        check_timeout(args.timeout, "--timeout")
    if args.threads < 1:
        raise InvalidParameterError(f"--threads must be an int >= 1. Got {args.threads}.")
    if args.one_process and args.instances is None:
        raise InvalidParameterError("--one-process applies to --instances only.")


def run(args: argparse.Namespace) -> int:
    """Decide one instance (result file) or a whole benchmark (results CSV)."""
    apply_memory_arg(args)
    import torch

    start = time.perf_counter()
    _check_args(args)
    torch.set_num_threads(args.threads)
    if args.instances is not None:
        return _run_many(args)
    return _run_one(args, start)


def _run_one(args: argparse.Namespace, start: float) -> int:
    from advrobust.evaluation.vnncomp import Instance, run_instance, write_result

    missing = [str(p) for p in (args.onnx, args.vnnlib) if not p.is_file()]
    if missing:
        raise MissingFileError("file not found: " + ", ".join(missing))
    instance = Instance(args.onnx, args.vnnlib, float(args.timeout))
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = run_instance(instance, threads=args.threads, seed=args.seed,
                                         timeout=max(1e-3, args.timeout
                                                     - (time.perf_counter() - start)))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            box["error"] = exc

    # The cascade keeps its own deadlines; the thread is the backstop that makes the result
    # file appear within the timeout even if a stage overruns (it is left to finish alone).
    worker = threading.Thread(target=work, name="advrobust-vnncomp", daemon=True)
    worker.start()
    _wait(worker, max(0.0, args.timeout - HARD_GUARD - (time.perf_counter() - start)),
          "no result file written")
    if "error" in box:
        raise box["error"]
    result = box.get("result")
    if result is None:
        # answered on time; the worker, past its own deadlines, is waited for after the
        # output (a process exiting under a running torch / HiGHS thread aborts)
        write_result(args.out, "timeout")
        payload: dict[str, Any] = {"result": "timeout", "seconds": time.perf_counter() - start,
                                   "note": "a stage overran its deadline; answered timeout"}
    else:
        write_result(args.out, result.result, result.counterexample, result.outputs)
        payload = {"result": result.result, "seconds": result.seconds, **result.details}
    payload = {"onnx": str(args.onnx), "vnnlib": str(args.vnnlib), "timeout": args.timeout,
               "out": str(args.out), **payload}
    if args.json:
        emit(args, payload)
    else:
        keys = ("result", "seconds", "decided_by", "onnx", "vnnlib", "out")
        emit(args, payload, [(k, payload.get(k)) for k in keys], title="advrobust vnncomp")
    sys.stdout.flush()
    _wait(worker, None, f"the result is in {args.out}")
    return 0


def _wait(worker: threading.Thread, timeout: float | None, kept: str) -> None:
    """``worker.join(timeout)``; on Ctrl-C, one line and exit status 130 at once.

    The worker cannot be stopped from this thread (HiGHS and torch work inside it), and leaving
    the interpreter the usual way while it runs aborted the process ("terminate called without
    an active exception", SIGABRT): the process ends with ``os._exit`` after flushing.
    """
    try:
        worker.join(timeout)
    except KeyboardInterrupt:
        print(f"\nadvrobust vnncomp: interrupted (Ctrl-C); {kept}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)


def _answers(args: argparse.Namespace) -> dict[tuple[str, str], str]:
    from advrobust.evaluation.vnncomp import load_known_answers

    path = args.answers if args.answers is not None \
        else args.instances.parent / "known_answers.csv"
    if args.answers is not None and not path.is_file():
        raise MissingFileError(f"--answers file not found: {path}")
    return load_known_answers(path) if path.is_file() else {}


FIELDS = ("onnx", "vnnlib", "timeout", "result", "seconds", "truth", "wrong", "error")

#: Seconds past an isolated instance's timeout after which its process is killed (its answer
#: would be a timeout anyway: :func:`~advrobust.evaluation.vnncomp.run_instance` scores a
#: late answer so).
KILL_GRACE = 2.0


def _run_many(args: argparse.Namespace) -> int:
    from advrobust.evaluation.vnncomp import load_instances

    instances = load_instances(args.instances)  # every missing file reported before any run
    known = _answers(args)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    try:
        for k, inst in enumerate(instances, start=1):
            truth = known.get((str(inst.onnx.resolve()), str(inst.vnnlib.resolve())), "")
            row: dict[str, Any] = {"onnx": str(inst.onnx), "vnnlib": str(inst.vnnlib),
                                   "timeout": args.timeout or inst.timeout, "truth": truth,
                                   "error": ""}
            row.update(_decide(args, inst))
            row["wrong"] = int(truth in ("sat", "unsat") and row["result"] in ("sat", "unsat")
                               and row["result"] != truth)
            rows.append(row)
            print(f"[{k}/{len(instances)}] {inst.onnx.name} {inst.vnnlib.name}: "
                  f"{row['result']} ({row['seconds']:.1f} s){' WRONG' if row['wrong'] else ''}"
                  f"{' error: ' + row['error'] if row['error'] else ''}", file=sys.stderr,
                  flush=True)
    finally:  # the instances decided so far reach the CSV, also on Ctrl-C
        with open(args.out, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    counts = Counter(r["result"] for r in rows)
    summary = {"instances": len(rows), **{w: counts.get(w, 0) for w in
                                          ("sat", "unsat", "unknown", "timeout")},
               "wrong": sum(r["wrong"] for r in rows),
               "errors": sum(bool(r["error"]) for r in rows),
               "seconds": time.perf_counter() - start, "out": str(args.out)}
    emit(args, {**summary, "results": rows} if args.json else summary,
         title=f"advrobust vnncomp ({args.instances})")
    return 1 if summary["wrong"] else 0


def _context(preload: tuple[str, ...]) -> Any:
    """The isolated instances' start method (a function: tests substitute ``fork``)."""
    from advrobust.evaluation._isolated import isolated_context

    return isolated_context(preload)


def _decide(args: argparse.Namespace, inst: Any) -> dict[str, Any]:
    """One instance's ``result``, ``seconds`` and ``error``: in a process of its own (killed
    :data:`KILL_GRACE` seconds past its timeout), or in this one with ``--one-process``."""
    from advrobust.evaluation._isolated import run_isolated
    from advrobust.evaluation.vnncomp import PRELOAD, decide_row

    call = (inst, args.timeout, args.threads, args.seed)
    if args.one_process:
        return decide_row(*call)
    limit = args.timeout or inst.timeout
    done = run_isolated(decide_row, call, limit=limit, grace=KILL_GRACE,
                        context=_context(PRELOAD))
    if done.ok:
        return dict(done.value)
    if done.killed:  # a late answer scores as a timeout
        return {"result": "timeout", "seconds": round(done.seconds, 3),
                "error": f"the instance's process was {done.error}"}
    return {"result": "unknown", "seconds": round(done.seconds, 3), "error": done.error}
