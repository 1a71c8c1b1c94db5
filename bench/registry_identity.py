"""Issue 10, op registry: moving the patch CROWN's and GloRo's per-op decisions into the ops
changed no number and no speed.

Saves, for two source trees, CROWN's float64 bound pass with rounding allowances (every layer's
bounds and the final lower bounds; the patch path carries the conv layers) on MNIST test images
through the course ``lenet`` and ``cnn`` (untrained, seed 0) with its CPU seconds, and GloRo's
Lipschitz constants (power iteration, seeded) on a conv net (Normalize, Conv + BN, AvgPool,
strided conv, unfolded BN) and a MinMax MLP; ``--compare`` checks them bitwise and prints the
times. Run by hand, alternating the trees (the machine is shared: CPU seconds)::

    git archive 9354a81 src | tar -x -C ../before
    OMP_NUM_THREADS=1 nice -n 10 env PYTHONPATH=../before/src \\
        python bench/registry_identity.py --shared ../shared/data --out runs/before1.pt
    OMP_NUM_THREADS=1 nice -n 10 env PYTHONPATH=$PWD/src \\
        python bench/registry_identity.py --shared ../shared/data --out runs/after1.pt
    python bench/registry_identity.py --compare runs/before1.pt runs/after1.pt
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

import torch
from torch import nn


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _compare(a_path: str, b_path: str) -> None:
    a, b = torch.load(a_path), torch.load(b_path)
    assert a.keys() == b.keys()
    diff = [k for k in a if not k.startswith("cpu.") and not torch.equal(a[k], b[k])]
    print(f"{len(a)} quantities, {len(diff)} differ: {diff}")
    for k in sorted(a):
        if k.startswith("cpu."):
            print(f"{k}: {float(a[k]):.2f} s vs {float(b[k]):.2f} s")


def _gloro_nets() -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    from advrobust.models.minmax import MinMax
    from advrobust.models.normalize import Normalize

    torch.manual_seed(0)
    conv = nn.Sequential(Normalize((0.5,), (0.25,)), nn.Conv2d(1, 4, 3, padding=1),
                         nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Conv2d(4, 4, 3, stride=2, groups=2), nn.ReLU(), nn.BatchNorm2d(4),
                         nn.Flatten(), nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 3))
    for m in conv.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    mm = nn.Sequential(nn.Linear(6, 8), MinMax(8), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    return [("conv", conv.eval(), (1, 8, 8)), ("minmax", mm.eval(), (6,))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--n-cnn", type=int, default=3)
    parser.add_argument("--eps", type=float, default=0.01)
    parser.add_argument("--compare", nargs=2)
    args = parser.parse_args()
    if args.compare:
        _compare(*args.compare)
        return
    torch.set_num_threads(1)
    from advrobust.core.spec import Spec
    from advrobust.core.threat import LpBall
    from advrobust.data import load_dataset
    from advrobust.models import build_model
    from advrobust.network.ir import from_module
    from advrobust.relax.crown import crown_layer_bounds, crown_lower
    from advrobust.training.gloro import GloRo

    out: dict[str, torch.Tensor] = {}
    data = load_dataset("mnist", "test", args.shared)
    threat = LpBall("linf", args.eps)
    for name, n in (("lenet", args.n), ("cnn", args.n_cnn)):
        model = build_model(name, (1, 28, 28), seed=0).eval().double()
        part = data.take(n)
        x, c = part.x.double(), Spec.margins(part.y, 10).C.double()
        net = from_module(model, (1, 28, 28))
        start = _cpu()
        with torch.no_grad():
            layers = crown_layer_bounds(net, x, threat, rounding=True)
            lower = crown_lower(net, x, threat, c, bounds=layers, rounding=True)
        out[f"cpu.{name}"] = torch.tensor(_cpu() - start)
        out[f"{name}.lower"] = lower
        for i, (lo, hi) in enumerate(layers):
            out[f"{name}.layer{i}"] = torch.stack((lo, hi))
    ball = LpBall("l2", 0.5)
    for name, model, shape in _gloro_nets():
        objective = GloRo(threat=ball, iterations=3, seed=1)
        net = from_module(model, shape)
        x = torch.rand((4,) + shape, generator=torch.Generator().manual_seed(2))
        c = Spec.margins(model(x).argmax(1), 3).C
        for step in range(2):  # the second call starts from the kept vectors
            consts = objective.lipschitz(net, c)
            (grad,) = torch.autograd.grad(consts.sum(), next(model.parameters()))
            out[f"gloro.{name}.{step}"] = consts.detach()
            out[f"gloro.{name}.grad{step}"] = grad
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, args.out)
    print(" ".join(f"{k}={float(v):.2f}s" for k, v in out.items() if k.startswith("cpu.")),
          file=sys.stderr)


if __name__ == "__main__":
    main()
