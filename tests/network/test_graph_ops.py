"""The relaxation template: every registered op's interval and linear bounds contain its outputs
at sampled points (corners included) of random boxes; and every op class is covered."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import advrobust.network.graph.ops as graph_ops
from advrobust.network.graph import GraphOp, build_graph


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Small tensor ops run far slower with 2 threads on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)



class _Two(nn.Module):
    """Two linear branches joined by ``join`` (to get binary ops out of the builder)."""

    def __init__(self, join: Callable[[Tensor, Tensor], Tensor]) -> None:
        super().__init__()
        self.a, self.b, self.join = nn.Linear(6, 6), nn.Linear(6, 6), join

    def forward(self, x: Tensor) -> Tensor:
        return self.join(self.a(x), self.b(x))


class _Fn(nn.Module):
    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


def _bn() -> nn.Module:
    bn = nn.BatchNorm2d(2).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(-2, 2)
    return bn


# (label, module, input shape, op class picked from the graph)
CASES: list[tuple[str, Callable[[], nn.Module], tuple[int, ...], type]] = [
    ("linear", lambda: nn.Linear(6, 4), (6,), graph_ops.AffineAdapter),
    ("conv", lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 5, 5),
     graph_ops.AffineAdapter),
    ("avgpool", lambda: nn.AvgPool2d(2), (2, 4, 4), graph_ops.AffineAdapter),
    ("batchnorm", _bn, (2, 3, 3), graph_ops.AffineAdapter),
    ("relu", nn.ReLU, (6,), graph_ops.ReLUAdapter),
    ("leaky_relu", lambda: nn.LeakyReLU(0.2), (6,), graph_ops.LeakyReLUOp),
    ("sigmoid", nn.Sigmoid, (6,), graph_ops.SigmoidOp),
    ("tanh", nn.Tanh, (6,), graph_ops.TanhOp),
    ("maxpool", lambda: nn.MaxPool2d(2), (2, 4, 4), graph_ops.MaxPoolOp),
    ("maxpool_overlap", lambda: nn.MaxPool2d(3, stride=2, padding=1), (2, 5, 5),
     graph_ops.MaxPoolOp),
    ("add", lambda: _Two(lambda u, v: u + v), (6,), graph_ops.AddOp),
    ("sub", lambda: _Two(lambda u, v: u - v), (6,), graph_ops.AddOp),
    ("concat", lambda: _Two(lambda u, v: torch.cat([u, v], 1)), (6,), graph_ops.ConcatOp),
    ("mul_const", lambda: _Fn(lambda x: x * torch.linspace(-2, 3, 6)), (6,),
     graph_ops.ScaleShiftOp),
    ("div_const", lambda: _Fn(lambda x: (x - 0.5) / torch.tensor([0.3, -2.0, 5, 1, 1, 7])),
     (6,), graph_ops.ScaleShiftOp),
    ("reshape", lambda: _Fn(lambda x: x.reshape(x.shape[0], 3, 2)), (6,),
     graph_ops.ReshapeOp),
    ("transpose", lambda: _Fn(lambda x: x.transpose(1, 2)), (2, 3), graph_ops.TransposeOp),
    ("identity", lambda: _Fn(lambda x: x.contiguous() * 1.0), (4,), graph_ops.ScaleShiftOp),
    ("double", lambda: _Fn(lambda x: x.double() * 2.0), (4,), graph_ops.ScaleShiftOp),
]


@functools.cache
def _pick(label: str, make: Callable[[], nn.Module], shape: tuple[int, ...], cls: type
          ) -> tuple[GraphOp, list[tuple[int, ...]]]:
    torch.manual_seed(len(label))
    graph = build_graph(make().double().eval(), shape)
    node = next(n for n in graph.nodes[1:] if type(n.op) is cls)
    assert node.op is not None
    return node.op, node.op.in_shapes


def _boxes(shapes: list[tuple[int, ...]], gen: torch.Generator, scale: float
           ) -> list[tuple[Tensor, Tensor]]:
    out = []
    for s in shapes:
        c = torch.randn((2,) + s, generator=gen, dtype=torch.float64) * scale
        r = torch.rand((2,) + s, generator=gen, dtype=torch.float64) * scale
        r = r * (torch.rand((2,) + s, generator=gen) > 0.1)  # some degenerate boxes
        out.append((c - r, c + r))
    return out


def _points(box: tuple[Tensor, Tensor], gen: torch.Generator, m: int) -> Tensor:
    lo, hi = box
    u = torch.rand((m,) + tuple(lo.shape), generator=gen, dtype=lo.dtype)
    corner = torch.rand((m, 1) + (1,) * (lo.dim() - 1), generator=gen) < 0.4
    u = torch.where(corner, u.round(), u)  # corners of the box, where relaxations are tight
    return torch.minimum(torch.maximum(lo + (hi - lo) * u, lo), hi)  # (m, N, *shape)


@pytest.mark.parametrize("label,make,shape,cls", CASES, ids=[c[0] for c in CASES])
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.sampled_from([0.1, 1.0, 6.0]))
def test_relaxation_contains_the_op(label: str, make: Callable[[], nn.Module],
                                    shape: tuple[int, ...], cls: type, seed: int,
                                    scale: float) -> None:
    op, shapes = _pick(label, make, shape, cls)
    gen = torch.Generator().manual_seed(seed)
    boxes = _boxes(shapes, gen, scale)
    m = 64
    pts = [_points(b, gen, m) for b in boxes]
    with torch.no_grad():
        out = op.forward(*(p.flatten(0, 1) for p in pts)).reshape((m, 2) + op.out_shape)
        lo, hi = op.sound_interval(*boxes)
        assert bool((out >= lo).all()) and bool((out <= hi).all()), label
        a = torch.randn((2, 3) + op.out_shape, generator=gen, dtype=torch.float64)
        slope_sets: list[Tensor | None] = [None]
        init = op.init_slopes(*boxes[0], 3) if op.nonlinear else None
        if init is not None:
            rnd = torch.rand(init.shape, generator=gen, dtype=torch.float64) * 2 - 0.5
            op.clamp_slopes(rnd, *boxes[0])
            slope_sets.append(rnd)
        for slopes in slope_sets:
            coeffs, const = op.backward(a, *boxes, slopes=slopes)
            allowance = op.rounding(a, *boxes)
            slack = 1e-12 * (1 + abs(float(const.abs().max())))
            lin = const.unsqueeze(0).expand(m, -1, -1).clone()
            for cj, pj in zip(coeffs, pts, strict=True):
                lin = lin + torch.einsum("nkd,mnd->mnk", cj.flatten(2), pj.flatten(2))
            val = torch.einsum("nkd,mnd->mnk", a.flatten(2), out.flatten(2))
            gap = val - lin + (0 if allowance is None else allowance) + slack
            assert bool((gap >= 0).all()), (label, float(gap.min()))


def test_every_registered_op_class_is_in_the_template() -> None:
    classes = {getattr(graph_ops, name) for name in graph_ops.__all__}
    covered = {c[3] for c in CASES} | {graph_ops.IdentityOp}
    assert classes <= covered, classes - covered


@pytest.mark.parametrize("cls", [graph_ops.SigmoidOp, graph_ops.TanhOp])
def test_s_shaped_lines_are_tight_where_they_must_be(cls: type) -> None:
    op = cls((4,), "t")
    lo = torch.tensor([[-3.0, 0.5, -1.0, -2.0]], dtype=torch.float64)
    hi = torch.tensor([[-1.0, 2.0, 1.5, -2.0]], dtype=torch.float64)
    kl, bl, ku, bu = op.lines(lo, hi)
    f = op.f
    # convex part: the upper line is the chord (touches both ends); concave: the lower is.
    torch.testing.assert_close(ku[0, 0] * lo[0, 0] + bu[0, 0], f(lo[0, 0]))
    torch.testing.assert_close(ku[0, 0] * hi[0, 0] + bu[0, 0], f(hi[0, 0]))
    torch.testing.assert_close(kl[0, 1] * lo[0, 1] + bl[0, 1], f(lo[0, 1]))
    torch.testing.assert_close(kl[0, 1] * hi[0, 1] + bl[0, 1], f(hi[0, 1]))
    # a point interval gives the exact value
    torch.testing.assert_close(kl[0, 3] * lo[0, 3] + bl[0, 3], f(lo[0, 3]))
    torch.testing.assert_close(ku[0, 3] * lo[0, 3] + bu[0, 3], f(lo[0, 3]))


@pytest.mark.parametrize("label,make,shape,cls", CASES, ids=[c[0] for c in CASES])
def test_lp_encoding_admits_the_op_at_sampled_points(label: str, make: Callable[[], nn.Module],
                                                     shape: tuple[int, ...], cls: type) -> None:
    """Inputs fixed at a point of the box, outputs fixed at the op's value: the LP is feasible."""
    import numpy as np

    from advrobust.solvers.highs import HighsSolver
    from advrobust.solvers.program import Program, SolveStatus

    op, shapes = _pick(label, make, shape, cls)
    gen = torch.Generator().manual_seed(3)
    boxes = _boxes(shapes, gen, 2.0)
    with torch.no_grad():
        out_lo, out_hi = op.sound_interval(*boxes)
    for trial in range(3):
        pts = [_points(b, gen, 1)[0] for b in boxes]
        value = op.forward(*pts).detach()[0].reshape(-1).numpy()
        program = Program()
        cols = [program.add_vars(p[0].reshape(-1).numpy(), p[0].reshape(-1).numpy())
                for p in pts]
        ins = [(b[0][0].reshape(-1).numpy(), b[1][0].reshape(-1).numpy()) for b in boxes]
        z = op.encode(program, cols, ins, (out_lo[0].reshape(-1).numpy(),
                                           out_hi[0].reshape(-1).numpy()), False)
        program.add_rows(np.eye(z.size), z, value, value)
        sol = HighsSolver(program).minimize(np.zeros(program.num_vars), 0.0)
        assert sol.status is SolveStatus.OPTIMAL, (label, trial, sol.backend_status)


