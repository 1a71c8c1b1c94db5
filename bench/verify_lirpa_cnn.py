"""CROWN on convolutional networks: advrobust against auto_LiRPA 0.7.x, side by side (issue 10).

auto_LiRPA lives in a side environment, never in the project (see ../shared/peers/README.md):
a venv made with ``--system-site-packages`` (it reuses this machine's torch) and auto_LiRPA
installed ``--no-deps`` from its GitHub snapshot. Run by hand from the repository root::

    PYTHONPATH=$PWD/src python bench/verify_lirpa_cnn.py --shared ../shared/data \\
        --lirpa-python ../peers-lirpa/venv/bin/python

For every network (the course ``cnn`` and ``lenet``, untrained, seed 0, and a small CNN with a
batch-norm) and every linf radius, three child processes run at the same time (one thread each,
so they see the same machine load): advrobust's public ``CROWN()`` call (float64 with rounding
allowances; IR build and witness gate included), auto_LiRPA's ``compute_bounds(method=
"backward")`` (float32, its default; the one-off ``BoundedModule`` build excluded), and
advrobust's bare float32 pass without allowances (``crown_layer_bounds`` + ``crown_lower``: the
same algorithm at auto_LiRPA's precision, not what the verifiers run), on the same images and
margin spec. Each child reports the wall time of the bound call and its peak RSS
(``ru_maxrss``; "delta" is the peak minus the RSS just before the call). The bounds are
compared row by row; advrobust's lower bounds are also checked against the margins of random
points of the box (soundness where they are tighter).

The ratio depends on the CPU: advrobust's sound passes run in float64, auto_LiRPA's in float32,
and how much slower float64 GEMM is than float32 varies between CPUs (2.2x on the project's AMD
machine without AVX-512 in session 18). The first line printed names the CPU and one thread's
float64 and float32 GEMM rates, so runs on different machines can be told apart.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall
from advrobust.data import load_dataset
from advrobust.models import build_model

NETS = ("cnn", "lenet", "small_cnn")
LIBS = ("ours", "ours32", "lirpa")


def _machine() -> str:
    """The CPU's model name and one thread's float64 / float32 GEMM rate (1024^3, best of 5)."""
    name = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rates = []
    for dtype in (torch.float64, torch.float32):
        a = torch.randn(1024, 1024, dtype=dtype)
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - start)
        rates.append(1024 ** 3 / best / 1e9)
    torch.set_num_threads(threads)
    return (f"{name}; one thread's GEMM: float64 {rates[0]:.0f} GMAC/s, float32 "
            f"{rates[1]:.0f} GMAC/s ({rates[1] / rates[0]:.1f}x)")


def _small_cnn() -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
            nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10))
        bn = model[1]
        assert isinstance(bn, nn.BatchNorm2d)
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def _model(name: str) -> nn.Module:
    if name == "small_cnn":
        return _small_cnn()
    return build_model(name, (1, 28, 28), seed=0).eval()


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    model = _model(args.net)
    data = load_dataset("mnist", "test", args.shared).take(args.n)
    x, y = data.x, data.y
    eps = float(args.eps[0])
    threat = LpBall("linf", eps)
    c = Spec.margins(y, 10).C
    info: dict[str, float] = {}
    if args.lib == "lirpa":
        from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

        bounded = BoundedModule(model, torch.zeros_like(x[:1]), device="cpu")
        low, up = threat.input_bounds(x)
        ptb = PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=low, x_U=up)
        before = _rss_mb()
        start = time.perf_counter()
        with torch.no_grad():
            lower, _ = bounded.compute_bounds(x=(BoundedTensor(x, ptb),), C=c,
                                              method="backward", bound_upper=False)
        info["seconds"] = time.perf_counter() - start
    elif args.lib == "ours32":
        from advrobust.network import from_module
        from advrobust.relax import crown_layer_bounds, crown_lower

        net = from_module(model, (1, 28, 28))
        before = _rss_mb()
        start = time.perf_counter()
        with torch.no_grad():
            bounds = crown_layer_bounds(net, x, threat)
            lower = crown_lower(net, x, threat, c, bounds=bounds)
        info["seconds"] = time.perf_counter() - start
    else:
        from advrobust.relax import CROWN

        before = _rss_mb()
        start = time.perf_counter()
        lower = CROWN()(model, x, y, threat).lower
        info["seconds"] = time.perf_counter() - start
    info["peak_mb"] = _rss_mb()
    info["delta_mb"] = info["peak_mb"] - before
    if args.lib == "ours":  # after the peak is read: the check's own memory is not counted
        info["violations"] = float(_sampled_violations(model, x, threat, c, lower))
    torch.save(lower.detach().double(), args.out)
    print(json.dumps(info), flush=True)


def _sampled_violations(model: nn.Module, x: torch.Tensor, threat: LpBall, c: torch.Tensor,
                        lower: torch.Tensor, samples: int = 64) -> int:
    """Rows whose lower bound exceeds the margin of a random corner or point of the box."""
    gen = torch.Generator().manual_seed(0)
    low, up = threat.input_bounds(x)
    m64 = _model_double(model)
    bad = torch.zeros_like(lower, dtype=torch.bool)
    with torch.no_grad():
        for k in range(samples):
            u = torch.rand(low.shape, generator=gen, dtype=torch.float64)
            if k % 2 == 0:
                u = (u > 0.5).double()
            pts = low.double() + u * (up - low).double()
            margins = torch.einsum("nkc,nc->nk", c.double(), m64(pts))
            bad |= lower.double() > margins
    return int(bad.sum())


def _model_double(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).double().eval()


def _spawn(python: str, args: argparse.Namespace, net: str, eps: float, lib: str,
           out: Path) -> subprocess.Popen[str]:
    cmd = [python, __file__, "--child", "--lib", lib, "--net", net, "--eps", str(eps),
           "--n", str(args.n), "--shared", str(args.shared), "--out", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                                 "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})


def _collect(proc: subprocess.Popen[str], what: str) -> dict[str, float]:
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{stderr[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--lirpa-python", default="../peers-lirpa/venv/bin/python")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.01, 0.03])
    parser.add_argument("--nets", nargs="+", default=list(NETS), choices=NETS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lib", choices=LIBS, help=argparse.SUPPRESS)
    parser.add_argument("--net", choices=NETS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    print(f"machine: {_machine()}\n")
    print("| network | eps | advrobust s | auto_LiRPA s | speed-up | advrobust peak / delta MB "
          "| auto_LiRPA peak / delta MB | max abs diff | max (LiRPA - ours) | sampled "
          "violations | float32 bare pass s (peak MB) | its max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for net in args.nets:
            for eps in args.eps:
                paths = {lib: Path(tmp) / f"{lib}.pt" for lib in LIBS}
                procs = {lib: _spawn(args.lirpa_python if lib == "lirpa" else sys.executable,
                                     args, net, eps, lib, paths[lib]) for lib in LIBS}
                res = {lib: _collect(p, f"{lib} on {net}") for lib, p in procs.items()}
                low = {lib: torch.load(paths[lib], weights_only=True) for lib in LIBS}
                diff = low["ours"] - low["lirpa"]
                o, t, f = res["ours"], res["lirpa"], res["ours32"]
                print(f"| {net} | {eps} | {o['seconds']:.1f} | {t['seconds']:.1f} | "
                      f"{t['seconds'] / o['seconds']:.2f}x | {o['peak_mb']:.0f} / "
                      f"{o['delta_mb']:.0f} | {t['peak_mb']:.0f} / {t['delta_mb']:.0f} | "
                      f"{float(diff.abs().max()):.1e} | {float((-diff).max()):+.1e} | "
                      f"{int(o['violations'])} | {f['seconds']:.1f} ({f['peak_mb']:.0f}) | "
                      f"{float((low['ours32'] - low['lirpa']).abs().max()):.1e} |", flush=True)

if __name__ == "__main__":
    main()
