"""Per-op knowledge lives in the ops: the Lipschitz, rounding and alpha-CROWN code asks op
methods (operator norm, rounding terms, Jacobian step) and module hooks, never op types."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import advrobust.relax as relax_pkg
from advrobust.core.threat import Norm
from advrobust.network.ir import Network, from_module
from advrobust.network.ops import AffineOp, LinearOp
from advrobust.network.relu import ReLUOp
from advrobust.relax._opnorm import minmax_blocks, network_prefix_norm, network_split
from advrobust.relax._rounding import op_gamma, sound_interval
from advrobust.relax.ibp import interval_layer_bounds
from advrobust.relax.lipschitz import jacobian_bound, lipschitz_constants

MODULES = ("lipschitz.py", "_opnorm.py", "_rounding.py", "alpha_crown.py", "_patch_crown.py",
           "_patches.py")


@pytest.mark.parametrize("name", MODULES)
def test_no_op_type_dispatch_and_no_model_imports(name: str) -> None:
    tree = ast.parse((Path(relax_pkg.__file__).parent / name).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert not (node.module or "").startswith("advrobust.models"), node.module
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
            names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
            assert not any(n.endswith("Op") or n == "_ConvLike" for n in names), names


class Triple(AffineOp):
    """A new op written as one class: ``3 z`` (its norm, rounding terms and Jacobian step come
    from its own methods and the AffineOp defaults)."""

    def linear(self, x: Tensor) -> Tensor:
        return 3 * x

    def bias(self) -> Tensor | None:
        return None

    def backward(self, a: Tensor) -> Tensor:
        return 3 * a

    def abs_linear(self, x: Tensor) -> Tensor:
        return 3 * x

    def operator_norm(self, norm: Norm) -> float:
        return 3.0


def test_a_new_op_class_serves_the_lipschitz_and_rounding_code() -> None:
    torch.manual_seed(0)
    first, last = nn.Linear(4, 5).double(), nn.Linear(5, 3).double()
    plain = Network([LinearOp(first, (4,), "a"), ReLUOp((5,), "r"), LinearOp(last, (5,), "b")],
                    (4,))
    tripled = Network([LinearOp(first, (4,), "a"), Triple((5,), (5,), "t"), ReLUOp((5,), "r"),
                       LinearOp(last, (5,), "b")], (4,))
    c = torch.randn(2, 2, 3, dtype=torch.float64)
    for norm in Norm:
        ratio = lipschitz_constants(tripled, c, norm) / lipschitz_constants(plain, c, norm)
        torch.testing.assert_close(ratio, torch.full_like(ratio, 3.0), rtol=1e-12, atol=0)
    x = torch.rand(2, 4, dtype=torch.float64)
    bounds = interval_layer_bounds(tripled, x - 0.1, x + 0.1, rounding=True)
    (z_lo, z_hi), (t_lo, t_hi) = bounds[1], bounds[2]
    assert op_gamma(tripled.ops[1], torch.float64) > 0
    assert bool((t_lo < 3 * z_lo).all() and (3 * z_hi < t_hi).all())  # widened, sound
    assert torch.equal(torch.stack(sound_interval(tripled.ops[1], z_lo, z_hi)),
                       torch.stack((t_lo, t_hi)))
    # the Jacobian step of the new op is the AffineOp default (autograd transpose of |W|)
    mid, rad = jacobian_bound(tripled, bounds, c)
    pts = (x + 0.1 * (2 * torch.rand(64, 2, 4, dtype=torch.float64) - 1)).requires_grad_(True)
    rows = torch.einsum("nko,mno->mnk", c, tripled.forward(pts.flatten(0, 1)).reshape(64, 2, 3))
    for k in range(2):
        (g,) = torch.autograd.grad(rows[..., k].sum(), pts, retain_graph=True)
        assert bool(((g - mid[:, k]).abs() <= rad[:, k] + 1e-12).all())


class Rebalance(nn.Sequential):
    """``diag(2, 1/2)`` then ``diag(1/2, 2)``: the identity (1-Lipschitz) whose per-layer norm
    product is 4; it declares itself through the ``lipschitz_block`` hook."""

    def __init__(self, declare: bool) -> None:
        super().__init__(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
        with torch.no_grad():
            self[0].weight.copy_(torch.diag(torch.tensor([2.0, 0.5])))
            self[1].weight.copy_(torch.diag(torch.tensor([0.5, 2.0])))
        self.declare = declare

    def lipschitz_block(self) -> tuple[nn.Module, nn.Module] | None:
        return (self[0], self[1]) if self.declare else None


@pytest.mark.parametrize("norm", list(Norm))
def test_any_module_can_declare_a_one_lipschitz_block(norm: Norm) -> None:
    torch.manual_seed(1)
    head, tail = nn.Linear(3, 2), nn.Linear(2, 2)

    def net(declare: bool) -> Network:
        model = nn.Sequential(head, Rebalance(declare), nn.ReLU(), tail).double()
        return from_module(model, (3,))

    declared, undeclared = net(True), net(False)
    assert minmax_blocks(declared) == {1: 3} and minmax_blocks(undeclared) == {}
    end = network_split(declared)
    ratio = network_prefix_norm(undeclared, end, norm) / network_prefix_norm(declared, end, norm)
    assert ratio == pytest.approx(4.0, rel=1e-6)
    x = torch.rand(1, 3, dtype=torch.float64)
    assert torch.equal(declared.forward(x), undeclared.forward(x))  # the same function