@pytest.mark.parametrize("label,make,shape,cls", CASES, ids=[c[0] for c in CASES])
def test_output_rows_and_mixing_agree_with_the_op(label: str, make: Callable[[], nn.Module],
                                                  shape: tuple[int, ...], cls: type) -> None:
    """``output_rows`` (when given) is the op's affine map; an op that says it does not mix
    coordinates has at most one input coefficient per output (its interval is then exact)."""
    op, shapes = _pick(label, make, shape, cls)
    gen = torch.Generator().manual_seed(5)
    x = [torch.randn((2,) + s, generator=gen, dtype=torch.float64) for s in shapes]
    part = torch.arange(op.out_size)
    like = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        rows = op.output_rows(part, like)
        if rows is not None:
            w, b = rows
            out = torch.einsum("kd,nd->nk", w.flatten(1), x[0].flatten(1)) + b
            torch.testing.assert_close(out, op.forward(*x).flatten(1))
        if op.nonlinear or op.mixes:
            return
        unit = torch.eye(op.out_size, dtype=torch.float64).reshape((1, op.out_size)
                                                                   + op.out_shape)
        coeffs, _ = op.backward(unit, *_boxes(shapes, gen, 1.0))
    per_output = sum((c[0].flatten(1) != 0).sum(1) for c in coeffs if c is not None)
    assert bool((per_output <= 1).all()), label


