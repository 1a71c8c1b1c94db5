"""alpha-CROWN over the op registry's graph pass: chain speed and results against a baseline
copy of the chain-only engine, and the gain over CROWN on random DAG networks.

1. mnist_fc 256x4 (VNN-COMP), the root alpha-CROWN of BaB (20 steps, optimised intermediate
   bounds, CROWN's layer bounds as the start) per property: CPU seconds of this engine and of a
   baseline module (a copy of an older ``alpha_crown.py``), interleaved A B A B, median of
   ``--repeat``; the two results must be bit-identical.
2. Random residual / concat DAGs (ReLU, LeakyReLU, sigmoid, tanh): alpha-CROWN with optimised
   intermediate bounds vs CROWN (mean and max gain of the lower bound, share of rows improved),
   every bound checked against sampled points.

Run (from the repo root; the baseline is main before the change)::

    git show 807e9be:src/advrobust/relax/alpha_crown.py > runs/alpha_crown_old.py
    nice -n 10 env PYTHONPATH=$PWD/src OMP_NUM_THREADS=1 python bench/alpha_crown_graph.py \\
        --baseline runs/alpha_crown_old.py
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

import torch

from advrobust.core import LpBall, Spec
from advrobust.network import build_graph
from advrobust.network.ir import from_module
from advrobust.network.onnx import import_onnx
from advrobust.network.vnnlib import load_vnnlib
from advrobust.relax import alpha_crown as engine
from advrobust.relax.crown import crown_layer_bounds
from advrobust.relax.dag import graph_crown_bounds, graph_crown_lower
from advrobust.relax.witness import float64_copy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.relax.dag_nets import RandomDag  # noqa: E402


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("alpha_crown_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _cpu(fn):  # type: ignore[no-untyped-def]
    start = time.process_time()
    out = fn()
    return time.process_time() - start, out


def chain_speed(root: Path, baseline: ModuleType | None, props: int, repeat: int) -> None:
    rows = [r for r in csv.DictReader(open(root / "known_answers.csv"))
            if r["network"].endswith("256x4.onnx")][:props]
    onnx_net = import_onnx(root / rows[0]["network"])
    net = from_module(float64_copy(onnx_net.model), onnx_net.input_shape)
    print("| property | new CPU s | baseline CPU s | ratio | bit-identical | lower (min row) |")
    print("|---|---|---|---|---|---|")
    ratios = []
    for row in rows:
        prop = load_vnnlib(root / row["property"])
        x0, ball = prop.as_linf_ball(0.0, 1.0)
        spec = prop.to_spec(1)
        x = x0.reshape(1, *onnx_net.input_shape).double()
        c, d = spec.C.double(), spec.d.double()
        with torch.no_grad():
            layers = crown_layer_bounds(net, x, ball, rounding=True)

        def run(module: ModuleType, x: torch.Tensor = x, ball: LpBall = ball,
                c: torch.Tensor = c, d: torch.Tensor = d,
                layers: list = layers) -> engine.AlphaResult:
            return module.alpha_crown(  # type: ignore[no-any-return]
                net, x, ball, c, d, steps=20, intermediate=True, bounds=layers)

        new_t, old_t = [], []
        for _ in range(repeat):
            t, new = _cpu(lambda: run(engine))
            new_t.append(t)
            if baseline is not None:
                t, old = _cpu(lambda: run(baseline))
                old_t.append(t)
        same = "-"
        if baseline is not None:
            same = str(torch.equal(new.lower, old.lower) and all(
                torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                for a, b in zip(new.bounds, old.bounds, strict=True)))
        tn = statistics.median(new_t)
        to = statistics.median(old_t) if old_t else float("nan")
        ratios.append(tn / to)
        print(f"| {Path(row['property']).stem} | {tn:.3f} | {to:.3f} | {tn / to:.3f} | {same} | "
              f"{float(new.lower.min()):.4f} |", flush=True)
    print(f"\nmedian ratio new / baseline: {statistics.median(ratios):.3f}")


def dag_gain(nets: int, eps: float) -> None:
    print("\n| DAG seed | rows | CROWN mean | alpha mean | max gain | rows improved | sound |")
    print("|---|---|---|---|---|---|---|")
    for seed in range(nets):
        model = RandomDag(seed, blocks=3, width=12).double().eval()
        graph = build_graph(model, (5,))
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(4, 5, generator=gen, dtype=torch.float64)
        spec = Spec.margins(model(x).argmax(1), 3)
        spec = Spec(spec.C.double(), spec.d.double())
        ball = LpBall("linf", eps, lo=0.0, hi=1.0)
        with torch.no_grad():
            bounds = graph_crown_bounds(graph, x, ball, rounding=True)
            crown = graph_crown_lower(graph, x, ball, spec.C, spec.d, bounds=bounds,
                                      rounding=True)
        res = engine.alpha_crown(graph, x, ball, spec.C, spec.d, steps=20, bounds=bounds)
        pts = x.unsqueeze(0) + eps * (2 * torch.rand((2000,) + x.shape, generator=gen,
                                                     dtype=torch.float64) - 1)
        pts = pts.clamp(0, 1)
        with torch.no_grad():
            vals = torch.einsum("nko,mno->mnk", spec.C, model(pts.flatten(0, 1))
                                .reshape(2000, 4, 3)) + spec.d
        sound = bool((res.lower <= vals.amin(0)).all())
        gain = res.lower - crown
        print(f"| {seed} | {crown.numel()} | {float(crown.mean()):.4f} | "
              f"{float(res.lower.mean()):.4f} | {float(gain.max()):.4f} | "
              f"{float((gain > 1e-9).double().mean()):.2f} | {sound} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data/vnncomp/mnist_fc"))
    parser.add_argument("--baseline", type=Path, default=None)
    parser.add_argument("--props", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dags", type=int, default=6)
    parser.add_argument("--eps", type=float, default=0.1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    baseline = _load(args.baseline) if args.baseline is not None else None
    chain_speed(args.root, baseline, args.props, args.repeat)
    dag_gain(args.dags, args.eps)


if __name__ == "__main__":
    main()
