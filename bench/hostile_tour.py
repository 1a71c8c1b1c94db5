"""A short hostile-input tour over the CLI (issue 15): every case a clear answer, none silent.

Run by hand (not by pytest), in a scratch folder it creates:

    PYTHONPATH=src python bench/hostile_tour.py --out runs/tour [--jobs 2]

Each case runs ``python -m advrobust ...`` in a subprocess and is classified:

- ``traceback``: "Traceback" on stderr (always a bug);
- ``silent``: the case is bad input but the command exited 0, or it was expected to fail
  / be interrupted and said nothing on stderr, or an interrupted run kept nothing;
- ``ok``: bad input -> exit 2 with one ``advrobust CMD: error: ...`` line; Ctrl-C -> exit 130
  with one line; kill -9 -> no broken output file; concurrent writers -> one refused.

Cases: bad flags and values (negative / huge seeds, eps, n, batch sizes, unknown names),
corrupt and wrong-kind files (checkpoint, npz, ONNX, VNNLIB, store), NaN weights, outputs
that cannot be written, Ctrl-C after the first batch of attack / verify / evaluate / detect /
train / campaign, kill -9 during train, two writers of one --out / --save / store. Prints the
counts and the failing cases; exit status 1 if any traceback or silent case.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ENV = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}


@dataclass
class Case:
    name: str
    argv: list[str]
    expect: str = "error"  # error | ok | interrupt | kill | concurrent
    marker: Callable[[Path], bool] | None = None  # when to send the signal
    check: Callable[[Path, int, str, str], str | None] | None = None  # extra verdict
    setup: Callable[[Path], None] | None = None
    extra: dict[str, object] = field(default_factory=dict)


def _cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "advrobust", *argv]


def _run(argv: list[str], cwd: Path, timeout: float = 300) -> tuple[int, str, str]:
    proc = subprocess.run(argv, cwd=cwd, env=ENV, text=True, capture_output=True,
                          timeout=timeout, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def _signal_when(argv: list[str], cwd: Path, ready: Callable[[Path], bool], sig: int,
                 timeout: float = 240) -> tuple[int, str, str]:
    proc = subprocess.Popen(argv, cwd=cwd, env=ENV, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not ready(cwd) and time.monotonic() < deadline:
        time.sleep(0.01)
    if proc.poll() is None:
        proc.send_signal(sig)
    else:  # it ended before the signal could be sent: the case proves nothing
        proc.communicate()
        raise subprocess.TimeoutExpired(argv, 0, "ended before the signal")
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _lines(path: Path, at_least: int = 1) -> bool:
    try:
        return len(path.read_text().splitlines()) >= at_least
    except OSError:
        return False


def _classify(case: Case, code: int, out: str, err: str, cwd: Path) -> str:
    if "Traceback" in err:
        return "traceback"
    if case.expect == "error":
        if code == 0:
            return "silent"
        said = any(line.startswith("advrobust ") and ": error: " in line
                   for line in err.splitlines())
        return "ok" if code == 2 and said else "silent"
    if case.expect == "interrupt":
        if code != 130 or "interrupted" not in err.lower():
            return "silent"
    elif case.expect == "ok" and code != 0:
        return "silent"
    if case.check is not None:
        problem = case.check(cwd, code, out, err)
        if problem:
            return f"silent ({problem})"
    return "ok"


def _prepare(root: Path) -> dict[str, Path]:
    """A trained digits checkpoint, a NaN copy, corrupt files; returns their paths."""
    import numpy as np
    import torch


    root.mkdir(parents=True, exist_ok=True)
    ckpt = root / "m.pt"
    if not ckpt.exists():
        code, _, err = _run(_cli("train", "--data", "digits", "--model", "mlp2", "--epochs",
                                 "3", "--out", str(ckpt), "--no-progress"), root)
        assert code == 0, err
    raw = torch.load(ckpt, weights_only=True)  # save_checkpoint refuses NaN: edit the file
    paths = {"ckpt": ckpt, "nan": root / "nan.pt", "junk": root / "junk.pt",
             "trunc": root / "trunc.pt", "npz": root / "junk.npz", "onnx": root / "junk.onnx",
             "vnnlib": root / "junk.vnnlib", "db": root / "junk.db", "toml": root / "c.toml"}
    if not paths["nan"].exists():
        _poison(raw)
        torch.save(raw, paths["nan"])
    paths["junk"].write_bytes(b"not a checkpoint at all")
    paths["trunc"].write_bytes(ckpt.read_bytes()[:500])
    paths["npz"].write_bytes(b"PK\x03\x04garbage")
    paths["onnx"].write_bytes(b"\x08\x07garbage onnx")
    paths["vnnlib"].write_text("(declare-const X_0 Real)\n(assert (<= X_0 ")
    paths["db"].write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    np.savez(root / "perturbation.npz", wrong=np.zeros(3))
    paths["toml"].write_text(f"""
