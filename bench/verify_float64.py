"""The cost of sound floating point: CROWN (and IBP) in float32 without rounding allowances
(the old path) vs float64 with them (what every verifier now runs), on the VNN-COMP mnist_fc
MLPs, plus how far the float32 bound sits from the float64 one.

Run by hand::

    python bench/verify_float64.py --root ../shared/data/vnncomp/mnist_fc [--props 5] [--repeat 5]

Times are the minimum over ``--repeat`` runs of one property's bound pass (one thread). "max bound
gap" is how far the float32 bound without allowances lies above the sound float64 one (the
unsoundness the allowances remove); the last two columns measure the alternative the issue
offers, float32 with the same (outward) allowances: its cost and how much looser it is.
"""

from __future__ import annotations

import argparse
import csv
import functools
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from advrobust.core import LpBall
from advrobust.network.ir import Network, from_module
from advrobust.network.onnx import import_onnx
from advrobust.network.vnnlib import load_vnnlib
from advrobust.relax import crown_layer_bounds, crown_lower, interval_layer_bounds
from advrobust.relax.ibp import spec_interval
from advrobust.relax.witness import float64_copy


def _best(fn: Callable[[], torch.Tensor], repeat: int) -> tuple[float, torch.Tensor]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    assert out is not None
    return min(times), out


def _crown(net: Network, x: torch.Tensor, ball: LpBall, c: torch.Tensor, d: torch.Tensor,
           rounding: bool) -> torch.Tensor:
    with torch.no_grad():
        b = crown_layer_bounds(net, x, ball, rounding=rounding)
        return crown_lower(net, x, ball, c, d, bounds=b, rounding=rounding)


def _ibp(net: Network, x: torch.Tensor, ball: LpBall, c: torch.Tensor, d: torch.Tensor,
         rounding: bool) -> torch.Tensor:
    with torch.no_grad():
        b = interval_layer_bounds(net, *ball.input_bounds(x), rounding=rounding)
        return spec_interval(net, b, c, rounding=rounding)[0] + d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data/vnncomp/mnist_fc"))
    parser.add_argument("--props", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = list(csv.DictReader(open(args.root / "known_answers.csv")))
    print("| network | method | float32 s | float64+allowances s | ratio | max bound gap | "
          "float32+allowances ratio | its max loosening |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("256x2", "256x4", "256x6"):
        mine = [r for r in rows if r["network"].endswith(f"{name}.onnx")][:args.props]
        onnx_net = import_onnx(args.root / mine[0]["network"])
        net32 = from_module(onnx_net.model, onnx_net.input_shape)
        net64 = from_module(float64_copy(onnx_net.model), onnx_net.input_shape)
        ratios: dict[str, list[float]] = {"crown": [], "ibp": []}
        ratios_r32: dict[str, list[float]] = {"crown": [], "ibp": []}
        loose: dict[str, float] = {"crown": 0.0, "ibp": 0.0}
        t32s: dict[str, float] = {"crown": 0.0, "ibp": 0.0}
        t64s: dict[str, float] = {"crown": 0.0, "ibp": 0.0}
        gaps: dict[str, float] = {"crown": 0.0, "ibp": 0.0}
        for row in mine:
            prop = load_vnnlib(args.root / row["property"])
            label = prop.robustness_label()
            x0, ball = prop.as_linf_ball(0.0, 1.0)
            spec = prop.to_spec(1)
            x32 = x0.reshape(1, *onnx_net.input_shape).float()
            x64, c64, d64 = x32.double(), spec.C.double(), spec.d.double()
            c32, d32 = spec.C.float(), spec.d.float()
            assert label is not None and isinstance(ball, LpBall)

            args32 = (net32, x32, ball, c32, d32)
            args64 = (net64, x64, ball, c64, d64)
            crown32 = functools.partial(_crown, *args32, False)
            crown32r = functools.partial(_crown, *args32, True)
            crown64 = functools.partial(_crown, *args64, True)
            ibp32 = functools.partial(_ibp, *args32, False)
            ibp32r = functools.partial(_ibp, *args32, True)
            ibp64 = functools.partial(_ibp, *args64, True)
            for method, f32, f64, f32r in (("crown", crown32, crown64, crown32r),
                                           ("ibp", ibp32, ibp64, ibp32r)):
                t32, lo32 = _best(f32, args.repeat)
                t64, lo64 = _best(f64, args.repeat)
                t32r, lo32r = _best(f32r, args.repeat)
                ratios[method].append(t64 / t32)
                ratios_r32[method].append(t32r / t32)
                loose[method] = max(loose[method],
                                    float((lo64.detach() - lo32r.detach().double()).max()))
                t32s[method] += t32
                t64s[method] += t64
                gaps[method] = max(gaps[method],
                                   float((lo32.detach().double() - lo64.detach()).max()))
        for method in ("crown", "ibp"):
            print(f"| {name} | {method} | {t32s[method] / len(mine):.4f} | "
                  f"{t64s[method] / len(mine):.4f} | {statistics.median(ratios[method]):.2f} | "
                  f"{gaps[method]:.2e} | {statistics.median(ratios_r32[method]):.2f} | "
                  f"{loose[method]:.2e} |", flush=True)


if __name__ == "__main__":
    main()
