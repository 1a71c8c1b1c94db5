"""The cost of float64 + rounding allowances on convolutional networks: CROWN's bare bound pass
(``crown_layer_bounds`` + ``crown_lower``, patch path for conv layers) in float32 without
allowances against float64 with them, on MNIST test images (issue 10).

Run by hand::

    python bench/verify_cnn_crown.py --shared ../shared/data --n 10 --eps 0.01

Networks: the course ``cnn`` and ``lenet`` (untrained, seed 0) and the small CNN of
``bench/verify_lirpa_cnn.py``. One thread; CPU time of this process per pass (the machine is
shared: CPU time is the fairer number), the peak RSS at the end, and how far the float32 bound
lies above the sound float64 one.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import resource
from pathlib import Path

import torch

from advrobust.core import LpBall
from advrobust.core.spec import Spec
from advrobust.data import load_dataset
from advrobust.network import from_module
from advrobust.relax import crown_layer_bounds, crown_lower


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _models() -> object:
    spec = importlib.util.spec_from_file_location(
        "verify_lirpa_cnn", Path(__file__).with_name("verify_lirpa_cnn.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--eps", type=float, default=0.01)
    parser.add_argument("--nets", nargs="+", default=["cnn", "lenet", "small_cnn"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    bench = _models()
    data = load_dataset("mnist", "test", args.shared).take(args.n)
    threat = LpBall("linf", args.eps)
    c = Spec.margins(data.y, 10).C
    print("| network | float32 CPU s | float64+allowances CPU s | ratio | float32 above "
          "float64 by up to | lowest bound |")
    print("|---|---|---|---|---|---|")
    for name in args.nets:
        model = bench._model(name)  # type: ignore[attr-defined]
        out = {}
        times = {}
        for dtype, rounding in ((torch.float32, False), (torch.float64, True)):
            net = from_module(copy.deepcopy(model).to(dtype), (1, 28, 28))
            x = data.x.to(dtype)
            start = _cpu()
            with torch.no_grad():
                bounds = crown_layer_bounds(net, x, threat, rounding=rounding)
                out[dtype] = crown_lower(net, x, threat, c.to(dtype), bounds=bounds,
                                         rounding=rounding).double()
            times[dtype] = _cpu() - start
        gap = float((out[torch.float32] - out[torch.float64]).max())
        print(f"| {name} | {times[torch.float32]:.1f} | {times[torch.float64]:.1f} | "
              f"{times[torch.float64] / times[torch.float32]:.2f}x | {gap:.1e} | "
              f"{float(out[torch.float64].min()):.6g} |", flush=True)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