seed = 1
batch_size = 2
[data]
name = "digits"
n = 450
[[models]]
name = "m"
checkpoint = "{ckpt}"
[[threats]]
norm = "linf"
eps = [0.05, 0.1]
[[attacks]]
name = "pgd"
params = {{ steps = 200, restarts = 1 }}
""")
    return paths


def _poison(obj: object) -> bool:
    """Set the first floating-point weight found in a nested checkpoint dict to NaN."""
    import torch

    if isinstance(obj, dict):
        return any(_poison(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_poison(v) for v in obj)
    if torch.is_tensor(obj) and obj.is_floating_point() and obj.numel() > 1:
        obj.view(-1)[0] = float("nan")
        return True
    return False


def _cases(p: dict[str, Path], root: Path) -> list[Case]:
    m = str(p["ckpt"])
    dg = ["--data", "digits"]
    cases = [
        Case("seed -1 attack", _cli("attack", "--model", m, *dg, "--eps", "0.1", "--seed",
                                    "-1")),
        Case("seed huge verify", _cli("verify", "--model", m, *dg, "--eps", "0.1", "--seed",
                                      str(2**40))),
        Case("seed -3 train", _cli("train", *dg, "--model", "mlp2", "--out", "t.pt",
                                   "--seed", "-3")),
        Case("seed -1 detect", _cli("detect", "--model", m, *dg, "--seed", "-1")),
        Case("seed text evaluate", _cli("evaluate", "--model", m, *dg, "--eps", "0.1",
                                        "--seed", "abc")),
        Case("seed -1 smooth", _cli("smooth", "certify", "--model", m, *dg, "--seed", "-1")),
        Case("eps -1", _cli("attack", "--model", m, *dg, "--eps", "-1")),
        Case("eps nan", _cli("verify", "--model", m, *dg, "--eps", "nan")),
        Case("eps inf evaluate", _cli("evaluate", "--model", m, *dg, "--eps", "inf")),
        Case("n 0", _cli("attack", "--model", m, *dg, "--eps", "0.1", "--n", "0")),
        Case("n huge", _cli("verify", "--model", m, *dg, "--eps", "0.1", "--n", "99999")),
        Case("batch 0 verify", _cli("verify", "--model", m, *dg, "--eps", "0.1", "--batch-size",
                                    "0")),
        Case("batch 0 evaluate", _cli("evaluate", "--model", m, *dg, "--eps", "0.1",
                                      "--batch-size", "0")),
        Case("batch -2 detect", _cli("detect", "--model", m, *dg, "--batch-size", "-2")),
        Case("batch 0 attack", _cli("attack", "--model", m, *dg, "--eps", "0.1",
                                    "--batch-size", "0")),
        Case("unknown attack", _cli("attack", "--model", m, *dg, "--eps", "0.1", "--attack",
                                    "nope")),
        Case("unknown param", _cli("attack", "--model", m, *dg, "--eps", "0.1", "--param",
                                   "nope=1")),
        Case("bad param value", _cli("attack", "--model", m, *dg, "--eps", "0.1", "--param",
                                     "steps=-4")),
        Case("unknown method", _cli("verify", "--model", m, *dg, "--eps", "0.1", "--method",
                                    "magic")),
        Case("unknown data", _cli("attack", "--model", m, "--data", "imagenet", "--eps",
                                  "0.1")),
        Case("detect attacks empty", _cli("detect", "--model", m, *dg, "--attacks", ",")),
        Case("detect fpr 2", _cli("detect", "--model", m, *dg, "--fpr", "2", "--n", "5")),
        Case("detect fit-n huge", _cli("detect", "--model", m, *dg, "--fit-n", "10000000")),
        Case("target out of range", _cli("attack", "--model", m, *dg, "--eps", "0.1",
                                         "--target", "11")),
        Case("time-limit 0", _cli("verify", "--model", m, *dg, "--eps", "0.1", "--time-limit",
                                  "0")),
        Case("threads 0", _cli("verify", "--model", m, *dg, "--eps", "0.1", "--threads", "0",
                               "--method", "milp", "--n", "2")),
        Case("train epochs 0", _cli("train", *dg, "--model", "mlp2", "--out", "t.pt",
                                    "--epochs", "0")),
        Case("train lr -1", _cli("train", *dg, "--model", "mlp2", "--out", "t.pt", "--lr",
                                 "-1")),
        Case("junk checkpoint", _cli("attack", "--model", str(p["junk"]), *dg, "--eps", "0.1")),
        Case("truncated checkpoint", _cli("verify", "--model", str(p["trunc"]), *dg, "--eps",
                                          "0.1")),
        Case("missing checkpoint", _cli("detect", "--model", "absent.pt", *dg)),
        Case("checkpoint is a folder", _cli("evaluate", "--model", str(root), *dg, "--eps",
                                            "0.1")),
        Case("NaN weights attack", _cli("attack", "--model", str(p["nan"]), *dg, "--eps", "0.1",
                                        "--n", "5")),
        Case("NaN weights verify", _cli("verify", "--model", str(p["nan"]), *dg, "--eps",
                                        "0.1", "--n", "5")),
        Case("NaN weights detect", _cli("detect", "--model", str(p["nan"]), *dg, "--n", "5")),
        Case("NaN weights evaluate", _cli("evaluate", "--model", str(p["nan"]), *dg, "--eps",
                                          "0.1", "--n", "5")),
        Case("NaN weights info", _cli("info", str(p["nan"]))),
        Case("junk onnx", _cli("verify", "--onnx", str(p["onnx"]), *dg, "--eps", "0.1")),
        Case("junk vnnlib", _cli("verify", "--onnx", str(p["onnx"]), "--vnnlib",
                                 str(p["vnnlib"]))),
        Case("junk dictionary", _cli("attack", "--model", m, *dg, "--eps", "0.1", "--attack",
                                     "dictionary", "--dictionary", str(p["npz"]))),
        Case("wrong perturbation", _cli("attack", "--model", m, *dg, "--eps", "0.1", "--attack",
                                        "universal-apply", "--param",
                                        f"perturbation={root / 'perturbation.npz'}")),
        Case("junk store status", _cli("campaign", "status", str(p["db"]))),
        Case("junk store run", _cli("campaign", "run", str(p["toml"]), "--store",
                                    str(p["db"]))),
        Case("junk config", _cli("campaign", "run", str(p["npz"]), "--store", "x.db")),
        Case("report of junk store", _cli("report", str(p["db"]), "--out", "r.html")),
        Case("plot bad suffix", _cli("attack", "--model", m, *dg, "--eps", "0.1", "--plot",
                                     "p.txt")),
        Case("save bad suffix", _cli("verify", "--model", m, *dg, "--eps", "0.1", "--save",
                                     "rows.txt")),
        Case("detect save bad suffix", _cli("detect", "--model", m, *dg, "--save", "rows.xls")),
        Case("save into a file-as-folder", _cli("evaluate", "--model", m, *dg, "--eps", "0.1",
                                                "--save", f"{p['junk']}/rows.csv")),
        Case("save into /proc", _cli("detect", "--model", m, *dg, "--save",
                                     "/proc/rows.jsonl")),
        Case("out exists", _cli("train", *dg, "--model", "mlp2", "--out", m)),
        Case("save exists", _cli("attack", "--model", m, *dg, "--eps", "0.1", "--n", "3",
                                 "--save", str(p["toml"].with_suffix(".csv"))),
             setup=lambda c: p["toml"].with_suffix(".csv").write_text("x\n")),
        Case("vnnlib with save", _cli("verify", "--onnx", str(p["onnx"]), "--vnnlib",
                                      str(p["vnnlib"]), "--save", "r.jsonl")),
        Case("radius with save", _cli("verify", "--model", m, *dg, "--radius", "crown",
                                      "--save", "r.jsonl")),
        Case("digits model on mnist", _cli("attack", "--model", m, "--data", "mnist",
                                           "--data-dir", "/nonexistent", "--eps", "0.1")),
    ]
    cases += _interrupt_cases(m, dg)
    return cases


def _interrupt_cases(m: str, dg: list[str]) -> list[Case]:
    big = [*dg, "--n", "450", "--batch-size", "10", "--no-progress"]

    def kept(name: str) -> Callable[[Path, int, str, str], str | None]:
        def check(cwd: Path, code: int, out: str, err: str) -> str | None:
            last = err.strip().splitlines()[-1]
            if "saved" not in last:
                return "the interrupted line does not say what was saved"
            return None if _lines(cwd / name) else f"{name} is empty"
        return check

    return [
        Case("Ctrl-C attack", _cli("attack", "--model", m, *big, "--eps", "0.1", "--steps",
                                   "100", "--save", "a.jsonl"), expect="interrupt",
             marker=lambda c: _lines(c / "a.jsonl"), check=kept("a.jsonl")),
        Case("Ctrl-C verify", _cli("verify", "--model", m, *big, "--eps", "0.05", "--method",
                                   "lp", "--save", "v.csv"), expect="interrupt",
             marker=lambda c: _lines(c / "v.csv", 2), check=kept("v.csv")),
        Case("Ctrl-C evaluate", _cli("evaluate", "--model", m, *big, "--eps", "0.1",
                                     "--no-ensemble", "--save", "e.jsonl"), expect="interrupt",
             marker=lambda c: _lines(c / "e.jsonl"), check=kept("e.jsonl")),
        Case("Ctrl-C detect", _cli("detect", "--model", m, *big, "--attacks", "pgd,cw",
                                   "--save", "d.jsonl"), expect="interrupt",
             marker=lambda c: _lines(c / "d.jsonl"), check=kept("d.jsonl")),
        Case("Ctrl-C train", _cli("train", *dg, "--model", "mlp2", "--epochs", "200", "--out",
                                  "t.pt", "--no-progress"), expect="interrupt",
             marker=lambda c: (c / "t.pt").exists()),
        Case("Ctrl-C campaign", _cli("campaign", "run", "c.toml", "--store", "s.db",
                                     "--no-progress"), expect="interrupt",
             marker=lambda c: _units(c / "s.db") > 0),
        Case("kill -9 train", _cli("train", *dg, "--model", "mlp2", "--epochs", "200", "--out",
                                   "k.pt", "--no-progress"), expect="kill",
             marker=lambda c: (c / "k.pt").exists()),
        Case("two writers of --out", _cli("train", *dg, "--model", "mlp2", "--epochs", "30",
                                          "--out", "w.pt", "--no-progress"),
             expect="concurrent"),
        Case("two campaign runs", _cli("campaign", "run", "c.toml", "--store", "w.db",
                                       "--no-progress"), expect="concurrent"),
        Case("two writers of --save", _cli("attack", "--model", m, *big, "--eps", "0.1",
                                           "--steps", "50", "--save", "w.jsonl"),
             expect="concurrent"),
    ]


def _units(db: Path) -> int:
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM units").fetchone()[0])
    except sqlite3.Error:
        return 0


def _kill_check(cwd: Path) -> str | None:
    from advrobust.models import load_checkpoint

    try:
        load_checkpoint(cwd / "k.pt")
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        return f"kill -9 left a broken checkpoint ({exc})"
    return None


def _concurrent(case: Case, cwd: Path) -> str:
    first = subprocess.Popen(case.argv, cwd=cwd, env=ENV, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.5)
    code2, _, err2 = _run(case.argv, cwd)
    if first.poll() is None:  # the second has answered: stop the first (Ctrl-C) to save time
        first.send_signal(signal.SIGINT)
    _, err1 = first.communicate(timeout=600)
    if "Traceback" in err1 + err2:
        return "traceback"
    if first.returncode == 0 and code2 == 0:
        return "silent (both writers claimed success)"
    return "ok"


def run_case(case: Case, root: Path) -> tuple[str, str]:
    cwd = root / case.name.replace(" ", "_").replace("/", "_")
    cwd.mkdir(parents=True, exist_ok=True)
    (cwd / "c.toml").write_text((root / "c.toml").read_text())
    if case.setup is not None:
        case.setup(cwd)
    try:
        if case.expect == "concurrent":
            return case.name, _concurrent(case, cwd)
        if case.expect in ("interrupt", "kill"):
            sig = signal.SIGINT if case.expect == "interrupt" else signal.SIGKILL
            assert case.marker is not None
            code, out, err = _signal_when(case.argv, cwd, case.marker, sig)
            if case.expect == "kill":
                if "Traceback" in err:
                    return case.name, "traceback"
                return case.name, f"silent ({p})" if (p := _kill_check(cwd)) else "ok"
        else:
            code, out, err = _run(case.argv, cwd)
    except subprocess.TimeoutExpired as exc:
        return case.name, f"silent ({exc.output or 'timed out'})"
    (cwd / "stderr.txt").write_text(err)
    verdict = _classify(case, code, out, err, cwd)
    if verdict != "ok":
        verdict += f" [exit {code}] {err.strip().splitlines()[-1] if err.strip() else ''}"
    return case.name, verdict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("hostile-tour"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", default=None, help="run the cases whose name holds this")
    args = parser.parse_args()
    root = args.out.resolve()
    paths = _prepare(root)
    cases = [c for c in _cases(paths, root) if args.only is None or args.only in c.name]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda c: run_case(c, root), cases))
    counts = {"ok": 0, "traceback": 0, "silent": 0}
    for name, verdict in results:
        counts[verdict.split()[0]] += 1
        if verdict != "ok":
            print(f"- {name}: {verdict}")
    print(f"{len(results)} cases: {counts['ok']} ok, {counts['traceback']} tracebacks, "
          f"{counts['silent']} silent")
    return 1 if counts["traceback"] or counts["silent"] else 0


if __name__ == "__main__":
    sys.exit(main())
