"""VNN-COMP mnist_fc instances through ``verify_property`` (the auto cascade), scored against
the competitions' known answers. Any disagreement with a known sat / unsat is a soundness bug.

Run by hand::

    python bench/verify_vnncomp.py --root ../shared/data/vnncomp/mnist_fc --network 256x2 \\
        [--timeout 120] [--limit 60] [--method auto] [--properties vnnlib/prop_2_0.03.vnnlib ...]

``--timeout`` overrides the instances' own timeouts (120 s for 256x2, 300 s otherwise); it is
the exact stages' limit (``auto``: half for BaB, half for the MILP), CROWN and PGD run before.
"""

from __future__ import annotations

import argparse
import csv
import time
from collections import Counter
from pathlib import Path

import torch

from advrobust.evaluation.verify import verify_property
from advrobust.network.onnx import import_onnx
from advrobust.network.vnnlib import load_vnnlib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data/vnncomp/mnist_fc"))
    parser.add_argument("--network", default="256x2")
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--method", default="auto", help="verify_property method (auto, bab, milp)")
    parser.add_argument("--properties", nargs="*", default=None,
                        help="only these property paths (as in known_answers.csv)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [r for r in csv.DictReader(open(args.root / "known_answers.csv"))
            if r["network"].endswith(f"{args.network}.onnx")
            and (args.properties is None or r["property"] in args.properties)][:args.limit]
    net = import_onnx(args.root / rows[0]["network"])
    tally: Counter[str] = Counter()
    wrong: list[str] = []
    start = time.perf_counter()
    print("| property | truth | ours | decided by | seconds |")
    print("|---|---|---|---|---|")
    for row in rows:
        limit = args.timeout if args.timeout is not None else float(row["timeout"])
        t0 = time.perf_counter()
        result = verify_property(net.model, load_vnnlib(args.root / row["property"]),
                                 input_shape=net.input_shape, time_limit=limit,
                                 method=args.method,
                                 threads=args.threads, generator=torch.Generator().manual_seed(0))
        seconds = time.perf_counter() - t0
        tally[result.status] += 1
        if result.status != "unknown" and row["truth"] in ("sat", "unsat") \
                and result.status != row["truth"]:
            wrong.append(row["property"])
        print(f"| {row['property']} | {row['truth']} | {result.status} | "
              f"{result.report.decided_by[0] or '-'} | {seconds:.1f} |", flush=True)
    print(f"\n{args.network}: {len(rows)} instances, unsat (verified) {tally['unsat']}, "
          f"sat (falsified) {tally['sat']}, unknown {tally['unknown']}, "
          f"{time.perf_counter() - start:.0f} s total")
    print(f"WRONG ANSWERS: {len(wrong)} {wrong}" if wrong else "wrong answers: 0")


if __name__ == "__main__":
    main()
