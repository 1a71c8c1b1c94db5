"""Lipschitz certificates: the constants bound real slopes, bounds are sound, local <= global."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall, Norm, lp_norm
from advrobust.models.normalize import Normalize
from advrobust.network import _opnorm as network_opnorm
from advrobust.network.ir import from_module
from advrobust.relax import GlobalLipschitz, LocalLipschitz
from advrobust.relax._opnorm import _conv_l2, op_norm, power_iteration

NORMS = ("linf", "l2", "l1")


def _conv_net(seed: int) -> nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(Normalize((0.5,), (0.3,)), nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 3 * 3, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        net[4].running_mean.copy_(torch.randn(4, generator=gen) * 0.1)
        net[4].running_var.copy_(torch.rand(4, generator=gen) + 0.5)
    return net.eval()


def _nets(mlp_factory):  # type: ignore[no-untyped-def]
    return [(mlp_factory(s, (6, 12, 12, 3)), (6,)) for s in range(3)] + \
        [(_conv_net(s), (1, 5, 5)) for s in range(2)]


def _spec_rows(model: nn.Module, x: torch.Tensor) -> tuple[Spec, torch.Tensor]:
    with torch.no_grad():
        y = model(x).argmax(1)
    return Spec.margins(y, 3), y


def _grad_dual_norms(model: nn.Module, x: torch.Tensor, spec: Spec, norm: Norm
                     ) -> torch.Tensor:
    """(N, K) dual norms of the input gradients of every spec row (autograd)."""
    x = x.clone().requires_grad_(True)
    rows = spec.apply(model(x))
    out = []
    for k in range(rows.shape[1]):
        (g,) = torch.autograd.grad(rows[:, k].sum(), x, retain_graph=True)
        out.append(lp_norm(g, norm.dual))
    return torch.stack(out, 1)


@pytest.mark.parametrize("norm", NORMS)
def test_global_constant_bounds_gradients_and_slopes(mlp_factory, norm: str) -> None:
    gen = torch.Generator().manual_seed(1)
    for model, shape in _nets(mlp_factory):
        x = torch.rand((64,) + shape, generator=gen)
        spec, y = _spec_rows(model, x)
        net = from_module(model, shape)
        consts = GlobalLipschitz().constants(net, spec, Norm.parse(norm)).float()
        grads = _grad_dual_norms(model, x, spec, Norm.parse(norm))
        assert bool((grads <= consts * (1 + 1e-5) + 1e-6).all())
        x2 = x + 0.05 * torch.randn(x.shape, generator=gen)
        with torch.no_grad():
            diff = (spec.apply(model(x2)) - spec.apply(model(x))).abs()
        slopes = diff / lp_norm(x2 - x, Norm.parse(norm)).unsqueeze(1)
        assert bool((slopes <= consts * (1 + 1e-4) + 1e-5).all())
        # the bound is not vacuous: the largest measured gradient is within a factor of it
        assert float(grads.max()) > 1e-3 * float(consts.max())


def test_operator_norms_are_upper_bounds() -> None:
    gen = torch.Generator().manual_seed(0)
    for conv in (nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(3, 4, 3, stride=2, padding=1),
                 nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2), nn.Linear(7, 5),
                 nn.Conv2d(2, 3, 4, stride=(2, 3), padding=1), nn.Conv2d(3, 3, 5, stride=2)):
        with torch.no_grad():
            for p in conv.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        shape = (7,) if isinstance(conv, nn.Linear) else (conv.in_channels, 6, 6)
        op = from_module(nn.Sequential(conv, nn.Flatten()), shape).ops[0]
        w = op.linear_map()[0].detach().double()
        exact = {Norm.L2: torch.linalg.matrix_norm(w, 2), Norm.LINF: w.abs().sum(1).max(),
                 Norm.L1: w.abs().sum(0).max()}
        for norm, value in exact.items():
            bound = op_norm(op, norm)
            assert bound >= float(value) * (1 - 1e-12)
        assert power_iteration(op, 50, gen) <= op_norm(op, Norm.L2) * (1 + 1e-5)
        assert op_norm(op, Norm.L2) <= 1.5 * float(exact[Norm.L2])  # tight enough to use


def _exact_l2(op) -> float:  # type: ignore[no-untyped-def]
    return float(torch.linalg.matrix_norm(op.linear_map()[0].detach().double(), 2))


@pytest.mark.parametrize("pool", [nn.AvgPool2d(2), nn.AvgPool2d(3, stride=2, padding=1)])
def test_strided_pooling_frequency_bound_is_tight(pool: nn.AvgPool2d) -> None:
    op = from_module(nn.Sequential(pool, nn.Flatten()), (2, 8, 8)).ops[0]
    exact, bound = _exact_l2(op), _conv_l2(op)
    assert exact * (1 - 1e-12) <= bound <= 1.25 * exact
    if pool.kernel_size == 2:  # disjoint 2x2 means: the norm is exactly 1/2
        assert bound == pytest.approx(0.5, rel=1e-9)


def test_strided_conv_frequency_bound_is_sound_and_close() -> None:
    gen = torch.Generator().manual_seed(2)
    for conv, shape in ((nn.Conv2d(3, 4, 3, stride=2, padding=1), (3, 14, 14)),
                        (nn.Conv2d(2, 3, 4, stride=(2, 3), padding=1), (2, 9, 12)),
                        (nn.Conv2d(3, 3, 5, stride=2), (3, 11, 11))):
        with torch.no_grad():
            for p in conv.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        op = from_module(nn.Sequential(conv, nn.Flatten()), shape).ops[0]
        exact, bound = _exact_l2(op), _conv_l2(op)
        assert exact * (1 - 1e-12) <= bound <= 1.5 * exact
        unstrided = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                              padding=conv.padding)
        unstrided.load_state_dict(conv.state_dict())
        full = _conv_l2(from_module(nn.Sequential(unstrided, nn.Flatten()), shape).ops[0])
        assert bound <= full * (1 + 1e-9)  # keeping fewer outputs never raises the bound


def test_small_convs_get_the_dense_norm_large_ones_the_frequency_bound(monkeypatch) -> None:
    conv = nn.Conv2d(4, 6, 5)
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    op = from_module(nn.Sequential(conv, nn.Flatten()), (4, 12, 12)).ops[0]
    exact, freq = _exact_l2(op), _conv_l2(op)
    assert freq > exact * 1.01  # the circular map is looser on a small image
    assert exact * (1 - 1e-12) <= op_norm(op, Norm.L2) <= exact * (1 + 1e-6)
    monkeypatch.setattr(network_opnorm, "DENSE_LIMIT", 0)  # the op's own norm reads it
    assert op_norm(op, Norm.L2) == pytest.approx(freq, rel=1e-8)


@pytest.mark.parametrize("norm", NORMS)
def test_bounds_sound_and_local_tighter(mlp_factory, norm: str) -> None:
    gen = torch.Generator().manual_seed(2)
    for model, shape in _nets(mlp_factory):
        x = torch.rand((6,) + shape, generator=gen) * 0.8 + 0.1
        spec, y = _spec_rows(model, x)
        threat = LpBall(norm, 0.05)
        glob = GlobalLipschitz()(model, x, y, threat)
        loc = LocalLipschitz()(model, x, y, threat)
        assert bool((loc.lower >= glob.lower - 1e-9).all())
        samples = threat.sample(x.repeat_interleave(50, 0), generator=gen)
        spec_rep = Spec(spec.C.repeat_interleave(50, 0), spec.d.repeat_interleave(50, 0))
        with torch.no_grad():
            values = spec_rep.apply(model(samples)).reshape(6, 50, -1).amin(1)
        assert bool((loc.lower <= values.double() + 1e-5).all())
        # the local constant bounds the gradient at points of the ball
        net = from_module(model, shape)
        consts = LocalLipschitz().constants(net, x, threat, spec).float()
        grads = _grad_dual_norms(model, samples, spec_rep, Norm.parse(norm)).reshape(6, 50, -1)
        assert bool((grads <= consts.unsqueeze(1) * (1 + 1e-5) + 1e-6).all())


def test_local_lipschitz_bad_config() -> None:
    with pytest.raises(ValueError, match="intermediate"):
        LocalLipschitz(intermediate="lp")


def test_model_untouched(mlp_factory) -> None:
    model = mlp_factory(3, (4, 6, 3)).train()
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.rand(2, 4, generator=torch.Generator().manual_seed(0))
    for bounder in (GlobalLipschitz(), LocalLipschitz()):
        with pytest.warns(UserWarning, match="training mode"):
            bounder(model, x, torch.tensor([0, 1]), LpBall("l2", 0.1))
    assert model.training
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_spec_values_are_a_rounding_safe_lower_bound_of_the_margin() -> None:
    # The Lipschitz bounds start from m(x): it must be a lower bound of the exact margin (here
    # the float64 forward with weights scaled to 1e8, where rounding is far above 1e-16) yet
    # tight on an ordinary network.
    from advrobust.network.ir import from_module
    from advrobust.relax.lipschitz import _float64, spec_values

    gen = torch.Generator().manual_seed(0)
    for scale in (1.0, 1e8):
        model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(),
                                    torch.nn.Linear(16, 4)).double()
        with torch.no_grad():
            model[0].weight.mul_(scale)
        x = torch.rand(5, 6, generator=gen, dtype=torch.float64)
        y = model(x).argmax(1)
        spec = Spec.margins(y, 4)
        net = _float64(from_module(model, (6,)))
        exact = spec.apply(model(x)).detach()
        values = spec_values(net, x, spec)
        slack = exact - values
        assert bool((slack >= 0).all())
        if scale > 1:  # the allowance is really subtracted where rounding can matter
            assert bool((slack > 0).all())
        assert float(slack.max()) <= 1e-10 * (1 + float(exact.abs().max())) * scale
