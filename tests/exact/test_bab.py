"""Branch and bound on ReLU splits: sound against the MILP, complete where CROWN is not."""

from __future__ import annotations

import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.exact.conftest import make_mlp

from advrobust.core import VERIFY_TOLERANCE, LpBall, Spec, Verdict
from advrobust.errors import InvalidParameterError, InvalidThreatModelError
from advrobust.exact import MILP, BaB
from advrobust.relax import CROWN


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 100_000), eps=st.floats(0.02, 0.12))
def test_bab_is_sound_and_agrees_with_the_exact_milp(seed: int, eps: float) -> None:
    model = make_mlp(seed, (8, 12, 12, 3))
    x = torch.rand(3, 8, generator=torch.Generator().manual_seed(seed))
    y = model(x).argmax(1)
    threat = LpBall("linf", eps)
    exact = MILP(early_stop=False, skip_verified=False)(model, x, y, threat)
    bab = BaB(early_stop=False, time_limit=20, batch_size=16)(model, x, y, threat)
    # sound: never above the exact minimum; upper bounds are real points of the set
    assert bool((bab.lower <= exact.lower + 1e-4).all())
    assert bool((bab.upper >= exact.lower - 1e-4).all())
    for i, v in enumerate(bab.verdict):
        m = float(exact.lower[i].min())
        if m > 1e-3:
            assert v is Verdict.VERIFIED
        elif m < -1e-3:
            assert v is Verdict.FALSIFIED
        if v is Verdict.VERIFIED:
            assert m > VERIFY_TOLERANCE


def test_bab_proves_what_crown_cannot_with_a_valid_certificate() -> None:
    model = make_mlp(3, (10, 16, 16, 4))
    x = torch.rand(12, 10, generator=torch.Generator().manual_seed(3))
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.06)
    crown = CROWN()(model, x, y, threat)
    bab = BaB(time_limit=20, batch_size=32)(model, x, y, threat)
    exact = MILP(early_stop=False, skip_verified=False)(model, x, y, threat)
    gained = [i for i in range(12) if crown.verdict[i] is Verdict.UNKNOWN
              and bab.verdict[i] is Verdict.VERIFIED]
    assert gained, "BaB should close some sample CROWN leaves open"
    assert bool((bab.lower >= crown.lower - 1e-6).all())
    for i in gained:
        assert bool((bab.lower[i] > VERIFY_TOLERANCE).all())
        assert bool((exact.lower[i] >= bab.lower[i] - 1e-4).all())
    assert any(r["domains"] > 1 for s in bab.stats["samples"] for r in s)


def test_counterexamples_are_points_of_the_set_checked_by_the_model() -> None:
    model = make_mlp(5, (6, 16, 16, 3))
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(5))
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.3)
    start = time.perf_counter()
    res = BaB(time_limit=2)(model, x, y, threat)
    assert time.perf_counter() - start < 4 * 2 + 5  # the limit holds per sample
    assert Verdict.FALSIFIED in res.verdict
    for i, v in enumerate(res.verdict):
        if v is Verdict.FALSIFIED:
            w = res.witness[i:i + 1]
            assert bool(threat.contains(x[i:i + 1], w).all())
            with torch.no_grad():
                assert float(Spec.margins(y[i:i + 1], 3).apply(model(w)).min()) < 0


def test_time_limit_gives_a_bracket_without_hanging() -> None:
    model = make_mlp(3, (20, 100, 100, 100, 10))
    x = torch.rand(1, 20, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)
    start = time.perf_counter()
    res = BaB(time_limit=1.0, early_stop=False)(model, x, y, LpBall("linf", 0.3))
    assert time.perf_counter() - start < 20
    statuses = {r["status"] for r in res.stats["samples"][0]}
    assert statuses & {"time_limit", "skipped (time limit)"}
    assert bool((res.lower <= res.upper + 1e-5).all())
    assert res.verdict[0] in (Verdict.UNKNOWN, Verdict.FALSIFIED)


def test_bad_threats_and_parameters_raise() -> None:
    model = make_mlp(1, (4, 6, 3))
    x, y = torch.rand(2, 4), torch.tensor([0, 1])
    for norm in ("l1", "l2"):
        with pytest.raises(InvalidThreatModelError, match=f"'linf' only. Got '{norm}'"):
            BaB()(model, x, y, LpBall(norm, 0.1))
    with pytest.raises(InvalidParameterError, match="'batch_size' parameter of BaB"):
        BaB(batch_size=0)
    with pytest.raises(InvalidParameterError, match="'time_limit' parameter of BaB"):
        BaB(time_limit=-1.0)


def test_batch_is_sized_to_the_time_left() -> None:
    # On large networks one batched step of batch_size domains can outlast the time limit:
    # the search splits only as many parents as the measured cost per domain affords.
    import time
    from types import SimpleNamespace

    from advrobust.exact.bab import _RowSearch

    stub = SimpleNamespace(batch_size=256, seconds_per_domain=0.0)
    now = time.perf_counter()
    assert _RowSearch._affordable(stub, now + 100) == 256  # nothing measured yet
    stub.seconds_per_domain = 0.5  # two children per parent: 1 s per parent
    assert 8 <= _RowSearch._affordable(stub, now + 10) <= 10
    assert _RowSearch._affordable(stub, now + 0.4) == 0  # not even one split fits
    assert _RowSearch._affordable(stub, now - 1) == 0
