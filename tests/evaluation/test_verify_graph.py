"""verify_dataset on graph (non-chain) networks: CROWN and the attack decide what they can, the
auto cascade skips the chain-only exact methods with a warning instead of failing."""

from __future__ import annotations

import pytest
import torch
from tests.relax.dag_nets import RandomDag

from advrobust.core import LpBall
from advrobust.core.result import Verdict
from advrobust.evaluation.verify import verify_dataset


def test_auto_cascade_on_a_residual_network_stops_before_the_exact_methods() -> None:
    model = RandomDag(3, width=20, blocks=3).eval()
    x = torch.rand(6, 5, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.warns(UserWarning, match="chain networks only"):
        report = verify_dataset(model, x, y, LpBall("linf", 0.3, lo=0.0, hi=1.0),
                                method="auto", time_limit=5)
    assert all(d in ("", "clean", "crown", "attack") for d in report.decided_by)
    broken = [v is Verdict.FALSIFIED for v in report.verdict]
    assert any(broken)  # wrong labels on purpose: some are refuted
    small = verify_dataset(model, x, model(x).argmax(1), LpBall("linf", 1e-4, lo=0.0, hi=1.0),
                           method="crown")
    assert all(v is Verdict.VERIFIED for v in small.verdict)
