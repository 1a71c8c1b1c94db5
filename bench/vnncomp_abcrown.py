"""advrobust against alpha-beta-CROWN on the same VNN-COMP instances, one tool after the other
or both at once (``--together``: one thread each on a two-core machine, so both see the same load).

alpha-beta-CROWN is never a dependency: it is built outside the repository (see
bench/abcrown_build.md) and run through the wrapper ``run_abcrown.sh`` of ``../shared/peers/``,
which runs a whole instances CSV in one process (as ``advrobust vnncomp --instances`` does).
Both run under ``nice -n 5`` with one thread. Run by hand from the repository root::

    PYTHONPATH=$PWD/src python bench/vnncomp_abcrown.py --root ../shared/data/vnncomp/mnist_fc \\
        --limit 10 --timeout 30 --abcrown-dir ../peers-abcrown/alpha-beta-CROWN \\
        --abcrown-venv ../peers-abcrown/venv [--pgd-order after] [--instances instances.csv] \\
        [--together]

or tabulate earlier runs: ``--table OURS.csv ABCROWN.log`` (our results CSV and the wrapper's
stdout). An answer that came after the instance's limit counts as a timeout for both tools (the
competition's rule; the wrapper marks such answers ``over_time=1``), a sat / unsat that
disagrees with ``known_answers.csv`` as wrong. "s on both solved" sums each tool's seconds over
the instances both solved in time.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

Verdicts = dict[tuple[str, str], tuple[str, float]]  # (network, property) -> (answer, seconds)

_RESULT = re.compile(r"^RESULT (\S+) wall_s=(\S+) .*onnx=(\S+) vnnlib=(\S+) over_time=(\d)")


def _key(onnx: str, vnnlib: str) -> tuple[str, str]:
    return Path(onnx).stem.replace("mnist-net_", ""), Path(vnnlib).name


def read_ours(path: Path) -> Verdicts:
    """Our results CSV (``advrobust vnncomp --out``): answer and seconds per instance."""
    out: Verdicts = {}
    with path.open() as fh:
        for row in csv.DictReader(fh):
            seconds = float(row["seconds"])
            answer = row["result"] if seconds <= float(row["timeout"]) else "timeout"
            out[_key(row["onnx"], row["vnnlib"])] = (answer, seconds)
    return out


def read_abcrown(path: Path) -> Verdicts:
    """The wrapper's ``RESULT`` lines; a late answer (``over_time=1``) is a timeout."""
    out: Verdicts = {}
    for line in path.read_text().splitlines():
        m = _RESULT.match(line)
        if m:
            answer, seconds, onnx, vnnlib, late = m.groups()
            out[_key(onnx, vnnlib)] = ("timeout" if late == "1" else answer, float(seconds))
    return out


def read_truth(root: Path) -> dict[tuple[str, str, str], str]:
    """Known answers keyed by (network, property file, its folder: vnnlib or vnnlib_2021)."""
    path = root / "known_answers.csv"
    if not path.exists():
        return {}
    with path.open() as fh:
        return {_key(r["network"], r["property"]) + (Path(r["property"]).parent.name,):
                r["truth"] for r in csv.DictReader(fh)}


def table(ours: Verdicts, theirs: Verdicts, truth: dict[tuple[str, str, str], str],
          edition: str) -> str:
    """The per-network markdown table."""
    rows = ["| network | tool | sat | unsat | unknown / timeout | wrong | solved | "
            "s on both solved | s in all |", "|---|---|---|---|---|---|---|---|---|"]
    nets: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key in ours:
        if key in theirs:
            nets[key[0]].append(key)
    for net in sorted(nets) + ["all"]:
        keys = [k for n in sorted(nets) for k in nets[n]] if net == "all" else nets[net]
        both = [k for k in keys if ours[k][0] in ("sat", "unsat")
                and theirs[k][0] in ("sat", "unsat")]
        for tool, res in (("advrobust", ours), ("alpha-beta-CROWN", theirs)):
            answers = [res[k][0] for k in keys]
            wrong = sum(res[k][0] in ("sat", "unsat")
                        and truth.get(k + (edition,), res[k][0]) not in (res[k][0], "unknown")
                        for k in keys)
            rows.append(
                f"| {net} | {tool} | {answers.count('sat')} | {answers.count('unsat')} | "
                f"{len(keys) - answers.count('sat') - answers.count('unsat')} | {wrong} | "
                f"{answers.count('sat') + answers.count('unsat')} / {len(keys)} | "
                f"{sum(res[k][1] for k in both):.1f} ({len(both)}) | "
                f"{sum(res[k][1] for k in keys):.1f} |")
    decided = ("sat", "unsat")
    for tool, mine, other in (("advrobust", ours, theirs), ("alpha-beta-CROWN", theirs, ours)):
        alone = [f"{k[0]} {k[1]} ({mine[k][0]}, {mine[k][1]:.1f} s)"
                 for n in sorted(nets) for k in nets[n]
                 if mine[k][0] in decided and other[k][0] not in decided]
        rows.append(f"\nDecided by {tool} only ({len(alone)}): " + ("; ".join(alone) or "none"))
    return "\n".join(rows)


