"""The network IR: conversion, forward equivalence, adjoint identities, unsupported layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advrobust.errors import InvalidInputError, UnsupportedLayerError
from advrobust.models.normalize import Normalize
from advrobust.network import AffineOp, ConvOp, LinearOp, ReLUOp, from_module


def _randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=gen) * 2 - 1)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(c, generator=gen) - 0.5)


def conv_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(
        Normalize([0.5, 0.4], [0.2, 0.3]),
        nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Sequential(nn.AvgPool2d(2), nn.BatchNorm2d(4), nn.Conv2d(4, 3, 2, groups=1)),
        nn.ReLU(), nn.Flatten(), nn.Dropout(0.3), nn.Identity(),
        nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    _randomize_bn(model, torch.Generator().manual_seed(seed))
    return model.eval()


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000))
def test_forward_matches_module_with_folded_batchnorm(seed: int) -> None:
    model = conv_model(seed)
    net = from_module(model, (2, 9, 9))
    x = torch.rand(4, 2, 9, 9, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(net.forward(x), model(x), atol=1e-5, rtol=1e-5)


def test_batchnorm_after_affine_is_folded_and_others_stay() -> None:
    net = from_module(conv_model(), (2, 9, 9))
    kinds = [type(op).__name__ for op in net.ops]
    assert kinds == ["ChannelAffineOp", "ConvOp", "ReLUOp", "AvgPoolOp", "ChannelAffineOp",
                     "ConvOp", "ReLUOp", "FlattenOp", "LinearOp", "ReLUOp", "LinearOp"]
    assert isinstance(net.ops[1], ConvOp) and net.ops[1].bn is not None
    assert isinstance(net.ops[8], LinearOp) and net.ops[8].bn is not None


def test_ops_reference_live_parameters() -> None:
    model = conv_model()
    net = from_module(model, (2, 9, 9))
    x = torch.rand(3, 2, 9, 9)
    with torch.no_grad():
        model[1].weight.mul_(2.0)
        model[10].running_var.mul_(3.0)
    torch.testing.assert_close(net.forward(x), model(x), atol=1e-5, rtol=1e-5)


def test_adjoint_identity_and_dense_map_of_every_affine_op() -> None:
    model = conv_model()
    net = from_module(model, (2, 9, 9))
    z = torch.rand(5, 2, 9, 9, dtype=torch.float64)
    model.double()
    for op in net.ops:
        out = op.forward(z)
        if isinstance(op, AffineOp):
            a = torch.randn((5, 3) + op.out_shape, dtype=torch.float64)
            lhs = (a * out.unsqueeze(1)).flatten(2).sum(-1)
            rhs = (op.backward(a) * z.unsqueeze(1)).flatten(2).sum(-1) + op.bias_term(a)
            torch.testing.assert_close(lhs, rhs)
            w, b = op.linear_map()
            torch.testing.assert_close(z.flatten(1) @ w.T.to(z) + b.to(z), out.flatten(1))
            lo, hi = op.interval(z - 0.1, z + 0.1)
            assert bool((lo <= out + 1e-9).all() and (out <= hi + 1e-9).all())
        z = out


@settings(max_examples=30, deadline=None)
@given(lo=st.floats(-5, 5), width=st.floats(0.0, 5), t=st.floats(0, 1),
       alpha=st.floats(0, 1))
def test_relu_relaxation_encloses_relu(lo: float, width: float, t: float, alpha: float) -> None:
    lo_t = torch.tensor([lo], dtype=torch.float64)
    hi_t = lo_t + width
    z = lo_t + t * width
    for a in (None, torch.tensor([alpha], dtype=torch.float64)):
        rel = ReLUOp.relaxation(lo_t, hi_t, a)
        assert float(rel.low * z) <= float(z.clamp_min(0)) + 1e-12
        assert float(z.clamp_min(0)) <= float(rel.up * z + rel.up_b) + 1e-9


@pytest.mark.parametrize("layer,position", [
    (nn.Tanh(), "1.1"), (nn.MaxPool2d(2), "1.1"), (nn.Conv2d(1, 1, 3, padding_mode="circular"),
                                                    "1.1")])
def test_unsupported_layer_names_type_and_position(layer: nn.Module, position: str) -> None:
    model = nn.Sequential(nn.Identity(), nn.Sequential(nn.Identity(), layer), nn.Flatten())
    with pytest.raises(UnsupportedLayerError, match=f"{type(layer).__name__}.*'{position}'"):
        from_module(model, (1, 6, 6))


def test_chain_and_graph_conversions_share_one_table() -> None:
    """A layer's conversion and checks live once, in the op registry: the chain converter
    refuses a circular-padding convolution for the reason the torch.fx route gives, and a
    registered op without a chain form (Tanh) is refused by the chain and taken by the graph."""
    from advrobust.network import build_graph

    conv = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular"), nn.Flatten())
    reasons = []
    for convert in (from_module, build_graph):
        with pytest.raises(UnsupportedLayerError) as err:
            convert(conv, (1, 4, 4))
        reasons.append(str(err.value))
    assert all("only integer zero padding" in r for r in reasons)
    assert "'0'" in reasons[0]  # the chain names the layer's position
    tanh = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2))
    with pytest.raises(UnsupportedLayerError, match="Tanh.*'1'.*graph IR"):
        from_module(tanh, (3,))
    x = torch.rand(4, 3)
    torch.testing.assert_close(build_graph(tanh, (3,)).forward(x), tanh(x))


class _KeptLinear(nn.Linear):
    """A subclass that keeps nn.Linear's forward."""


