"""verify_dataset on graph (non-chain) networks: the auto cascade runs CROWN, the attack, then
the MILP over the graph (BaB splits chains only): exact on ReLU residual / concat / subtraction
networks, a sound relaxation (UNKNOWN where it does not prove) on sigmoid / tanh ones."""

from __future__ import annotations

import warnings

import torch
from tests.relax.dag_nets import RandomDag
from torch import nn

from advrobust.attacks import PGD
from advrobust.core import LpBall
from advrobust.core.result import Verdict
from advrobust.core.spec import margin
from advrobust.evaluation.verify import verify_dataset


def _lowest_margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: LpBall,
                   gen: torch.Generator) -> torch.Tensor:
    """(N,) brute force: the lowest margin over box corners, random points and PGD."""
    n, d = x.shape
    best = torch.full((n,), torch.inf)
    with torch.no_grad():
        for _ in range(8):
            u = torch.rand(n, 512, d, generator=gen)
            u[:, :256] = u[:, :256].round()  # corners first: ReLU nets peak there often
            pts = threat.project(x.unsqueeze(1).expand(-1, 512, -1).reshape(-1, d),
                                 (x.unsqueeze(1) + threat.eps * (2 * u - 1)).reshape(-1, d))
            m = margin(model(pts), y.repeat_interleave(512)).reshape(n, 512)
            best = torch.minimum(best, m.amin(1))
    adv = PGD(steps=60, restarts=4, loss="margin")(model, x, y, threat, generator=gen).x_adv
    with torch.no_grad():
        return torch.minimum(best, margin(model(adv), y))


def test_auto_cascade_finishes_a_residual_relu_network_with_bab() -> None:
    model = RandomDag(0, width=6, blocks=3, acts=(nn.ReLU,)).eval()  # sub, add, sub blocks
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(10, 5, generator=gen)
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.1, lo=0.0, hi=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "stops after the attack", no relaxed op
        report = verify_dataset(model, x, y, threat, method="auto", time_limit=20,
                                progress=False)
    # BaB splits the ReLUs of the residual graph (the MILP ran here before graphbab)
    assert "bab" in report.stage_seconds and "milp" not in report.stage_seconds
    # complete on this net: every sample decided, BaB deciding what CROWN and PGD left
    assert report.unknown == 0
    assert "bab" in report.decided_by
    lowest = _lowest_margin(model, x, y, threat, gen)
    for i, v in enumerate(report.verdict):
        if v is Verdict.VERIFIED:  # never refuted by brute force or a stronger attack
            assert float(lowest[i]) >= 0
        else:  # a real counterexample of the set, re-checked in the model's precision
            w = report.witness[i:i + 1]
            assert bool(threat.contains(x[i:i + 1], w).all())
            with torch.no_grad():
                assert float(margin(model(w), y[i:i + 1])) < 0
    decided_by_bab = [i for i, d in enumerate(report.decided_by) if d == "bab"]
    # what BaB proved, CROWN alone did not; the MILP agrees
    crown = verify_dataset(model, x, y, threat, method="crown")
    assert any(crown.verdict[i] is Verdict.UNKNOWN for i in decided_by_bab)
    milp = verify_dataset(model, x, y, threat, method="milp", time_limit=20, progress=False)
    assert milp.verdict == report.verdict


def test_auto_cascade_on_a_sigmoid_graph_proves_soundly_and_says_not_exact() -> None:
    model = RandomDag(2, width=6, blocks=2, acts=(nn.Sigmoid, nn.Tanh, nn.ReLU)).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(10, 5, generator=gen)
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.4, lo=0.0, hi=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the MILP's "LP relaxation" warning
        report = verify_dataset(model, x, y, threat, method="auto", time_limit=10,
                                progress=False)
    assert report.stats["exact"] == {"milp": False}
    # the relaxed MILP still proves what CROWN could not (soundly: checked below)
    assert "milp" in report.decided_by
    lowest = _lowest_margin(model, x, y, threat, gen)
    for i, v in enumerate(report.verdict):
        if v is Verdict.VERIFIED:
            assert float(lowest[i]) >= 0
        elif v is Verdict.FALSIFIED:
            with torch.no_grad():
                assert float(margin(model(report.witness[i:i + 1]), y[i:i + 1])) < 0


def test_wrong_labels_are_refuted_on_a_graph_and_tiny_balls_proved() -> None:
    model = RandomDag(3, width=6, blocks=3).eval()
    x = torch.rand(6, 5, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        report = verify_dataset(model, x, y, LpBall("linf", 0.3, lo=0.0, hi=1.0),
                                method="auto", time_limit=1, progress=False)
    assert any(v is Verdict.FALSIFIED for v in report.verdict)  # wrong labels on purpose
    small = verify_dataset(model, x, model(x).argmax(1), LpBall("linf", 1e-4, lo=0.0, hi=1.0),
                           method="crown")
    assert all(v is Verdict.VERIFIED for v in small.verdict)
