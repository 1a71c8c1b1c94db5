"""On the `small` MNIST network: certification at a small eps, feasible targeted attacks at 0.1."""

from __future__ import annotations

from pathlib import Path

import torch

from advrobust.attacks import PGD
from advrobust.core import LpBall, Spec, Verdict
from advrobust.exact import MILP
from advrobust.relax import CROWN


def _trained_small(root: Path) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    from advrobust.data import load_dataset
    from advrobust.models import build_model

    train = load_dataset("mnist", "test", root=root)  # the test split loads without warnings
    x, y = train.x[:3000], train.y[:3000]
    model = build_model("small", (1, 28, 28), seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        perm = torch.randperm(2000, generator=gen)
        for idx in perm.split(100):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), x[2000:2010], y[2000:2010]


def test_small_mnist_certified_at_small_eps_and_attackable_at_0_1(
        shared_data: Path) -> None:
    model, x, y = _trained_small(shared_data)
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    x, y = x[keep][:3], y[keep][:3]
    assert len(y) > 0

    small = LpBall("linf", 0.001)
    assert all(v is Verdict.VERIFIED for v in CROWN()(model, x, y, small).verdict)
    exact = MILP(time_limit=10, skip_verified=False)(model, x[:1], y[:1], small)
    assert exact.verdict == (Verdict.VERIFIED,)

    big = LpBall("linf", 0.1)
    targets = torch.tensor([t for t in range(10) if t != int(y[0])])
    xs, ys = x[:1].repeat(9, 1, 1, 1), y[:1].repeat(9)
    pgd = PGD(steps=30)(model, xs, ys, big, target=targets, generator=torch.Generator())
    assert bool(pgd.success.any())
    t = int(targets[pgd.success][0])
    spec = Spec.targeted(y[:1], torch.tensor([t]), 10)
    res = MILP(time_limit=3)(model, x[:1], y[:1], big, spec=spec)
    assert res.verdict[0] is not Verdict.VERIFIED
    pgd_value = spec.apply(model(pgd.x_adv[pgd.success][:1])).detach()
    assert float(res.lower[0, 0]) <= float(pgd_value[0, 0]) + 1e-5
