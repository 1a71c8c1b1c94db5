"""The sandwich on tiny random ReLU nets: every bound sits where the theory puts it.

sampled margins >= PGD margin >= MILP value = exact >= LP lower >= CROWN lower, and
MILP >= IBP lower, with LP and CROWN on the same intermediate bounds; for linf also
MILP >= BaB lower >= CROWN lower.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.exact.conftest import make_mlp

from advrobust.attacks import PGD
from advrobust.core import LpBall, Spec
from advrobust.exact import MILP, BaB
from advrobust.relax import CROWN, IBP, LPRelaxation

TOL = 1e-5


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 100_000), eps=st.floats(0.01, 0.25),
       norm=st.sampled_from(["linf", "l1"]))
def test_sandwich(seed: int, eps: float, norm: str) -> None:
    model = make_mlp(seed, (4, 8, 8, 3))
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 4, generator=gen)
    y = model(x).argmax(1)
    threat = LpBall(norm, eps if norm == "linf" else 4 * eps)
    spec = Spec.margins(y, 3)

    exact = MILP(early_stop=False, skip_verified=False, time_limit=30)(model, x, y, threat)
    lp = LPRelaxation()(model, x, y, threat)
    crown = CROWN()(model, x, y, threat)
    ibp = IBP()(model, x, y, threat)
    pts = threat.sample(x.repeat(64, 1), generator=gen)
    sampled = torch.stack([spec.apply(model(p)) for p in pts.split(3)]).amin(0)
    pgd = PGD(steps=20)(model, x, y, threat, generator=gen)

    statuses = {r["status"] for s in exact.stats["samples"] for r in s}
    assert statuses == {"optimal"}
    torch.testing.assert_close(exact.lower, exact.upper, atol=1e-4, rtol=1e-4)
    assert bool((sampled >= exact.lower - TOL).all())
    assert bool((pgd.margin >= exact.margin_lower - TOL).all())
    assert bool((exact.lower >= lp.stats["lp"].to(exact.lower) - TOL).all())
    assert bool((lp.stats["lp"].to(exact.lower) >= crown.lower - TOL).all())
    assert bool((exact.lower >= ibp.lower - TOL).all())
    assert bool((lp.upper >= exact.lower - TOL).all())
    if norm == "linf":
        bab = BaB(early_stop=False, time_limit=10)(model, x, y, threat)
        assert bool((exact.lower >= bab.lower - TOL).all())
        assert bool((bab.lower >= crown.lower - TOL).all())