def _subset(root: Path, instances: str, limit: int | None, folder: Path) -> Path:
    """The first ``limit`` instances of every network, in a CSV beside links to the data."""
    for name in ("onnx", "vnnlib", "vnnlib_2021"):
        if (root / name).exists():
            (folder / name).symlink_to((root / name).resolve())
    per_net: dict[str, int] = defaultdict(int)
    lines = []
    for line in (root / instances).read_text().splitlines():
        if not line.strip():
            continue
        net = line.split(",")[0]
        per_net[net] += 1
        if limit is None or per_net[net] <= limit:
            lines.append(line)
    out = folder / "instances.csv"
    out.write_text("\n".join(lines) + "\n")
    return out


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data/vnncomp/mnist_fc"))
    parser.add_argument("--instances", default="instances.csv")
    parser.add_argument("--limit", type=int, default=None, help="first N instances per network")
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("--abcrown-dir", type=Path,
                        default=Path("../peers-abcrown/alpha-beta-CROWN"))
    parser.add_argument("--abcrown-venv", type=Path, default=Path("../peers-abcrown/venv"))
    parser.add_argument("--wrapper", type=Path, default=Path("../shared/peers/run_abcrown.sh"))
    parser.add_argument("--pgd-order", choices=("before", "after", "skip"), default="before")
    parser.add_argument("--out", type=Path, default=Path("vnncomp_abcrown"),
                        help="folder for both tools' raw outputs")
    parser.add_argument("--table", nargs=2, type=Path, metavar=("OURS_CSV", "ABCROWN_LOG"))
    parser.add_argument("--together", action="store_true",
                        help="run both tools at the same time (one thread each) instead of one "
                             "after the other")
    args = parser.parse_args()
    edition = "vnnlib_2021" if "2021" in args.instances else "vnnlib"
    if args.table:
        print(table(read_ours(args.table[0]), read_abcrown(args.table[1]), read_truth(args.root),
                    edition))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    timeout = [] if args.timeout is None else [f"{args.timeout:g}"]
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = _subset(args.root, args.instances, args.limit, Path(tmp))
        ours_csv = args.out / "ours.csv"
        abc_log = args.out / "abcrown.log"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        ours_cmd = ["nice", "-n", "5", sys.executable, "-m", "advrobust", "vnncomp",
                    "--instances", str(csv_path), "--threads", "1",
                    "--answers", str(args.root / "known_answers.csv"),
                    "--out", str(ours_csv)] + (["--timeout"] + timeout if timeout else [])
        abc_cmd = ["nice", "-n", "5", str(args.wrapper), "--csv", str(csv_path)] + timeout
        abc_env = {**env, "ABCROWN_DIR": str(args.abcrown_dir.resolve()),
                   "LIRPA_VENV": str(args.abcrown_venv.resolve()),
                   "ABCROWN_THREADS": "1", "ABCROWN_PGD_ORDER": args.pgd_order}
        with abc_log.open("w") as fh:
            if args.together:
                print(f"both tools: start, load {_load()}", flush=True)
                ours = subprocess.Popen(ours_cmd, env=env, stdout=subprocess.DEVNULL)
                theirs = subprocess.Popen(abc_cmd, env=abc_env, stdout=fh)
                codes = [ours.wait(), theirs.wait()]
                if any(codes):
                    raise SystemExit(f"exit codes: advrobust {codes[0]}, "
                                     f"alpha-beta-CROWN {codes[1]}")
                print(f"both tools: end, load {_load()}\n", flush=True)
            else:
                print(f"advrobust: start, load {_load()}", flush=True)
                subprocess.run(ours_cmd, env=env, check=True, stdout=subprocess.DEVNULL)
                print(f"advrobust: end, load {_load()}; alpha-beta-CROWN: start", flush=True)
                subprocess.run(abc_cmd, stdout=fh, check=True, env=abc_env)
                print(f"alpha-beta-CROWN: end, load {_load()}\n", flush=True)
    print(table(read_ours(ours_csv), read_abcrown(abc_log), read_truth(args.root), edition))


if __name__ == "__main__":
    main()
