"""``advrobust campaign``: run a robustness campaign into a store, show progress, export it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from advrobust.cli._common import add_json_arg, emit

__all__ = ["register", "run"]

EXAMPLE = """examples:
  advrobust campaign run campaign.toml --store results.db
  advrobust campaign run campaign.toml --store results.db --workers 2
  advrobust campaign run campaign.toml --store results.db --backend ray --workers 4
  advrobust campaign run campaign.toml --store results.db --backend ray --address HOST:6379
  advrobust campaign workers --address HOST:6379 --stop
  advrobust campaign status results.db
  advrobust campaign export results.db --csv units.csv --json summary.json
  advrobust report results.db --out report.html

The config (TOML) names models, data, threats (norm + eps grid), attacks, certificates and
time limits; see 'Robustness campaigns' in the README. Running again on the same store resumes:
finished units are skipped. A store written by another config is refused. On a joined Ray
cluster (--address) the actors are named and stay up after the campaign, so the next campaign
starts without their start-up (python, torch, the library, models and data);
'advrobust campaign workers --address ADDR --stop' stops them.
"""


def register(sub: Any) -> None:
    """Add the ``campaign`` command and its ``run`` / ``status`` / ``export`` actions."""
    p = sub.add_parser(
        "campaign", help="run a robustness campaign (config -> crash-safe results store)",
        description="Evaluate models over a dataset at every radius of a threat grid: cheap "
                    "bounds, attacks, then exact methods on what is still open, per-sample "
                    "brackets written to an SQLite store that survives crashes.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    r = actions.add_parser("run", help="run or resume a campaign",
                           epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("config", type=Path, metavar="CONFIG", help="campaign file (TOML)")
    r.add_argument("--store", type=Path, required=True, metavar="DB",
                   help="results store (SQLite); resumed when it exists")
    r.add_argument("--workers", type=int, default=None,
                   help="worker processes (pool) or Ray actors, one CPU each (default: serial; "
                        "with --backend ray, one per CPU of the cluster)")
    r.add_argument("--backend", choices=("serial", "pool", "ray"), default=None,
                   help="where tasks run (default: pool when --workers > 1, else serial)")
    r.add_argument("--address", default=None,
                   help="with --backend ray: the cluster to join (default: a local one); its "
                        "actors stay up for the next campaign (see 'campaign workers')")
    r.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_json_arg(r)
    w = actions.add_parser("workers", help="stop the warm Ray actors campaigns left on a "
                                           "cluster")
    w.add_argument("--address", default=None,
                   help="the Ray cluster (default: the running local one, 'auto')")
    w.add_argument("--stop", action="store_true", required=True,
                   help="stop every advrobust-worker-N actor of the cluster")
    s = actions.add_parser("status", help="progress and verdict counts of a store")
    s.add_argument("store", type=Path, metavar="DB")
    add_json_arg(s)
    e = actions.add_parser("export", help="write the units as CSV and the summary as JSON")
    e.add_argument("store", type=Path, metavar="DB")
    e.add_argument("--csv", type=Path, metavar="FILE",
                   help="one row per unit ('-' for stdout)")
    e.add_argument("--json", type=Path, metavar="FILE",
                   help="summary per threat + RobustBench-style entries ('-' for stdout)")
    p.set_defaults(func=run)


def _write(path: Path, text: str) -> None:
    if str(path) == "-":
        sys.stdout.write(text)
    else:
        path.write_text(text)


def _run(args: argparse.Namespace) -> int:
    import importlib.util

    backend = args.backend or ("pool" if (args.workers or 1) > 1 else "serial")
    workers = args.workers if args.workers is not None else (0 if backend == "ray" else 1)
    if backend == "ray" and not args.address and isinstance(workers, int) and workers >= 0 \
            and importlib.util.find_spec("ray") is not None:
        from advrobust import _rayhead

        # the local cluster comes up on the idle cores while this process imports torch
        # (first thing: even advrobust.core imports torch)
        _rayhead.prestart(_rayhead.head_cpus(workers), not args.no_progress)
    from advrobust.core._validation import check_int
    from advrobust.evaluation.campaign import load_config, run_campaign

    if args.workers is not None:
        check_int(args.workers, "--workers", "advrobust campaign run", low=1)

    config = load_config(args.config)
    result = run_campaign(config, args.store, workers=workers, backend=backend,
                          address=args.address, progress=not args.no_progress)
    payload = {"store": str(args.store), "units": result.total, "skipped": result.skipped,
               "written": result.written, "errors": result.errors,
               "interrupted": result.interrupted, "seconds": result.seconds}
    emit(args, payload, title=f"advrobust campaign run ({backend})")
    if result.interrupted:
        print(f"Interrupted: the store is intact. Resume with:\n  advrobust campaign run "
              f"{args.config} --store {args.store}", file=sys.stderr)
        return 130
    if not args.json:
        print(f"Next: advrobust campaign status {args.store} / advrobust report {args.store} "
              "--out report.html")
    return 0


def _status(args: argparse.Namespace) -> int:
    from advrobust.evaluation.campaign import ResultStore, summary_rows

    with ResultStore(args.store, readonly=True) as store:
        meta, rows = store.meta(), summary_rows(store)
    config = json.loads(meta.get("config", "{}"))
    grid = sum(len(t["eps"]) for t in config.get("threats", []))
    total = len(config.get("models", [])) * grid * len(config.get("data", {}).get("indices", []))
    done = sum(r["n"] for r in rows)
    payload = {"store": str(args.store), "done": done, "total": total,
               "config_hash": meta.get("config_hash", "")[:12],
               "version": meta.get("version"), "created": meta.get("created"), "threats": rows}
    if args.json:
        emit(args, payload)
        return 0
    print(f"{args.store}: {done} / {total} units done ({100 * done / max(total, 1):.1f} %), "
          f"config {payload['config_hash']}, advrobust {payload['version']}")
    print(f"{'model':<12}{'norm':<6}{'eps':>8}{'n':>6}{'verified':>10}{'falsified':>10}"
          f"{'unknown':>9}{'errors':>8}{'undecided':>11}")
    for r in rows:
        print(f"{r['model']:<12}{r['norm']:<6}{r['eps']:>8g}{r['n']:>6}{r['verified']:>10}"
              f"{r['falsified']:>10}{r['unknown']:>9}{r['errors']:>8}{r['undecided']:>11.3f}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from advrobust.errors import InvalidParameterError
    from advrobust.evaluation.campaign import ResultStore, robustbench_entry, summary_rows
    from advrobust.evaluation.campaign.export import units_csv

    if args.csv is None and args.json is None:
        raise InvalidParameterError("campaign export needs --csv FILE and/or --json FILE. "
                                    "Got neither.")
    with ResultStore(args.store, readonly=True) as store:
        if args.csv is not None:
            _write(args.csv, units_csv(store))
        if args.json is not None:
            meta = store.meta()
            payload = {"config": json.loads(meta.get("config", "{}")),
                       "version": meta.get("version"), "summary": summary_rows(store),
                       "robustbench": robustbench_entry(store)}
            _write(args.json, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch to the ``run``, ``status`` or ``export`` action."""
    return {"run": _run, "status": _status, "export": _export,
            "workers": _workers}[args.action](args)


def _workers(args: argparse.Namespace) -> int:
    import importlib.util

    from advrobust.errors import AdvRobustError

    if importlib.util.find_spec("ray") is None:
        raise AdvRobustError("'campaign workers' needs Ray: pip install 'advrobust[ray]'.")
    from advrobust.evaluation.campaign.raybackend import stop_warm_actors

    print(f"stopped {stop_warm_actors(args.address)} warm actor(s)")
    return 0
