"""IBP and CROWN bounds of advrobust against auto_LiRPA's on the same networks (CPU).

auto_LiRPA must live in a side environment, never in the project (see bench/RESULTS.md, issue 4)::

    python -m venv --system-site-packages ../peers
    ../peers/bin/pip install --no-deps auto_LiRPA appdirs
    ../peers/bin/python bench/verify_lirpa.py --shared ../shared/data --runs runs

Or with auto_LiRPA 0.7.x from its GitHub snapshot in a venv of its own (../shared/peers/README.md),
advrobust taken from the checkout::

    PYTHONPATH=$PWD/src ../peers-lirpa/venv/bin/python bench/verify_lirpa.py --shared ../shared/data

auto_LiRPA 0.3 (the newest release on PyPI) predates numpy 2 and torch 2.13; ``_compat`` below
restores the three names it imports (``numpy.lib.arraysetops.isin``,
``torch.onnx.symbolic_helper._set_opset_version``, ``torch._C.Node.__getitem__``) inside this
process only. For each network: 100 MNIST test images, the margin spec (rows e_y - e_t), an
linf ball clipped to [0, 1]; bounds compared row by row, wall time = best of ``--repeat`` runs.
"IBP" is the public bounder call (validation, IR build, clean-point witness included), "IBP,
bare pass" the differentiable ``interval_bounds`` on an already built IR.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy
import torch
from torch import Tensor, nn

from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall
from advrobust.data import load_dataset
from advrobust.models import load_checkpoint
from advrobust.network import ReLUOp, from_module
from advrobust.network.onnx import load_onnx
from advrobust.relax import CROWN, IBP, backsubstitute, interval_bounds


def _compat() -> None:
    """Names auto_LiRPA 0.3 imports that numpy 2 / torch 2.13 removed (this process only)."""
    shim = types.ModuleType("numpy.lib.arraysetops")
    shim.isin = numpy.isin  # type: ignore[attr-defined]
    sys.modules.setdefault("numpy.lib.arraysetops", shim)
    import torch.onnx.symbolic_helper as helper
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

    helper._set_opset_version = (  # type: ignore[attr-defined]
        lambda v: setattr(GLOBALS, "export_onnx_opset_version", v))
    torch._C.Node.__getitem__ = (  # type: ignore[attr-defined]
        lambda self, k: getattr(self, self.kindOf(k))(k))


def _best(fn: Callable[[], Tensor], repeat: int) -> tuple[Tensor, float]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    assert out is not None
    return out, min(times)


def _lirpa(model: nn.Module, x: Tensor, threat: LpBall, c: Tensor, method: str,
           repeat: int) -> tuple[Tensor, float, float]:
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

    start = time.perf_counter()
    bounded = BoundedModule(model, torch.zeros_like(x[:1]), device="cpu")
    build = time.perf_counter() - start
    low, up = threat.input_bounds(x)
    ptb = PerturbationLpNorm(norm=float("inf"), eps=threat.eps, x_L=low, x_U=up)

    def run() -> Tensor:
        with torch.no_grad():
            lb, _ = bounded.compute_bounds(x=(BoundedTensor(x, ptb),), C=c, method=method,
                                           bound_upper=False)
        return lb.detach()

    lower, seconds = _best(run, repeat)
    return lower, seconds, build


def _crown_plain(model: nn.Module, x: Tensor, threat: LpBall, c: Tensor) -> Tensor:
    """CROWN whose pre-activation bounds are NOT intersected with interval bounds.

    advrobust's CROWN keeps the tighter of the CROWN and the interval bound of every neuron;
    auto_LiRPA's plain CROWN does not. Built from advrobust's own ``backsubstitute`` so that
    the two back-substitutions can be compared on equal terms.
    """
    net = from_module(model, tuple(x.shape[1:]))
    n = x.shape[0]

    def concretize(a: Tensor, const: Tensor) -> Tensor:
        return threat.concretize_lower(a.flatten(2).expand(n, -1, -1), x) + const

    with torch.no_grad():
        bounds = [threat.input_bounds(x)]
        for i, op in enumerate(net.ops):
            if isinstance(op, ReLUOp):
                shape = tuple(bounds[i][0].shape[1:])
                m = math.prod(shape)
                eye = torch.eye(m, dtype=x.dtype).reshape((1, m) + shape)
                val = concretize(*backsubstitute(net, torch.cat([eye, -eye], 1), i, bounds))
                bounds[i] = (val[:, :m].reshape((n,) + shape), -val[:, m:].reshape((n,) + shape))
            bounds.append(op.interval(*bounds[i]))
        return concretize(*backsubstitute(net, c, len(net.ops), bounds))


def _networks(args: argparse.Namespace) -> list[tuple[str, nn.Module, LpBall]]:
    nets: list[tuple[str, nn.Module, LpBall]] = []
    onnx_dir = args.shared / "vnncomp" / "mnist_fc" / "onnx"
    for depth in (2, 4, 6):
        nets.append((f"mnist_fc 256x{depth}", load_onnx(onnx_dir / f"mnist-net_256x{depth}.onnx"),
                     LpBall("linf", 0.03)))
    for arch in ("small", "mlp2"):
        path = args.runs / f"verify_{arch}_mnist.pt"
        if path.is_file():
            nets.append((f"{arch} (trained)", load_checkpoint(path).model.eval(),
                         LpBall("linf", 0.02)))
    return nets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import auto_LiRPA

    if str(getattr(auto_LiRPA, "__version__", "0.3")).startswith("0.3"):
        _compat()  # the PyPI release; the GitHub snapshot (0.7.x) needs no shim
    data = load_dataset("mnist", "test", args.shared / "mnist").take(args.n)
    print("| network | method | max abs diff | max rel diff | mean (ours - LiRPA) | "
          "advrobust s | auto_LiRPA s | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for name, model, threat in _networks(args):
        _compare(name, model, data.x, data.y, threat, args.repeat)


def _compare(name: str, model: nn.Module, x: Tensor, y: Tensor, threat: LpBall,
             repeat: int) -> None:
    c = Spec.margins(y, 10).C
    net = from_module(model, tuple(x.shape[1:]))
    box = threat.input_bounds(x)
    runs: list[tuple[str, Callable[[], Tensor], str]] = [
        ("IBP", lambda: IBP()(model, x, y, threat).lower, "IBP"),
        ("IBP, bare pass (interval_bounds)", lambda: interval_bounds(net, *box, c=c)[0], "IBP"),
        ("CROWN", lambda: CROWN()(model, x, y, threat).lower, "backward"),
        ("CROWN, precision='float32' (sound, auto_LiRPA's dtype)",
         lambda: CROWN(precision="float32")(model, x, y, threat).lower, "backward"),
        ("CROWN, no interval intersection", lambda: _crown_plain(model, x, threat, c),
         "backward")]
    for label, ours_fn, theirs in runs:
        ours, t_ours = _best(ours_fn, repeat)
        lirpa, t_lirpa, _ = _lirpa(model, x, threat, c, theirs, repeat)
        diff = (ours - lirpa).abs()
        rel = float((diff / (1 + lirpa.abs())).max())
        print(f"| {name} | {label} | {float(diff.max()):.2e} | {rel:.2e} | "
              f"{float((ours - lirpa).mean()):+.3g} | {t_ours:.4f} | {t_lirpa:.4f} | "
              f"{t_lirpa / t_ours:.2f}x |", flush=True)

if __name__ == "__main__":
    main()
