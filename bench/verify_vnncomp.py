"""VNN-COMP instances through ``run_instance`` (what ``advrobust vnncomp --instances`` runs), scored
against the competitions' known answers, with the per-network table of bench/RESULTS.md. Any
disagreement with a known sat / unsat is a soundness bug.

Run by hand (one torch thread; the whole 90 instances at 30 s take up to 45 min)::

    python bench/verify_vnncomp.py --root ../shared/data/vnncomp/mnist_fc --timeout 30 \\
        [--instances instances.csv] [--network 256x2] [--limit 10] [--out results.csv]

``--jobs N`` runs N instances at once, one process each (a many-core machine: each process
then has one torch thread and ``$ADVROBUST_MEMORY_LIMIT``, e.g. ``5G``, of working memory;
the per-instance times are wall clock under that load). ``--fresh`` starts a new process for
every instance, as a competition harness does (one process otherwise runs them one after
another, which has left 256x4 ``prop_9_0.05`` open at 300 s where a process of its own decides
it: bench/RESULTS.md, issue 11, session 26).

``--instances`` is relative to ``--root`` (default ``instances.csv``: the 2022 edition, 30
properties per network; ``instances_2021.csv`` for 2021). ``--timeout`` overrides the CSV's own
timeouts (120 s for 256x2, 300 s otherwise) and bounds each whole instance, loading included.
The per-instance CSV also holds the lowest sound lower bound of the property's rows (printed for
open instances: how near each came to a proof).
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from advrobust.evaluation.vnncomp import Instance, load_instances, load_known_answers, run_instance


def _run(job: tuple[Instance, float | None, int]) -> tuple[str, str, float, float | None]:
    """One instance: its result, the stage that decided it, wall-clock seconds, and the
    lowest sound lower bound of its property's rows (how near an open instance came to a
    proof; None where no row has one)."""
    inst, timeout, threads = job
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    res = run_instance(inst, timeout=timeout, threads=threads)
    lowers = [row["lower"] for row in res.details.get("rows", [])]
    return (res.result, res.details.get("decided_by") or "-", time.perf_counter() - t0,
            min(lowers) if lowers else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data/vnncomp/mnist_fc"))
    parser.add_argument("--instances", default="instances.csv")
    parser.add_argument("--network", default=None, help="only ONNX files whose name has this")
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("--limit", type=int, default=None, help="first N instances per network")
    parser.add_argument("--properties", nargs="*", default=None,
                        help="only these properties (e.g. vnnlib/prop_6_0.03.vnnlib)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="per-instance CSV")
    parser.add_argument("--jobs", type=int, default=1, help="instances run at once")
    parser.add_argument("--fresh", action="store_true",
                        help="each instance in a fresh process, as a competition harness runs "
                             "them (otherwise one process runs them one after another)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    instances = [i for i in load_instances(args.root / args.instances)
                 if (args.network is None or args.network in i.onnx.name)
                 and (args.properties is None
                      or any(str(i.vnnlib).endswith(p) for p in args.properties))]
    per_net: dict[str, list[Instance]] = defaultdict(list)
    for inst in instances:
        per_net[inst.onnx.stem].append(inst)
    if args.limit is not None:
        per_net = defaultdict(list, {k: v[:args.limit] for k, v in per_net.items()})
    answers = load_known_answers(args.root / "known_answers.csv")
    table: dict[str, dict[str, float]] = {}
    lines = []
    todo = [inst for insts in per_net.values() for inst in insts]
    job = [(inst, args.timeout, args.threads) for inst in todo]
    if args.jobs > 1 or args.fresh:
        fresh = {"max_tasks_per_child": 1} if args.fresh else {}  # Python >= 3.11
        pool = ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                   **fresh)
        runs = pool.map(_run, job)
    else:
        runs = map(_run, job)
    for inst, (result, decided_by, seconds, worst) in zip(todo, runs, strict=True):
        net = inst.onnx.stem
        row = table.setdefault(net, dict.fromkeys(
            ("sat", "unsat", "unknown", "wrong", "seconds", "solved seconds"), 0.0))
        truth = answers.get((str(inst.onnx.resolve()), str(inst.vnnlib.resolve())), "")
        wrong = result in ("sat", "unsat") and truth in ("sat", "unsat") and result != truth
        key = result if result in ("sat", "unsat") else "unknown"
        row[key] += 1
        row["wrong"] += wrong
        row["seconds"] += seconds
        if key != "unknown":
            row["solved seconds"] += seconds
        bound = "" if worst is None else f"{worst:.6g}"
        lines.append((net, inst.vnnlib.name, truth, result, f"{seconds:.1f}", decided_by, bound))
        near = f" (lowest row {bound})" if key == "unknown" and bound else ""
        print(f"{net} {inst.vnnlib.name}: {result} (truth {truth or '?'}) "
              f"{seconds:.1f} s{near}{'  WRONG' if wrong else ''}", flush=True)
    if args.out is not None:
        with open(args.out, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(("network", "property", "truth", "result", "seconds", "decided_by",
                             "lowest_row_bound"))
            writer.writerows(lines)
    print("\n| network | instances | sat | unsat | unknown / timeout | wrong | solved | "
          "total s | s on solved |")
    print("|---|---|---|---|---|---|---|---|---|")
    total: dict[str, float] = defaultdict(float)
    for net, row in table.items():
        n = len(per_net[net])
        print(f"| {net} | {n} | {row['sat']:.0f} | {row['unsat']:.0f} | {row['unknown']:.0f} | "
              f"{row['wrong']:.0f} | {row['sat'] + row['unsat']:.0f} | {row['seconds']:.0f} | "
              f"{row['solved seconds']:.0f} |")
        total["n"] += n
        for k, v in row.items():
            total[k] += v
    print(f"| all | {total['n']:.0f} | {total['sat']:.0f} | {total['unsat']:.0f} | "
          f"{total['unknown']:.0f} | {total['wrong']:.0f} | {total['sat'] + total['unsat']:.0f} "
          f"| {total['seconds']:.0f} | {total['solved seconds']:.0f} |")


if __name__ == "__main__":
    main()
