"""Graph-IR verification end to end (issue 10, item 2): a CIFAR-10 ResNet-8 built by the
library and sigmoid / tanh MLPs, bounded by IBP and CROWN from the module (torch.fx) and from
its ONNX export (``torch.onnx.export`` -> ``load_onnx_graph``), plus the ONNX import checked
against the module and onnxruntime.

Run by hand (one torch thread)::

    OMP_NUM_THREADS=1 python bench/verify_graph.py --root ../shared/data [--images 10]

The weights are seeded He-initialised ones (no CIFAR-10 training set on this machine): the
labels are the models' own predictions, so "verified" means the prediction is provably
constant on the ball. Times are per call of the public bounder (graph building, the float64
copy, the witness gate and the bound pass) over all images in one batch, wall and CPU seconds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from advrobust.core import LpBall
from advrobust.data import load_dataset
from advrobust.models import build_model
from advrobust.network import load_onnx_graph
from advrobust.relax import CROWN, IBP

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _mlp(act: type[nn.Module], seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in ((3072, 100), (100, 100), (100, 10)):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=gen) * (2.0 / a) ** 0.5)
            lin.bias.zero_()
        layers += [lin, act()]
    return nn.Sequential(*layers[:-1]).eval()


def _export(model: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "n"}})
    return path


def _ort_gap(path: Path, model: nn.Module, x: torch.Tensor) -> float:
    try:
        import onnxruntime as ort
    except ImportError:
        return float("nan")
    out = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        return float((torch.from_numpy(out).double() - model.double()(x.double())).abs().max())


def run(name: str, model: nn.Module, x: torch.Tensor, eps_list: list[float],
        tmp: Path) -> None:
    path = _export(model, tmp / f"{name}.onnx")
    loaded = load_onnx_graph(path)
    with torch.no_grad():
        ref = model.double()(x.double())
        import_gap = float((loaded(x.double()) - ref).abs().max())
    ort_gap = _ort_gap(path, model, x)
    y = ref.argmax(1)
    for eps in eps_list:
        threat = LpBall("linf", eps, lo=0.0, hi=1.0)
        for bounder in (IBP(), CROWN()):
            row = []
            for label, net in (("module", model), ("onnx", loaded)):
                start, cpu = time.perf_counter(), time.process_time()
                res = bounder(net, x.double(), y, threat)
                row.append((label, time.perf_counter() - start, time.process_time() - cpu, res))
            (_, t_m, c_m, r_m), (_, t_o, c_o, r_o) = row
            gap = float(((r_m.lower - r_o.lower).abs() / (1 + r_m.lower.abs())).max())
            verified = sum(v.value == "verified" for v in r_m.verdict)
            print(f"| {name} | {eps * 255:.2f}/255 | {type(bounder).__name__} | "
                  f"{verified}/{len(y)} | {float(r_m.lower.amin(1).mean()):+.4g} | "
                  f"{t_m:.2f} ({c_m:.2f}) | {t_o:.2f} ({c_o:.2f}) | {gap:.1e} | "
                  f"{import_gap:.1e} | {ort_gap:.1e} |",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--images", type=int, default=10, help="images for the MLPs")
    parser.add_argument("--resnet-images", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("cifar10", "test", root=args.root)
    resnet = build_model("resnet8", (3, 32, 32), normalize=(CIFAR_MEAN, CIFAR_STD), seed=0)
    models = {  # (model, images, eps)
        "resnet8": (resnet.eval(), args.resnet_images, [0.1 / 255]),
        "mlp-sigmoid": (_mlp(nn.Sigmoid, 1), args.images, [0.1 / 255, 1 / 255]),
        "mlp-tanh": (_mlp(nn.Tanh, 2), args.images, [0.1 / 255, 1 / 255]),
    }
    print("| model | eps | method | verified | mean min-margin lower bound | module s wall (CPU)"
          " | onnx s wall (CPU) | module-onnx bound gap (rel.) | import gap | onnxruntime gap |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (model, n, eps) in models.items():
            run(name, model, data.x[:n], eps, Path(tmp))


if __name__ == "__main__":
    main()