@pytest.mark.parametrize("label,make,shape,cls", CASES, ids=[c[0] for c in CASES])
def test_milp_encoding_is_exact_where_the_op_says_so(label: str, make: Callable[[], nn.Module],
                                                     shape: tuple[int, ...], cls: type) -> None:
    """With ``integer=True`` and the inputs fixed at a point, an op with ``milp_exact`` leaves
    its outputs no freedom: the min and the max of their sum are the op's value."""
    import numpy as np

    from advrobust.solvers.highs import HighsSolver
    from advrobust.solvers.program import Program

    op, shapes = _pick(label, make, shape, cls)
    if not op.milp_exact:
        return
    gen = torch.Generator().manual_seed(4)
    boxes = _boxes(shapes, gen, 2.0)
    with torch.no_grad():
        out_lo, out_hi = op.sound_interval(*boxes)
    for _ in range(2):
        pts = [_points(b, gen, 1)[0] for b in boxes]
        value = float(op.forward(*pts).detach()[0].sum())
        program = Program()
        cols = [program.add_vars(p[0].reshape(-1).numpy(), p[0].reshape(-1).numpy())
                for p in pts]
        ins = [(b[0][0].reshape(-1).numpy(), b[1][0].reshape(-1).numpy()) for b in boxes]
        z = op.encode(program, cols, ins, (out_lo[0].reshape(-1).numpy(),
                                           out_hi[0].reshape(-1).numpy()), True)
        cost = np.zeros(program.num_vars)
        cost[z] = 1.0
        low = HighsSolver(program).minimize(cost, 0.0)
        high = HighsSolver(program).minimize(-cost, 0.0)
        tol = 1e-6 * (1 + abs(value))
        assert abs(low.objective - value) <= tol and abs(-high.objective - value) <= tol, label


def test_the_chain_ir_carries_the_registered_ops() -> None:
    """``Network.graph`` (the chain IR's ops as graph ops) and the fx route build the same ops
    with the same rounding terms, and CROWN through either gives the same bound."""
    from advrobust.core import LpBall
    from advrobust.network import from_module
    from advrobust.relax import crown_lower
    from advrobust.relax.dag import graph_crown_lower

    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 4, 3, stride=2), nn.ReLU(),
              nn.AvgPool2d(1), nn.Flatten(), nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 3)]
    model = nn.Sequential(*layers).double().eval()
    chain, fx = from_module(model, (1, 9, 9)).graph.ops(), build_graph(model, (1, 9, 9)).ops()
    assert [(type(o), o.terms, o.mixes, o.nonlinear) for o in chain] == \
        [(type(o), o.terms, o.mixes, o.nonlinear) for o in fx]
    layers.insert(1, _bn().double())  # folded into the conv on the chain, its own op on fx
    model = nn.Sequential(*layers).double().eval()
    x = torch.rand(2, 1, 9, 9, dtype=torch.float64)
    threat = LpBall("linf", 0.05, lo=0.0, hi=1.0)
    c = torch.randn(2, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        chained = crown_lower(from_module(model, (1, 9, 9)), x, threat, c, rounding=True)
        graphed = graph_crown_lower(build_graph(model, (1, 9, 9)), x, threat, c, rounding=True)
    torch.testing.assert_close(chained, graphed, rtol=0, atol=1e-9)
