"""Bitwise check that moving per-op knowledge into op methods changed no number.

Saves the rounding terms, magnitudes, sound intervals, operator norms, CROWN bounds, Jacobian
bounds, global / local Lipschitz constants, MinMax blocks and an alpha-CROWN bound of a conv net
(Normalize, Conv+BN, AvgPool, grouped strided conv, unfolded BN) and a MinMax MLP; run it on two
source trees and compare::

    git archive 807e9be src | tar -x -C runs/old
    nice -n 10 env PYTHONPATH=runs/old/src python bench/op_methods_identity.py runs/old.pt
    nice -n 10 env PYTHONPATH=$PWD/src python bench/op_methods_identity.py runs/new.pt
    python bench/op_methods_identity.py --compare runs/old.pt runs/new.pt
"""

import sys

import torch
from torch import nn

if sys.argv[1] == "--compare":
    a, b = torch.load(sys.argv[2]), torch.load(sys.argv[3])
    assert a.keys() == b.keys()
    diff = [k for k in a if not (torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor)
                                 else a[k] == b[k])]
    print(f"{len(a)} quantities, {len(diff)} differ: {diff}")
    sys.exit(0)
torch.set_num_threads(1)
from advrobust.core.spec import Spec  # noqa: E402
from advrobust.core.threat import LpBall, Norm  # noqa: E402
from advrobust.models.minmax import MinMax  # noqa: E402
from advrobust.models.normalize import Normalize  # noqa: E402
from advrobust.network.ir import from_module  # noqa: E402
from advrobust.relax import _opnorm, _rounding  # noqa: E402
from advrobust.relax.alpha_crown import alpha_crown  # noqa: E402
from advrobust.relax.crown import crown_layer_bounds, crown_lower  # noqa: E402
from advrobust.relax.ibp import interval_layer_bounds  # noqa: E402
from advrobust.relax.lipschitz import (  # noqa: E402
    LocalLipschitz,
    jacobian_bound,
    lipschitz_constants,
)


def _nets() -> list[tuple[str, nn.Module, tuple[int, ...]]]:
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
    return [("conv", conv.double().eval(), (1, 8, 8)), ("minmax", mm.double().eval(), (6,))]


def _ops(out: dict, name: str, net, x: torch.Tensor, ball: LpBall) -> None:  # type: ignore[no-untyped-def, type-arg]
    b = interval_layer_bounds(net, *ball.input_bounds(x), rounding=True)
    for i, op in enumerate(net.ops):
        out[f"{name}.gamma{i}"] = torch.tensor(_rounding.op_gamma(op, torch.float64))
        out[f"{name}.mag{i}"] = _rounding.magnitude(op, *b[i])
        out[f"{name}.si{i}"] = torch.stack(_rounding.sound_interval(op, *b[i]))
        for norm in Norm:
            try:
                value: object = torch.tensor(_opnorm.op_norm(op, norm))
            except Exception as exc:  # the same refusal on both trees
                value = str(type(exc))
            out[f"{name}.norm{i}{norm.value}"] = value


def main() -> None:
    out: dict[str, object] = {}
    for name, model, shape in _nets():
        net = from_module(model, shape)
        x = torch.rand((2,) + shape, dtype=torch.float64)
        ball = LpBall("linf", 0.05, lo=0.0, hi=1.0)
        _ops(out, name, net, x, ball)
        spec = Spec.margins(model(x).argmax(1), 3)
        c = spec.C.double()
        layers = crown_layer_bounds(net, x, ball, rounding=True)
        out[f"{name}.crown"] = crown_lower(net, x, ball, c, rounding=True)
        out[f"{name}.jac"] = torch.stack(jacobian_bound(net, layers, c))
        for norm in Norm:
            out[f"{name}.lip{norm.value}"] = lipschitz_constants(net, c, norm)
            local = LpBall(norm.value, 0.05, lo=0.0, hi=1.0)
            out[f"{name}.loc{norm.value}"] = LocalLipschitz().constants(net, x, local, spec)
        split = _opnorm.network_split(net)
        out[f"{name}.split"] = torch.tensor(split)
        out[f"{name}.blocks"] = str(_opnorm.minmax_blocks(net))
        out[f"{name}.prefix"] = torch.tensor(_opnorm.network_prefix_norm(net, split, Norm.L2))
        res = alpha_crown(net, x[:1], ball, c[:1], spec.d[:1].double(), steps=4)
        out[f"{name}.alpha"] = res.lower
    torch.save(out, sys.argv[1])
    print(f"{len(out)} quantities saved to {sys.argv[1]}")


if __name__ == "__main__":
    main()
