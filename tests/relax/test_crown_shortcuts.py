"""CROWN's intermediate-bound shortcuts (no back-substitution where intervals are exact, weight
rows after a linear layer, one-hot rows instead of an identity) change nothing: the layer bounds
equal a plain reference that back-substitutes identity rows for every ReLU input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advrobust.core import LpBall
from advrobust.network import ReLUOp, from_module
from advrobust.network.ir import Network
from advrobust.relax import backsubstitute, crown_layer_bounds
from advrobust.relax.ibp import LayerBounds


def _reference(net: Network, x0: torch.Tensor, threat: LpBall) -> LayerBounds:
    bounds = [threat.input_bounds(x0)]
    for i, op in enumerate(net.ops):
        if isinstance(op, ReLUOp):
            lo, hi = bounds[i]
            size = lo[0].numel()
            eye = torch.eye(size, dtype=lo.dtype).reshape((1, size) + tuple(lo.shape[1:]))
            a, c = backsubstitute(net, torch.cat([eye, -eye], 1), i, bounds)
            val = threat.concretize_lower(a.flatten(2), x0) + c
            # as CROWN does: refine the neurons some sample leaves unstable
            unstable = ((lo < 0) & (hi > 0)).flatten(1).any(0)
            new_lo = torch.where(unstable, torch.maximum(lo.flatten(1), val[:, :size]),
                                 lo.flatten(1)).reshape(lo.shape)
            new_hi = torch.where(unstable, torch.minimum(hi.flatten(1), -val[:, size:]),
                                 hi.flatten(1)).reshape(hi.shape)
            bounds[i] = (new_lo, new_hi)
        bounds.append(op.interval(*bounds[i]))
    return bounds


def _nets() -> list[tuple[nn.Sequential, tuple[int, ...]]]:
    torch.manual_seed(1)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                        nn.Linear(8, 3))
    conv = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, stride=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(2 * 2 * 2, 5), nn.ReLU(),
                         nn.Linear(5, 3))
    return [(mlp.double().eval(), (6,)), (conv.double().eval(), (1, 6, 6))]


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@pytest.mark.parametrize("which", [0, 1])
def test_layer_bounds_equal_the_plain_reference(norm: str, which: int) -> None:
    model, shape = _nets()[which]
    net = from_module(model, shape)
    x0 = torch.rand((4,) + shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    threat = LpBall(norm, {"linf": 0.1, "l2": 0.5, "l1": 1.0}[norm])
    fast = crown_layer_bounds(net, x0, threat)
    slow = _reference(net, x0, threat)
    for (lo_f, hi_f), (lo_s, hi_s) in zip(fast, slow, strict=True):
        torch.testing.assert_close(lo_f, lo_s, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(hi_f, hi_s, rtol=1e-10, atol=1e-10)
