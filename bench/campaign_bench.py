"""Campaign bench: one campaign vs the shell loop of separate attack + verify runs; backends.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/campaign_bench.py --model ibp.pt \
        --data-dir ../shared/data/mnist --out runs/campaign

The defaults are issue 13's campaign: the first 1,000 MNIST test images, linf eps {0.01, 0.02,
0.05, 0.1}, CROWN -> PGD-50 -> BaB -> MILP (1 s), 25 images per task. Serial / pool / Ray
alone, back to back, ``--rounds`` times interleaved (medians): ``--skip shell --rounds 3``.

Runs (1) ``advrobust campaign run`` serially, (2) with ``--workers 2`` (pool), (3) with
``--backend ray --workers 2`` (when Ray is installed), (4) for every eps the shell loop
``advrobust attack --attack pgd`` + ``advrobust verify --method auto`` on the same images, and
prints one JSON object: undecided share per eps, wall and CPU times, speed-ups and the work
ratio (units each method ran on, and wall time); then, on stderr, the load average and one line
per backend (wall s, CPU s of the whole process tree with Ray's processes, ratio to serial).
``--kills K`` instead SIGKILLs a campaign K times
at random moments and checks the resumed store against an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import proctree

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[0] / "src"
# the CLI with the Ray backend's debug log (its timeline) on stderr
PROFILED = ("import logging, sys; logging.basicConfig(level=logging.WARNING, "
            "format='%(relativeCreated)7.0f ms %(name)s: %(message)s'); "
            "logging.getLogger('advrobust.evaluation.campaign.raybackend').setLevel("
            "logging.DEBUG); from advrobust.cli import main; sys.exit(main(sys.argv[1:]))")
CONFIG = """
seed = 0
batch_size = {batch}
threads = 1
[data]
name = "mnist"
dir = "{data_dir}"
n = {n}
[[models]]
name = "ibp-small"
checkpoint = "{model}"
[[threats]]
norm = "linf"
eps = [0.01, 0.02, 0.05, 0.1]
[[attacks]]
name = "pgd"
params = {{ steps = 50, restarts = 2, loss = "margin" }}
[certify]
methods = {methods}
time_limit = {limit}
"""
EPS = (0.01, 0.02, 0.05, 0.1)


def _cli(*args: str, check: bool = True) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "advrobust", *args], env=env, text=True,
                          capture_output=True)
    if check and done.returncode != 0:
        raise SystemExit(done.stderr)
    return time.perf_counter() - t0, done.stdout


def _campaign(config: Path, db: Path, *extra: str, profile: bool = False,
              src: Path = SRC) -> tuple[float, float]:
    """Wall and CPU seconds of the CLI process and every process it started, Ray's included
    (exact: see ``proctree``). ``profile``: print CPU s per component and the driver's Ray
    timeline (debug log of the Ray backend) on stderr."""
    db.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(HERE)]),
           "OMP_NUM_THREADS": "1"}
    args = ["campaign", "run", str(config), "--store", str(db), "--no-progress", *extra]
    cmd = [sys.executable, "-c", PROFILED, *args] if profile else \
        [sys.executable, "-m", "advrobust", *args]
    wall, cpu, tree, done = proctree.run(cmd, env)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    if profile:
        print(f"--- {' '.join(extra) or 'serial'}: {wall:.1f} s wall, {cpu:.1f} CPU s (exact)",
              file=sys.stderr)
        if tree is not None:
            for role, (c, n, s) in sorted(tree.by_role().items(), key=lambda kv: -kv[1][0]):
                print(f"  {role:<22} {c:6.2f} CPU s  {n:2d} process(es), first started "
                      f"+{s:.2f} s", file=sys.stderr)
        for line in done.stderr.splitlines():
            if "raybackend" in line:
                print("  " + line, file=sys.stderr)
    return wall, cpu


class _WarmCluster:
    """A local Ray cluster of 2 CPUs started with ``ray start`` (the library importable by its
    workers), and one untimed campaign against it so that its named actors are up."""

    def __init__(self, config: Path, out: Path) -> None:
        # 'ray start' enables token authentication: its drivers (the timed campaigns) must
        # send the token it writes to ~/.ray/auth_token
        os.environ["RAY_AUTH_MODE"] = "token"
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)]),
                    "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
        ray = [sys.executable, "-m", "ray.scripts.scripts"]
        subprocess.run([*ray, "stop", "--force"], env=self.env, capture_output=True)
        subprocess.run([*ray, "start", "--head", "--num-cpus", "2", "--port", "6390",
                        "--include-dashboard=false", "--disable-usage-stats"],
                       env=self.env, check=True, capture_output=True)
        self.address, self.ray = "127.0.0.1:6390", ray
        wall, _ = _campaign(config, out / "raywarm-warmup.db", "--backend", "ray",
                            "--address", self.address)
        print(f"warm cluster up; first campaign (actors started) {wall:.1f} s wall",
              file=sys.stderr)

    def stop(self) -> None:
        subprocess.run([*self.ray, "stop", "--force"], env=self.env, capture_output=True)


def _train(model: Path, data_dir: Path) -> None:
    """The bench's model when ``--model`` does not exist yet: the IBP-trained ``small`` CNN
    (clean test accuracy ~0.89; ~10-60 CPU s), so that one command re-measures from scratch."""
    print(f"training the bench's IBP model into {model}", file=sys.stderr)
    model.parent.mkdir(parents=True, exist_ok=True)
    seconds, _ = _cli("train", "--model", "small", "--data", "mnist", "--data-dir",
                      str(data_dir), "--defense", "ibp", "--eps", "0.15", "--ramp", "0.5",
                      "--epochs", "4", "--optimizer", "adam", "--lr", "5e-3", "--out", str(model),
                      "--no-progress")
    print(f"trained in {seconds:.1f} s", file=sys.stderr)


def _store_stats(db: Path) -> dict[str, object]:
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT eps, verdict, seconds FROM units").fetchall()
    per_eps: dict[str, dict[str, int]] = {}
    work: dict[str, int] = {}
    for eps, verdict, seconds in rows:
        bucket = per_eps.setdefault(f"{eps:g}", {"verified": 0, "falsified": 0, "unknown": 0})
        bucket[verdict] += 1
        for stage in json.loads(seconds):
            if stage != "clean":
                work[stage] = work.get(stage, 0) + 1
    verdicts = {e: (b["verified"], b["falsified"], b["unknown"]) for e, b in per_eps.items()}
    return {"per_eps": per_eps, "verdicts": verdicts, "work_units": work,
            "undecided": {e: b["unknown"] / sum(b.values()) for e, b in per_eps.items()}}


def _shell_loop(args: argparse.Namespace) -> dict[str, object]:
    common = ["--model", str(args.model), "--data", "mnist", "--data-dir", str(args.data_dir),
              "--n", str(args.n), "--norm", "linf"]
    total, work, undecided = 0.0, 0, {}
    for eps in EPS:
        t_attack, _ = _cli("attack", *common, "--eps", str(eps), "--attack", "pgd", "--steps",
                           "50", "--restarts", "2", "--param", "loss=margin", "--json")
        t_verify, out = _cli("verify", *common, "--eps", str(eps), "--method", "auto",
                             "--time-limit", str(2 * args.limit), "--json", "--no-progress")
        total += t_attack + t_verify
        report = json.loads(out)
        decided = report["decided_by"]
        after_crown = args.n - decided.get("clean", 0) - decided.get("crown", 0)
        after_pgd = after_crown - decided.get("pgd", 0)
        after_bab = after_pgd - decided.get("bab", 0)
        work += args.n + args.n + after_crown + after_pgd + after_bab  # attack, crown, ...
        undecided[f"{eps:g}"] = report["unknown"] / args.n
    return {"seconds": total, "work_units": work, "undecided": undecided}


def _kills(args: argparse.Namespace, config: Path) -> dict[str, object]:
    reference = args.out / "reference.db"
    _campaign(config, reference)
    db = args.out / "killed.db"
    db.unlink(missing_ok=True)
    rng, kills = random.Random(0), 0
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    while kills < args.kills:
        proc = subprocess.Popen([sys.executable, "-m", "advrobust", "campaign", "run",
                                 str(config), "--store", str(db), "--no-progress"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 12.0))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    _cli("campaign", "run", str(config), "--store", str(db), "--no-progress")
    q = "SELECT model, sample, norm, eps_index, verdict, status FROM units ORDER BY 1, 2, 3, 4"
    got = sqlite3.connect(db).execute(q).fetchall()
    want = sqlite3.connect(reference).execute(q).fetchall()
    keys = [g[:4] for g in got]
    return {"kills": kills, "units": len(got), "expected": len(want),
            "duplicated": len(keys) - len(set(keys)),
            "lost": len({w[:4] for w in want} - set(keys)), "same_verdicts": got == want,
            "integrity": sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True,
                   help="the IBP-trained small CNN; trained here first when the file is absent")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--n", type=int, default=1000, help="images (the first N of the test set)")
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--limit", type=float, default=1.0, help="seconds per exact method")
    p.add_argument("--out", type=Path, default=Path("runs/campaign"))
    p.add_argument("--kills", type=int, default=0)
    p.add_argument("--methods", default="crown,bab,milp",
                   help="certificates (comma list); --kills uses 'crown' alone by default "
                        "so that no wall-clock time limit makes two runs differ")
    p.add_argument("--skip", default="", help="comma list of: serial, pool, ray, shell")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the backends this many times, interleaved; medians reported")
    p.add_argument("--profile", action="store_true",
                   help="per run, on stderr: CPU s per process role (driver, Ray's GCS, "
                        "raylet, agents, actors) and the Ray backend's timeline")
    p.add_argument("--warm-cluster", action="store_true",
                   help="also run the Ray backend against a running local cluster (started "
                        "here with 'ray start --head --num-cpus 2', warmed by one untimed "
                        "campaign, stopped at the end): its actors are reused (row 'raywarm'; "
                        "CPU s exclude the cluster's processes, which the CLI did not start)")
    p.add_argument("--compare-src", type=Path, default=None,
                   help="also run the Ray backend from this other source tree (e.g. an older "
                        "commit's src/, from `git archive`), interleaved with the others")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.model.is_file():
        _train(args.model, args.data_dir)
    config = args.out / "campaign.toml"
    config.write_text(CONFIG.format(batch=args.batch, data_dir=args.data_dir.resolve(),
                                    n=args.n, model=args.model.resolve(), limit=args.limit,
                                    methods=json.dumps(args.methods.split(","))))
    if args.kills:
        print(json.dumps(_kills(args, config), indent=2))
        return
    skip = set(args.skip.split(","))
    load = os.getloadavg()
    result: dict[str, object] = {"n": args.n, "eps": EPS, "load": load}
    runs = {"serial": (), "pool2": ("--workers", "2"),
            "ray2": ("--backend", "ray", "--workers", "2")}
    runs = {name: extra for name, extra in runs.items() if name.rstrip("2") not in skip}
    if args.compare_src is not None:
        runs["ray2-other-src"] = runs.get("ray2", ("--backend", "ray", "--workers", "2"))
    cluster = _WarmCluster(config, args.out) if args.warm_cluster else None
    if cluster is not None:
        runs["raywarm"] = ("--backend", "ray", "--address", cluster.address)
    walls: dict[str, list[float]] = {name: [] for name in runs}
    cpus: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):  # backends interleaved: a load change hits them alike
        for name, extra in runs.items():
            src = args.compare_src.resolve() if name.endswith("other-src") else SRC
            wall, cpu = _campaign(config, args.out / f"{name}.db", *extra,
                                  profile=args.profile, src=src)
            walls[name].append(wall)
            cpus[name].append(cpu)
    if cluster is not None:
        cluster.stop()
    times = {name: (statistics.median(walls[name]), statistics.median(cpus[name]))
             for name in runs}
    for name in runs:
        result[f"{name}_s"], result[f"{name}_cpu_s"] = times[name]
        result[f"{name}_runs_s"] = walls[name]
        stats = _store_stats(args.out / f"{name}.db")
        if name == "serial":
            result["serial"] = stats
        elif "serial" in runs:
            result[f"{name}_speedup"] = times["serial"][0] / times[name][0]
            result[f"{name}_units_differing_from_serial"] = _differing(
                args.out / "serial.db", args.out / f"{name}.db")
    if "shell" not in skip:
        result["shell"] = _shell_loop(args)
    result["load_after"] = after = os.getloadavg()
    print(json.dumps(result, indent=2))
    print(f"load average (1 min) before {load[0]:.2f}, after {after[0]:.2f}; "
          f"median of {args.rounds} round(s)", file=sys.stderr)
    base = times.get("serial")
    for name, (wall, cpu) in times.items():
        versus = "" if base is None else \
            f", {base[0] / wall:5.2f}x vs serial, {cpu - base[1]:+5.1f} CPU s vs serial"
        print(f"{name:>7}: {wall:7.1f} s wall, {cpu:7.1f} s CPU{versus}", file=sys.stderr)


def _differing(a: Path, b: Path) -> int:
    """Units whose verdict differs between two stores (or that only one of them holds)."""
    q = "SELECT model, sample, norm, eps_index, verdict FROM units"
    one = {r[:4]: r[4] for r in sqlite3.connect(a).execute(q)}
    two = {r[:4]: r[4] for r in sqlite3.connect(b).execute(q)}
    return sum(one.get(k) != two.get(k) for k in one.keys() | two.keys())

if __name__ == "__main__":
    main()