class _OwnLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def test_subclasses_that_keep_their_base_forward_convert_as_the_base() -> None:
    """A layer class that keeps its registered base class's forward (a plain subclass, torch's
    parametrized ``spectral_norm(nn.Linear)``) converts as that base, in the chain and in the
    graph route; one with a forward of its own is not taken for its base (the graph route
    traces it)."""
    from torch.nn.utils import parametrizations

    from advrobust.network import build_graph
    from advrobust.network.graph.base import module_factory

    torch.manual_seed(0)
    model = nn.Sequential(_KeptLinear(4, 5), nn.ReLU(),
                          parametrizations.spectral_norm(nn.Linear(5, 3))).eval()
    x = torch.rand(6, 4)
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(from_module(model, (4,)).forward(x), want)
        torch.testing.assert_close(build_graph(model, (4,)).forward(x), want)
    assert module_factory(_KeptLinear(2, 2)) is module_factory(nn.Linear(2, 2))
    assert module_factory(_OwnLinear(2, 2)) is None
    own = nn.Sequential(_OwnLinear(4, 3))
    with pytest.raises(UnsupportedLayerError, match="_OwnLinear.*'0'"):
        from_module(own, (4,))


def test_conversion_leaves_a_training_batchnorm_as_it_was() -> None:
    """The shape probe runs a training-mode batch-norm in eval mode: its statistics and mode
    stay (a probe in training mode would update the running mean)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.BatchNorm1d(3),
                          nn.Linear(3, 2))
    model.train()
    bn = model[3]
    bn.running_mean.fill_(0.25)
    before = bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked)
    network = from_module(model, (1, 2, 2))
    assert bn.training and model.training
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert int(bn.num_batches_tracked) == before[2]
    model.eval()
    x = torch.rand(5, 1, 2, 2)
    torch.testing.assert_close(network.forward(x), model(x))


def test_shape_mismatch_and_unflattened_output_raise() -> None:
    with pytest.raises(InvalidInputError, match="Linear"):
        from_module(nn.Sequential(nn.Flatten(), nn.Linear(5, 2)), (1, 2, 2))
    with pytest.raises(InvalidInputError, match="flat outputs"):
        from_module(nn.Sequential(nn.Conv2d(1, 1, 1)), (1, 2, 2))


def test_relu_encoding_lp_and_milp_differ_only_in_integrality() -> None:
    from advrobust.solvers import Program

    op = ReLUOp((3,), "relu")
    lo, hi = np.array([-1.0, 0.5, -2.0]), np.array([2.0, 1.0, -0.5])
    programs = []
    for integer in (False, True):
        prog = Program()
        z = prog.add_vars(lo, hi)
        out = op.encode(prog, z, lo, hi, integer)
        programs.append(prog)
        assert out[1] == z[1]  # active: the output is the input
    a0, a1 = programs[0].matrix()[0], programs[1].matrix()[0]
    assert (a0 != a1).nnz == 0
    assert programs[1].is_mip and not programs[0].is_mip


@pytest.mark.parametrize("batch_a,with_alpha", [(4, False), (1, False), (4, True)])
def test_relu_backward_is_the_relaxation_applied_by_sign(batch_a: int, with_alpha: bool) -> None:
    gen = torch.Generator().manual_seed(batch_a + 10 * with_alpha)
    lo = torch.randn(4, 2, 3, generator=gen, dtype=torch.float64)
    hi = lo + torch.rand(4, 2, 3, generator=gen, dtype=torch.float64) * 3
    a = torch.randn(batch_a, 5, 2, 3, generator=gen, dtype=torch.float64)
    alpha = torch.rand(4, 5, 2, 3, generator=gen, dtype=torch.float64) if with_alpha else None
    out, const = ReLUOp((2, 3), "relu").backward(a, lo, hi, alpha)
    rel = ReLUOp.relaxation(lo.unsqueeze(1), hi.unsqueeze(1), alpha)
    pos, neg = a.clamp(min=0), a.clamp(max=0)
    torch.testing.assert_close(out, pos * rel.low + neg * rel.up)
    torch.testing.assert_close(const, (neg * rel.up_b).flatten(2).sum(-1))
    # and it is a valid lower bound of <a, relu(z)> at points z of the box
    z = lo + torch.rand(lo.shape, generator=gen, dtype=torch.float64) * (hi - lo)
    lhs = (a * z.clamp_min(0).unsqueeze(1)).flatten(2).sum(-1)
    rhs = (out * z.unsqueeze(1)).flatten(2).sum(-1) + const
    assert bool((lhs >= rhs - 1e-9).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("kernel", "side"), [(2, 8), (2, 9), (3, 7), ((2, 3), 8)])
def test_avgpool_tiling_backward_is_the_transposed_convolution(
        dtype: torch.dtype, kernel: int | tuple[int, int], side: int) -> None:
    from advrobust.network import AvgPoolOp
    from advrobust.network.ops import _ConvLike

    pool = nn.AvgPool2d(kernel)
    shape = (3, side, side + 1)
    op = AvgPoolOp(pool, shape, tuple(pool(torch.zeros((1,) + shape)).shape[1:]), "pool")
    assert op.tiles()
    a = torch.randn((2, 4) + op.out_shape, dtype=dtype,
                    generator=torch.Generator().manual_seed(side))
    # the fast path (upsampling) and the generic transposed convolution: the same values,
    # bit for bit (one product per input value), zeros on the rows the forward map drops
    assert torch.equal(op.backward(a), _ConvLike.backward(op, a))
    overlapping = nn.AvgPool2d(3, stride=2, padding=1)
    op2 = AvgPoolOp(overlapping, shape,
                    tuple(overlapping(torch.zeros((1,) + shape)).shape[1:]), "pool")
    assert not op2.tiles()
    b = torch.randn((2, 4) + op2.out_shape, dtype=dtype)
    assert torch.equal(op2.backward(b), _ConvLike.backward(op2, b))
