"""CROWN on a batch of images: each sample's own neurons (the per-sample intermediate-bound
pass) against the union of the neurons the batch needs (the pass before it), and against the
images one by one, on the VNN-COMP mnist_fc MLPs and the first MNIST test images.

Run by hand::

    python bench/crown_batch.py --shared ../shared/data [--images 100] [--eps 0.01 0.03]

One thread. Each row: seconds of the public ``CROWN()`` call on the batch with the per-sample
pass (the default), with the union pass (``_UNION_ELEMENTS`` out of reach) and one call per
image; the largest difference of the batch's bounds from the images' own (one by one), and how
much tighter the union pass's bounds are than that (what it took from the other samples'
needs).
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
import torch

import advrobust.relax.dag as dag
from advrobust.core import LpBall
from advrobust.network.onnx import load_onnx
from advrobust.relax import CROWN


def _images(shared: Path, n: int) -> torch.Tensor:
    raw = gzip.open(shared / "mnist" / "t10k-images-idx3-ubyte.gz").read()
    pixels = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 784)[:n]
    return torch.tensor(pixels.astype(np.float32) / 255)


def _timed(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, threat: LpBall,
           one_by_one: bool = False) -> tuple[torch.Tensor, float]:
    """CROWN lower bounds of the batch (or of each image alone) and the seconds they took."""
    start = time.perf_counter()
    if one_by_one:
        out = torch.cat([CROWN()(model, x[i:i + 1], y[i:i + 1], threat).lower
                         for i in range(len(x))])
    else:
        out = CROWN()(model, x, y, threat).lower
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, required=True)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.01, 0.03])
    parser.add_argument("--nets", nargs="+", default=["256x2", "256x4", "256x6"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    x = _images(args.shared, args.images)
    size = dag._UNION_ELEMENTS
    print("| network | eps | per-sample pass s | union pass s | one by one s | "
          "batch - alone | union tighter by up to | verified |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.nets:
        model = load_onnx(args.shared / "vnncomp" / "mnist_fc" / "onnx" /
                          f"mnist-net_{name}.onnx")
        y = model(x).argmax(1)
        for eps in args.eps:
            threat = LpBall("linf", eps)
            CROWN()(model, x[:2], y[:2], threat)  # warm-up
            dag._UNION_ELEMENTS = size
            own, t_own = _timed(model, x, y, threat)
            dag._UNION_ELEMENTS = 1 << 62
            union, t_union = _timed(model, x, y, threat)
            dag._UNION_ELEMENTS = size
            alone, t_alone = _timed(model, x, y, threat, one_by_one=True)
            fin = torch.isfinite(own) & torch.isfinite(alone) & torch.isfinite(union)
            gap = float((own - alone)[fin].abs().max())
            tighter = float((union - own)[fin].clamp_min(0).max())
            verified = int((own.min(1).values > 0).sum())
            print(f"| {name} | {eps} | {t_own:.2f} | {t_union:.2f} | {t_alone:.2f} | "
                  f"{gap:.1e} | {tighter:.1e} | {verified} / {len(x)} |", flush=True)


if __name__ == "__main__":
    main()
