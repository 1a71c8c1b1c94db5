"""What sound floating point costs, as a user calls it: ``CROWN()`` / ``IBP()`` (float64 passes
with rounding allowances, the default) and ``CROWN(precision="float32")`` /
``IBP(precision="float32")`` (float32 passes with float32's allowances, issue 10's "outward
rounding" alternative) against the bare float32 pass without allowances (what an unsound
verifier runs), on the VNN-COMP mnist_fc MLPs and on the CNNs of ``bench/verify_lirpa_cnn.py``.

Run by hand::

    python bench/verify_precision.py --root ../shared/data/vnncomp/mnist_fc \
        --shared ../shared/data [--props 5] [--repeat 5] [--nets small_cnn lenet cnn]

One thread. Seconds are the best of ``--repeat`` runs of one call (one property of an MLP; ten
MNIST test images at linf 0.01 for a CNN, all margins), every call with the network's one witness
gate (its copies and IRs built once, as a verification problem keeps them; the bare pass's IR is
built outside the timing too). "looser by" is how far the float32
public bound lies below the float64 one (max over rows); the float32 bound must never lie above
a value the network reaches, which ``tests/exact/test_extreme_weights.py`` and the soundness fuzz
check, not this script.
"""

from __future__ import annotations

import argparse
import copy
import csv
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# run as a script, bench/ is on the path: its sibling benches' helpers
from verify_cnn_crown import _models
from verify_float64 import _best

from advrobust.core import LpBall, Spec
from advrobust.data import load_dataset
from advrobust.network.ir import from_module
from advrobust.network.onnx import import_onnx
from advrobust.network.vnnlib import load_vnnlib
from advrobust.relax import CROWN, IBP, crown_layer_bounds, crown_lower, interval_layer_bounds
from advrobust.relax.ibp import spec_interval
from advrobust.relax.witness import WitnessGate


def _bare(method: str, model: Any, shape: tuple[int, ...], x: torch.Tensor, ball: LpBall,
          c: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The float32 pass without allowances (the IR built once, outside the timing)."""
    net = from_module(copy.deepcopy(model).float(), shape)
    x32, c32 = x.float(), c.float()

    def run() -> torch.Tensor:
        with torch.no_grad():
            if method == "crown":
                b = crown_layer_bounds(net, x32, ball)
                return crown_lower(net, x32, ball, c32, bounds=b)
            b = interval_layer_bounds(net, *ball.input_bounds(x32))
            return spec_interval(net, b, c32)[0]
    return run


def _row(label: str, method: str, model: Any, shape: tuple[int, ...], x: torch.Tensor,
         y: torch.Tensor, ball: LpBall, spec: Spec, repeat: int) -> dict[str, float]:
    make = {"crown": CROWN, "ibp": IBP}[method]
    gate = WitnessGate(model)  # one per network, as a verification problem keeps it
    t_bare, _ = _best(_bare(method, model, shape, x, ball, spec.C), repeat)
    t64, lo64 = _best(lambda: make()(model, x, y, ball, spec, gate=gate).lower, repeat)
    t32, lo32 = _best(lambda: make(precision="float32")(model, x, y, ball, spec,
                                                       gate=gate).lower, repeat)
    return {"bare": t_bare, "f64": t64, "f32": t32,
            "looser": float((lo64 - lo32).max()), "min64": float(lo64.min())}


def _print(label: str, method: str, rows: list[dict[str, float]]) -> None:
    bare = statistics.mean(r["bare"] for r in rows)
    f64 = statistics.mean(r["f64"] for r in rows)
    f32 = statistics.mean(r["f32"] for r in rows)
    r64 = statistics.median(r["f64"] / r["bare"] for r in rows)
    r32 = statistics.median(r["f32"] / r["bare"] for r in rows)
    f64_32 = statistics.median(r["f64"] / r["f32"] for r in rows)
    looser = max(r["looser"] for r in rows)
    print(f"| {label} | {method} | {bare:.4f} | {f64:.4f} | {r64:.2f} | {f32:.4f} | {r32:.2f} | "
          f"{f64_32:.2f} | {looser:.1e} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data/vnncomp/mnist_fc"))
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--props", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--nets", nargs="*", default=["small_cnn", "lenet", "cnn"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| network | method | bare float32 s | float64 (default) s | / bare | "
          "float32 + allowances s | / bare | float64 / float32 | float32 looser by |")
    print("|---|---|---|---|---|---|---|---|---|")
    answers = list(csv.DictReader(open(args.root / "known_answers.csv")))
    for name in ("256x2", "256x4", "256x6"):
        mine = [r for r in answers if r["network"].endswith(f"{name}.onnx")][:args.props]
        net = import_onnx(args.root / mine[0]["network"])
        for method in ("crown", "ibp"):
            rows = []
            for row in mine:
                prop = load_vnnlib(args.root / row["property"])
                x0, ball = prop.as_linf_ball(0.0, 1.0)
                spec = prop.to_spec(1)
                label = prop.robustness_label()
                assert label is not None and isinstance(ball, LpBall)
                x = x0.reshape(1, *net.input_shape).float()
                rows.append(_row(name, method, net.model, net.input_shape, x,
                                 torch.tensor([label]), ball, spec, args.repeat))
            _print(name, method, rows)
    if args.nets:
        cnns: Any = _models()  # bench/verify_lirpa_cnn.py's networks
        data = load_dataset("mnist", "test", args.shared).take(10)
        ball = LpBall("linf", 0.01)
        spec = Spec.margins(data.y, 10)
        for name in args.nets:
            model = cnns._model(name)
            repeat = 1 if name == "cnn" else max(1, args.repeat // 2)
            row = _row(name, "crown", model, (1, 28, 28), data.x, data.y, ball, spec, repeat)
            _print(name, "crown", [row])


if __name__ == "__main__":
    main()
